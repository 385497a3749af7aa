"""SHA-256 checksums of a model folder's weight files, written by `save_pretrained` and checked by `from_pretrained`.

A bit flipped in `model.safetensors` (bad disk, bad copy, bad RAM on the way) still loads: safetensors checks the
header, not the tensor bytes, and the model then scores `nan` or nonsense. `model.safetensors.sha256` lists each
weight file's SHA-256 in `sha256sum` format (`sha256sum -c model.safetensors.sha256` checks it by hand). It is a file
beside the weights rather than safetensors metadata because `PreTrainedModel.save_pretrained` passes a fixed
`metadata={"format": "pt"}` to `safe_save_file` (transformers 5.24): adding to it would mean writing each file twice.
Folders without the checksum file (older saves, conversions) load unchecked.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

CHECKSUM_FILE = "model.safetensors.sha256"
_SAFETENSORS, _SAFETENSORS_INDEX = "model.safetensors", "model.safetensors.index.json"


def weight_files(folder: str | os.PathLike[str]) -> list[Path]:
    """The safetensors files of a `save_pretrained` folder: the shards of its index, else `model.safetensors`."""
    folder = Path(folder)
    index = folder / _SAFETENSORS_INDEX
    if index.is_file():
        return [folder / name for name in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    return [folder / _SAFETENSORS] if (folder / _SAFETENSORS).is_file() else []


def sha256_of(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def write_weight_checksums(folder: str | os.PathLike[str]) -> Path | None:
    """Write `model.safetensors.sha256` for the folder's weight files (just written: read back from the page cache)."""
    files = weight_files(folder)
    if not files:
        return None
    path = Path(folder) / CHECKSUM_FILE
    path.write_text("".join(f"{sha256_of(file)}  {file.name}\n" for file in files))
    return path


def verify_weight_checksums(folder: str | os.PathLike[str]) -> None:
    """Raise a `ValueError` naming the file when a weight file's SHA-256 differs from `model.safetensors.sha256`."""
    listing = Path(folder) / CHECKSUM_FILE
    if not listing.is_file():
        return
    for line in listing.read_text().splitlines():
        expected, _, name = line.partition("  ")
        file = Path(folder) / name
        if not file.is_file():
            continue  # from_pretrained says which weights are missing
        if sha256_of(file) != expected:
            raise ValueError(
                f"{file} is corrupted: its SHA-256 differs from the one saved with it in {listing} (a changed or "
                "damaged file: bad disk, interrupted copy). Copy the folder again or use another checkpoint; if you "
                f"replaced the weights on purpose, delete {listing.name}."
            )
