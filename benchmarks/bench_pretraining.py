"""Self-supervised AVBERT pretraining on the demo's synthetic audio-visual data, then a linear probe on its features.

Examples:
    .venv/bin/python benchmarks/bench_pretraining.py                       # the recorded run (writes BENCHMARKS.md)
    .venv/bin/python benchmarks/bench_pretraining.py --epochs 2 --no-write  # a quick look

What it measures (two numbers each, before and after):

1. Pretraining losses. `make_synthetic_av_dataset(num_classes=4, videos_per_class=12, seed=0)` gives 36 training and
   12 held-out videos; the labels are NOT used for pretraining. `AVBertForPreTraining` with the demo's small config
   (`demo_config`, plus `num_negatives=8`) is trained with the `Trainer` on the training videos (the demo's training
   augmentation, `MediaTransform(train=True)`), AdamW. The total loss and each objective (visual / audio / multimodal
   masked-embedding prediction, correct-pair prediction) are evaluated on the held-out videos (center crop) before and
   after, in eval mode under `no_grad`, with the SAME masks, pair labels and negatives both times: the masks and pair
   labels are drawn once from a seeded generator and passed to the model, and `torch.manual_seed` is reset before each
   pass so that the sampled negatives use the same random stream.
2. Linear probe. The backbone (`AVBertModel`) is frozen and put in eval mode; the feature of a video is the
   concatenation of the multimodal-stage outputs at the two summary positions, `last_hidden_state[:, 0]` (visual
   summary) and `last_hidden_state[:, num_clips + 1]` (audio summary), 2 x hidden_size = 128 values, computed on the
   center crop without augmentation (`MediaTransform(train=False)`). A multinomial logistic regression (standardized
   features, full batch, L-BFGS, small L2 penalty, fixed seed) is fit on the 36 training videos and scored on the 12
   held-out ones, for (a) the pretrained backbone and (b) a randomly initialized backbone of the same config and seed
   (the same initial weights the pretraining started from). Chance on 4 balanced classes is 25%.

The script owns the part of BENCHMARKS.md between `<!-- bench_pretraining:start -->` and
`<!-- bench_pretraining:end -->`.
"""

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch
import transformers
from transformers import Trainer, TrainingArguments, set_seed

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import available_cores, command_line, cpu_model, replace_section, utc_timestamp

from avbert import AVBertModel
from avbert.modeling_avbert import AVBertForPreTraining
from avbert.training.data import AVBertDataCollator, MediaTransform, load_media_dataset
from avbert.training.demo import NUM_CLIPS, demo_config, demo_processor
from avbert.training.synthetic import make_synthetic_av_dataset

REPO = Path(__file__).resolve().parents[1]
SECTION = "bench_pretraining"
LOSS_NAMES = ("loss", "visual_mep_loss", "audio_mep_loss", "multimodal_mep_loss", "pair_loss")
EVAL_BATCH_SIZE = 6  # 12 held-out videos -> 2 batches of 6 (24 clips per modality as negative candidates)


def decode_all(dataset, processor, train: bool) -> list[dict[str, torch.Tensor]]:
    """Decode every video once (no augmentation when `train` is False) into per-video tensors."""
    transform = MediaTransform(processor, "audio-visual", train=train)
    rows = transform({"path": dataset["path"], "label": dataset["label"]})
    if any(rows["error"]):
        raise RuntimeError(f"undecodable files: {[e for e in rows['error'] if e]}")
    return [
        {"pixel_values": p, "input_features": a, "labels": torch.tensor(y)}
        for p, a, y in zip(rows["pixel_values"], rows["input_features"], rows["labels"], strict=True)
    ]


