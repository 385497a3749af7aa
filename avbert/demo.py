"""
The AVBERT demonstration job (`avbert-demo`, `python -m avbert.demo`). Needs no data and no internet.

1. Builds a small audio-visual AVBERT, saves it with `save_pretrained`, reloads it through
   `AutoModelForVideoClassification` and classifies a random clip sequence.
2. Prints the transformer parameter counts of the paper's sharing schemes for the full-size model.
3. When the original-code fixtures are present (`../shared/fixtures/original`, or `--fixtures DIR`), converts the
   original tiny Kinetics-Sounds checkpoint and reports how closely it reproduces the original's outputs.
"""

import argparse
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForVideoClassification

from .configuration_avbert import AVBertConfig
from .modeling_avbert import AVBertForVideoClassification
from .parameter_counts import format_grid, sharing_grid

DEFAULT_FIXTURES = Path("..") / "shared" / "fixtures" / "original"


def small_config() -> AVBertConfig:
    labels = ["drumming", "playing bagpipes", "dog barking", "chainsaw"]
    return AVBertConfig(
        visual_base_width=8,
        audio_base_width=8,
        hidden_size=64,
        num_attention_heads=4,
        intermediate_size=128,
        num_hidden_layers=2,
        orthogonal_size=16,
        num_clips=4,
        num_frames=8,
        id2label=dict(enumerate(labels)),
        label2id={label: index for index, label in enumerate(labels)},
    )


def save_reload_classify(output_dir: Path) -> None:
    torch.manual_seed(0)
    model = AVBertForVideoClassification(small_config()).eval()
    model.save_pretrained(output_dir)
    reloaded = AutoModelForVideoClassification.from_pretrained(output_dir).eval()
    pixel_values = torch.randn(1, 4, 3, 8, 64, 64)
    input_features = torch.randn(1, 4, 1, 80, 128)
    with torch.no_grad():
        before = model(pixel_values=pixel_values, input_features=input_features).logits
        after = reloaded(pixel_values=pixel_values, input_features=input_features)
    params = sum(p.numel() for p in reloaded.parameters())
    print(f"Saved and reloaded {type(reloaded).__name__} ({params:,} parameters, random weights)")
    print(f"  files: {sorted(p.name for p in output_dir.iterdir())}")
    print(f"  max |logits before - after reload| = {(before - after.logits).abs().max().item():.2g}")
    scores = after.logits.softmax(-1)[0]
    for index in scores.argsort(descending=True).tolist():
        print(f"  {reloaded.config.id2label[index]:>18s}: {scores[index]:.3f}")


def conversion_parity(fixtures: Path) -> None:
    from safetensors.torch import load_file

    from .convert_original_checkpoint import convert_checkpoint

    tiny_ks = fixtures / "tiny_ks"
    model = convert_checkpoint(
        tiny_ks / "finetuned_checkpoint.pyth", None, "kinetics-sounds", original_config_path=tiny_ks / "config.yaml"
    )
    inputs, expected = load_file(tiny_ks / "inputs.safetensors"), load_file(tiny_ks / "outputs.safetensors")
    with torch.no_grad():
        out = model(pixel_values=inputs["visual_seq"], input_features=inputs["audio_seq"])
    for name, actual in (("clip_logits", out.clip_logits), ("seq_logits", out.sequence_logits)):
        difference = (actual.flatten(0, 1) - expected[name]).abs().max().item()
        print(f"  converted original checkpoint, {name}: max |ours - original| = {difference:.2g}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", type=Path, help="where to save the demo model (default: a temporary folder)")
    parser.add_argument("--fixtures", type=Path, default=DEFAULT_FIXTURES, help="original-code parity fixtures")
    args = parser.parse_args(argv)

    print("== 1. Save, reload through the Auto classes, classify")
    if args.output_dir is None:
        with tempfile.TemporaryDirectory() as folder:
            save_reload_classify(Path(folder))
    else:
        args.output_dir.mkdir(parents=True, exist_ok=True)
        save_reload_classify(args.output_dir)

    print("\n== 2. Transformer parameters of the full-size model under each sharing scheme")
    print(format_grid(sharing_grid(AVBertConfig())))

    print("\n== 3. Conversion of an original checkpoint")
    if args.fixtures.is_dir():
        conversion_parity(args.fixtures)
    else:
        print(f"  skipped: no fixtures at {args.fixtures}")


if __name__ == "__main__":
    main()
