"""
Transformer parameter counts for each parameter-sharing scheme of the paper.

    avbert-params [--config CONFIG_OR_FOLDER]

Models are built on the meta device, so counting the full-size configurations takes well under a second.
"""

import argparse
import itertools
from dataclasses import dataclass

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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="config.json or a saved model folder (default: the released architecture)")
    args = parser.parse_args(argv)
    config = AVBertConfig.from_pretrained(args.config) if args.config else AVBertConfig()
    print(format_grid(sharing_grid(config)))


if __name__ == "__main__":
    main()