def make_batches(rows: list[dict], batch_size: int, seed: int, mask_ratio: float, pair_negative_ratio: float):
    """Fixed evaluation batches with fixed masks and pair labels (drawn once from a seeded generator)."""
    generator = torch.Generator().manual_seed(seed)
    count = max(1, round(mask_ratio * NUM_CLIPS))
    batches = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        n = len(chunk)

        def mask(n: int = n) -> torch.Tensor:
            return torch.rand(n, NUM_CLIPS, generator=generator).argsort(1).argsort(1) < count

        pair_labels = (torch.rand(n, generator=generator) >= pair_negative_ratio).long()
        batches.append(
            {
                "pixel_values": torch.stack([r["pixel_values"] for r in chunk]),
                "input_features": torch.stack([r["input_features"] for r in chunk]),
                "visual_mask": mask(),
                "audio_mask": mask(),
                "pair_labels": pair_labels,
            }
        )
    return batches


@torch.no_grad()
def evaluate_losses(model: AVBertForPreTraining, batches: list[dict], seed: int) -> dict[str, float]:
    """Mean of each loss over the fixed batches (weighted by batch size); same negatives on every call."""
    model.eval()
    torch.manual_seed(seed)
    totals = dict.fromkeys(LOSS_NAMES, 0.0)
    correct = videos = 0
    for batch in batches:
        out = model(**batch)
        n = batch["pixel_values"].shape[0]
        for name in LOSS_NAMES:
            totals[name] += float(getattr(out, name)) * n
        correct += int((out.pair_logits.argmax(-1) == out.pair_labels).sum())
        videos += n
    result = {name: value / videos for name, value in totals.items()}
    result["pair_accuracy"] = correct / videos
    return result


