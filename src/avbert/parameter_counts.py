"""
Transformer parameter counts for each parameter-sharing scheme of the paper.

    avbert-params [--config CONFIG_OR_FOLDER]

Models are built on the meta device, so counting the full-size configurations takes well under a second.
"""

import argparse
import itertools
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from .configuration_avbert import AVBertConfig


@dataclass(frozen=True)
class SharingCount:
    sharing_across_layers: bool
    sharing_across_models: bool
    use_decomposition: bool
    transformer_parameters: int


def count_transformer_parameters(config: AVBertConfig) -> int:
    """Parameters of the transformer layers of one AVBERT backbone (embeddings, projections and CNNs excluded)."""
    from .modeling_avbert import AVBertModel  # seconds to import: not for `--help`

    with torch.device("meta"):
        model = AVBertModel(config)
    encoders = (model.transformer, model.visual_transformer, model.audio_transformer, model.multimodal_transformer)
    return sum(parameter.numel() for encoder in encoders if encoder is not None for parameter in encoder.parameters())


def sharing_grid(config: AVBertConfig) -> list[SharingCount]:
    """Counts for every combination of the three sharing switches, most shared first."""
    counts = []
    for layers, models, decomposition in itertools.product((True, False), repeat=3):
        variant = AVBertConfig(
            **{
                **config.to_diff_dict(),
                "sharing_across_layers": layers,
                "sharing_across_models": models,
                "use_decomposition": decomposition,
            }
        )
        counts.append(SharingCount(layers, models, decomposition, count_transformer_parameters(variant)))
    return counts


def format_grid(counts: list[SharingCount]) -> str:
    lines = [
        "| share across layers | share across models | low-rank decomposition | transformer parameters |",
        "|---|---|---|---:|",
    ]
    yes_no = {True: "yes", False: "no"}
    for count in counts:
        lines.append(
            f"| {yes_no[count.sharing_across_layers]} | {yes_no[count.sharing_across_models]} | "
            f"{yes_no[count.use_decomposition]} | {count.transformer_parameters:,} |"
        )
    return "\n".join(lines)


def load_config(path: str) -> AVBertConfig:
    """The AVBERT config of a ``config.json`` or a saved model folder; a ``ValueError`` saying what is wrong otherwise
    (not a Hub lookup of a local path, nor the default architecture's counts for a folder without a config)."""
    file = Path(path).expanduser()
    if file.is_dir():
        file = file / "config.json"
        if not file.is_file():
            raise ValueError(f"{path} has no config.json (give a save_pretrained model folder or a config.json)")
    elif not file.is_file():
        raise ValueError(f"{path}: no such file or folder")
    try:
        values = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{file}: not a readable JSON config ({error})") from error
    if not isinstance(values, dict) or values.get("model_type") != AVBertConfig.model_type:
        found = values.get("model_type") if isinstance(values, dict) else None
        raise ValueError(f"{file}: not an AVBERT config (model_type {found!r}, expected {AVBertConfig.model_type!r})")
    return AVBertConfig.from_dict(values)


def main(argv: list[str] | None = None) -> int:
    """`avbert-params`: 0 with the table; 2 with a one-line `avbert-params: error:` for a bad --config."""
    parser = argparse.ArgumentParser(
        prog="avbert-params", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", help="config.json or a saved model folder (default: the released architecture)")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config) if args.config else AVBertConfig()
    except ValueError as error:
        parser.error(f"--config {error}")
    print(format_grid(sharing_grid(config)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
