"""The README's usage snippet runs as written, on the folder its `avbert-convert` command writes."""

import os
import re
import shlex
from pathlib import Path

import pytest

from avbert.convert_original_checkpoint import main as convert_main

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("AVBERT_SHARED_DIR", REPO.parent / "shared"))
USE_SECTION = re.split(r"\n##+ ", (REPO / "README.md").read_text().split("\n## Use\n", 1)[1], maxsplit=1)[0]


@pytest.mark.skipif(not (SHARED / "fixtures" / "original").is_dir(), reason="parity fixtures not found")
def test_readme_usage_snippet_runs_as_written(tmp_path, monkeypatch, capsys):
    (command,) = re.findall(r"```bash\n(.*?)```", USE_SECTION, re.S)
    (snippet,) = re.findall(r"```python\n(.*?)```", USE_SECTION, re.S)
    arguments = shlex.split(command.replace("\\\n", " "))
    assert arguments[0] == "avbert-convert"
    # The README refers to the shared material as ../shared, relative to the repository.
    arguments = [argument.replace("../shared", str(SHARED)) for argument in arguments[1:]]
    monkeypatch.chdir(tmp_path)
    convert_main(arguments)
    capsys.readouterr()
    exec(compile(snippet, "README.md", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "torch.Size([1, 5])"  # the tiny fixture's 5 labels
    assert printed[-1].startswith("torch.Size([1, ")
