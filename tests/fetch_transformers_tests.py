"""Fetch transformers' own common test mixins (they ship in its sdist, not its wheel) for our adapter tests.

    python tests/fetch_transformers_tests.py DEST

downloads the sdist of the installed transformers version from the package registry with pip, and extracts its
top-level `tests/*.py` (ModelTesterMixin, ConfigTester, VideoProcessingTestMixin, ...) into `DEST/transformers_tests/`,
a package of that name, so their relative imports work. Nothing of it is committed; `make test` runs this once per
virtual environment. `tests/transformers_common.py` puts DEST on `sys.path`.
"""

import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import transformers


def fetch(destination: Path) -> Path:
    version = transformers.__version__
    package = destination / "transformers_tests"
    stamp = package / f".version-{version}"
    if stamp.exists():
        return package
    with tempfile.TemporaryDirectory() as download:
        pip = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:"]
        subprocess.run([*pip, "--dest", download, f"transformers=={version}"], check=True)
        (sdist,) = Path(download).glob("transformers-*.tar.gz")
        prefix = f"transformers-{version}/tests/"
        package.mkdir(parents=True, exist_ok=True)
        with tarfile.open(sdist) as archive:
            for member in archive.getmembers():
                name = member.name.removeprefix(prefix)
                # Only the top-level common files: the per-model tests are not needed and are not all shipped.
                if member.name.startswith(prefix) and member.isfile() and "/" not in name and name.endswith(".py"):
                    (package / name).write_bytes(archive.extractfile(member).read())
    (package / "__init__.py").touch()
    stamp.touch()
    return package


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} DEST")
    print(f"transformers common tests in {fetch(Path(sys.argv[1]))}")