@torch.no_grad()
def probe_features(backbone: AVBertModel, rows: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    """Multimodal-stage outputs at the two summary positions, concatenated: (videos, 2 * hidden_size)."""
    backbone.eval()
    features = []
    for start in range(0, len(rows), 8):
        chunk = rows[start : start + 8]
        hidden = backbone(
            pixel_values=torch.stack([r["pixel_values"] for r in chunk]),
            input_features=torch.stack([r["input_features"] for r in chunk]),
        ).last_hidden_state
        features.append(torch.cat([hidden[:, 0], hidden[:, NUM_CLIPS + 1]], dim=-1))
    return torch.cat(features), torch.stack([r["labels"] for r in rows])


def linear_probe(
    train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor, seed: int
) -> dict[str, float]:
    """Multinomial logistic regression on standardized features (L-BFGS, full batch, L2 1e-3); accuracies."""
    torch.manual_seed(seed)
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    num_classes = int(train_y.max()) + 1
    probe = torch.nn.Linear(train_x.shape[1], num_classes)
    optimizer = torch.optim.LBFGS(probe.parameters(), lr=1.0, max_iter=300, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(probe(train_x), train_y) + 1e-3 * probe.weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        return {
            "train_accuracy": float((probe(train_x).argmax(-1) == train_y).float().mean()),
            "test_accuracy": float((probe(test_x).argmax(-1) == test_y).float().mean()),
        }


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(min(torch.get_num_threads(), available_cores()))
    out = args.output_dir
    timings = {}
    start = time.perf_counter()
    data_dir = make_synthetic_av_dataset(out / "data", num_classes=4, videos_per_class=12, seed=0)
    train_set = load_media_dataset("folder", data_dir, "train")
    test_set = load_media_dataset("folder", data_dir, "test")
    class_names = train_set.features["label"].names
    processor = demo_processor()
    train_rows = decode_all(train_set, processor, train=False)
    test_rows = decode_all(test_set, processor, train=False)
    timings["data (write + decode for eval/probe)"] = time.perf_counter() - start
    print(f"{len(train_set)} training / {len(test_set)} held-out videos of {class_names}")

    config = demo_config(class_names)
    config.num_negatives = args.num_negatives
    config.mask_ratio = args.mask_ratio
    config.max_position_embeddings = max(config.max_position_embeddings, 2 * (NUM_CLIPS + 1))
    set_seed(args.seed)
    model = AVBertForPreTraining(config)
    random_backbone = AVBertModel(config)
    random_backbone.load_state_dict(model.avbert.state_dict())  # the same random weights pretraining starts from
    num_params = sum(p.numel() for p in model.parameters())
    eval_batches = make_batches(test_rows, EVAL_BATCH_SIZE, args.seed, config.mask_ratio, config.pair_negative_ratio)

    start = time.perf_counter()
    before = evaluate_losses(model, eval_batches, args.seed)
    timings["loss evaluation (before)"] = time.perf_counter() - start
    print("before:", json.dumps({k: round(v, 4) for k, v in before.items()}))

    training_args = TrainingArguments(
        output_dir=str(out / "pretrain"),
        num_train_epochs=float(args.epochs),
        per_device_train_batch_size=8,
        learning_rate=args.lr,
        weight_decay=0.01,
        warmup_steps=5,
        lr_scheduler_type="cosine",
        optim="adamw_torch",
        logging_steps=5,
        save_strategy="no",
        report_to=[],
        remove_unused_columns=False,
        label_names=[],
        use_cpu=True,
        dataloader_num_workers=2,
        seed=args.seed,
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train_set.with_transform(MediaTransform(processor, "audio-visual", train=True)),
        data_collator=AVBertDataCollator(),
    )
    start = time.perf_counter()
    train_output = trainer.train()
    timings["pretraining"] = time.perf_counter() - start
    logged = [(e["step"], e["loss"]) for e in trainer.state.log_history if "loss" in e]

    start = time.perf_counter()
    after = evaluate_losses(model, eval_batches, args.seed)
    timings["loss evaluation (after)"] = time.perf_counter() - start
    print("after: ", json.dumps({k: round(v, 4) for k, v in after.items()}))

    pretrained_backbone = AVBertModel(config)
    pretrained_backbone.load_state_dict(model.avbert.state_dict())  # the pretraining model's `.avbert`
    start = time.perf_counter()
    probes = {}
    for name, backbone in (("random init", random_backbone), ("pretrained", pretrained_backbone)):
        backbone.requires_grad_(False)
        train_x, train_y = probe_features(backbone, train_rows)
        test_x, test_y = probe_features(backbone, test_rows)
        probes[name] = linear_probe(train_x, train_y, test_x, test_y, args.seed)
        print(f"linear probe ({name}): {json.dumps(probes[name])}")
    timings["linear probes (features + fit)"] = time.perf_counter() - start

    return {
        "class_names": class_names,
        "num_train": len(train_set),
        "num_test": len(test_set),
        "num_params": num_params,
        "config": config,
        "before": before,
        "after": after,
        "train_loss_log": logged,
        "train_steps": train_output.global_step,
        "probes": probes,
        "timings": timings,
    }


def report(args: argparse.Namespace, result: dict, total_s: float, load: tuple[float, float, float]) -> str:
    config = result["config"]
    before, after = result["before"], result["after"]
    lines = [
        "## Self-supervised pretraining and linear probe on synthetic audio-visual data "
        "(`benchmarks/bench_pretraining.py`)",
        "",
        f"- Command: `{command_line()}` (run time {total_s:.0f} s, imports excluded)",
        f"- Date: {utc_timestamp()}; Python {platform.python_version()}, torch {torch.__version__}, "
        f"transformers {transformers.__version__}",
        f"- Device: {cpu_model()}, {available_cores()} cores, torch threads {torch.get_num_threads()}; "
        f"load average at start {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (1/5/15 min; other jobs were running "
        "where this exceeds ~0)",
        f"- Data: `make_synthetic_av_dataset(num_classes=4, videos_per_class=12, seed=0)`, {result['num_train']} "
        f"training / {result['num_test']} held-out videos, classes {', '.join(result['class_names'])} "
        "(labels unused by pretraining); `demo_processor()` (4 clips x 8 frames, 64 px crops; 56 px training crops)",
        f"- Model: `AVBertForPreTraining(demo_config(...))`, {result['num_params']:,} parameters; mask_ratio "
        f"{config.mask_ratio}, num_negatives {config.num_negatives}, negative_sampling `{config.negative_sampling}`, "
        f"pair_negative_ratio {config.pair_negative_ratio}, contrastive_temperature {config.contrastive_temperature}",
        f"- Pretraining: `Trainer`, {args.epochs} epochs ({result['train_steps']} steps), batch 8, AdamW lr "
        f"{args.lr:g} (5 warmup steps, cosine), weight decay 0.01, seed {args.seed}, training augmentation "
        "(`MediaTransform(train=True)`), 2 DataLoader workers",
        f"- Loss evaluation: held-out videos, center crop, eval mode, `no_grad`, batches of {EVAL_BATCH_SIZE}; the "
        "same masks, pair labels (drawn once, seeded) and negatives (`torch.manual_seed` before each pass) before and "
        "after. Chance level of each InfoNCE loss with "
        f"{config.num_negatives} negatives: ln({config.num_negatives + 1}) = "
        f"{torch.log(torch.tensor(config.num_negatives + 1.0)):.3f}; of the pair loss: ln 2 = 0.693",
        "",
        "| objective (held-out) | before pretraining | after pretraining |",
        "|---|---|---|",
    ]
    for name in (*LOSS_NAMES, "pair_accuracy"):
        fmt = "{:.1%}" if name == "pair_accuracy" else "{:.4f}"
        lines.append(f"| {name} | {fmt.format(before[name])} | {fmt.format(after[name])} |")
    steps = ", ".join(f"{step}: {loss:.3f}" for step, loss in result["train_loss_log"])
    lines += [
        "",
        f"Training loss (Trainer log, step: mean loss since the previous log): {steps}",
        "",
        "Linear probe: frozen backbone in eval mode; feature = concatenation of the multimodal-stage outputs at the "
        f"two summary positions (`last_hidden_state[:, 0]` and `[:, {NUM_CLIPS + 1}]`, "
        f"{2 * config.hidden_size} values), "
        "center crop, no augmentation; standardized; multinomial logistic regression, full batch L-BFGS (300 "
        "iterations, strong Wolfe), L2 1e-3, trained on the training videos, scored on the held-out ones. The random "
        "backbone is the exact initialization the pretraining started from.",
        "",
        "| backbone | probe train accuracy | probe held-out accuracy |",
        "|---|---|---|",
    ]
    for name, probe in result["probes"].items():
        lines.append(f"| {name} | {probe['train_accuracy']:.1%} | {probe['test_accuracy']:.1%} |")
    lines.append("| chance (4 balanced classes) | 25.0% | 25.0% |")
    timing = "; ".join(f"{name} {seconds:.0f} s" for name, seconds in result["timings"].items())
    lines += ["", f"Times: {timing}.", ""]
    pre = result["probes"]["pretrained"]["test_accuracy"]
    rnd = result["probes"]["random init"]["test_accuracy"]
    lowered = after["loss"] < before["loss"]
    verdict = (
        f"Pretraining {'lowered' if lowered else 'did NOT lower'} the held-out total loss "
        f"({before['loss']:.3f} -> {after['loss']:.3f}); the probe on pretrained features scored {pre:.1%} vs "
        f"{rnd:.1%} on the random backbone ({'better' if pre > rnd else 'NOT better'}). With only "
        f"{result['num_test']} held-out videos one video is {1 / result['num_test']:.1%}."
    )
    lines.append(verdict)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mask-ratio", type=float, default=0.25)
    parser.add_argument("--num-negatives", type=int, default=8)
    parser.add_argument("--output-dir", type=Path, default=Path("outputs") / "pretraining_probe")
    parser.add_argument("--no-write", action="store_true", help="print the report without writing BENCHMARKS.md")
    args = parser.parse_args(argv)
    load = os.getloadavg()
    start = time.perf_counter()
    result = run(args)
    text = report(args, result, time.perf_counter() - start, load)
    print(text)
    if not args.no_write:
        replace_section(REPO / "BENCHMARKS.md", SECTION, text)
        print(f"wrote section {SECTION} of {REPO / 'BENCHMARKS.md'}")


if __name__ == "__main__":
    main()
