"""Self-supervised AVBERT pretraining on unlabeled synthetic audio-visual videos, then linear probes on its features.

Examples:
    .venv/bin/python benchmarks/bench_pretraining.py                        # the recorded run (writes BENCHMARKS.md)
    .venv/bin/python benchmarks/bench_pretraining.py --epochs 1 --unlabeled-per-class 20 --seeds 0 --no-write  # quick

Protocol (the usual one for self-supervised learning: pretrain on unlabeled videos, probe on a labeled split):

- Unlabeled pretraining set: `make_synthetic_av_dataset(num_classes=4, videos_per_class=300, seed=1,
  test_fraction=0)`, 1200 videos of the demo's generator (another seed than the demo's data), read the way
  `avbert-pretrain --data-dir` reads a folder; labels unused.
- Labeled sets: the demo's own data, `make_synthetic_av_dataset(num_classes=4, videos_per_class=12, seed=0)`, 36
  training and 12 held-out videos, and a larger one from the same generator (`videos_per_class=40, seed=2,
  test_fraction=0.5`, 80 / 80), whose held-out accuracy is less coarse. None of them is seen in pretraining.
- One pretraining run per `--negative-sampling` strategy (default: cans, then random), each from the same initial
  weights, with `avbert-pretrain`'s augmentation (the demo's training augmentation plus the per-clip brightness,
  contrast and gain jitter, `CLIP_JITTER`), and one more run of the first strategy without the per-clip jitter (the
  ablation; `--no-ablation` skips it): `AVBertForPreTraining` with the demo's small config (`demo_config`), the
  `Trainer`, AdamW at lr 3e-4. The whole comparison is repeated for each of `--seeds` (default 0 and 1: initial
  weights, data order, augmentation, evaluation masks and negatives), because one short run on this toy depends a lot
  on its seed.
- Before any loss or probe, the BatchNorm running statistics of every model compared (the initialization and each
  pretrained model) are recomputed the same way, as plain averages over 48 of the unlabeled videos. Without this the
  initialization would be evaluated with its initial statistics (mean 0, variance 1) and pretraining would get credit
  for merely having run data through its BatchNorms.

What it measures:

1. Pretraining losses (total, visual / audio / multimodal masked-embedding prediction, correct-pair prediction) on the
   12 held-out videos and on 48 pretraining videos, before and after, in eval mode under `no_grad`, center crop, with
   the SAME masks, pair labels and negatives for every model: the masks and pair labels are drawn once from a seeded
   generator and passed to the model, and `torch.manual_seed` is reset before each pass so that the sampled negatives
   use the same random stream.
2. Linear probes of the frozen backbone (`AVBertModel`, eval mode) on two features of the multimodal stage: the outputs
   at the two summary positions (`last_hidden_state[:, 0]` and `[:, num_clips + 1]`) and the mean clip output of each
   modality, both 2 x hidden_size values, center crop without augmentation. A multinomial logistic regression
   (standardized features, full batch L-BFGS, small L2 penalty, fixed seed) is fit on all training videos of a labeled
   set, and on 2 per class drawn 50 times (few labels make the probe depend on the features; the same draws for every
   backbone, so differences are paired), and scored on that set's held-out videos. Chance on 4 balanced classes is 25%.

The script owns the part of BENCHMARKS.md between `<!-- bench_pretraining:start -->` and
`<!-- bench_pretraining:end -->`.
"""

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
import transformers
from torch.optim.swa_utils import update_bn
from transformers import Trainer, TrainingArguments, set_seed

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import available_cores, command_line, describe_cpu, library_versions, publish, utc_timestamp

from avbert import AVBertModel
from avbert.data.folders import load_media_dataset, unlabeled_dataset
from avbert.data.synthetic import make_synthetic_av_dataset
from avbert.data.transform import MediaTransform
from avbert.modeling_avbert import AVBertForPreTraining, sample_clip_mask, sample_pair_labels
from avbert.training.demo import NUM_CLIPS, demo_config, demo_processor
from avbert.training.pretrain import CLIP_JITTER
from avbert.training.trainers import PretrainingCollator

REPO = Path(__file__).resolve().parents[1]
SECTION = "bench_pretraining"
LOSS_NAMES = ("loss", "visual_mep_loss", "audio_mep_loss", "multimodal_mep_loss", "pair_loss")
HELD_OUT = "held-out videos (12)"
# Labeled sets for the probes: the demo's own (36 / 12 videos) and a larger one from the same generator (80 / 80),
# whose 80 held-out videos make a probe accuracy less coarse than 12 do (one video = 1.25% instead of 8.3%).
PROBE_SETS = {
    "demo data": dict(videos_per_class=12, seed=0),
    "larger labeled set": dict(videos_per_class=40, seed=2, test_fraction=0.5),
}
LOGGING_STEPS = 5
NUM_SEEN = 48
SEEN = f"pretraining videos ({NUM_SEEN} evenly spaced)"
FEW_SHOT = 2  # labeled training videos per class in the few-shot probe
FEW_SHOT_DRAWS = 50
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
    """Fixed evaluation batches with fixed masks and pair labels (drawn once from a seeded generator), the videos in a
    seeded random order as the training DataLoader would shuffle them (in path order, a batch would hold one class)."""
    generator = torch.Generator().manual_seed(seed)
    rows = [rows[i] for i in torch.randperm(len(rows), generator=generator).tolist()]
    batches = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        pair_labels = sample_pair_labels(len(chunk), pair_negative_ratio, generator=generator)
        visual_mask = sample_clip_mask(len(chunk), NUM_CLIPS, mask_ratio, generator=generator)
        audio_mask = sample_clip_mask(len(chunk), NUM_CLIPS, mask_ratio, generator=generator)
        batches.append(
            {
                "pixel_values": torch.stack([r["pixel_values"] for r in chunk]),
                "input_features": torch.stack([r["input_features"] for r in chunk]),
                "visual_mask": visual_mask,
                "audio_mask": audio_mask,
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


PROBE_FEATURES = ("summary outputs", "mean clip output")


@torch.no_grad()
def probe_features(backbone: AVBertModel, rows: list[dict]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Two features per video from the multimodal stage: the outputs at the two summary positions, concatenated, and
    the mean of the clip outputs of each modality, concatenated (both `(videos, 2 * hidden_size)`)."""
    backbone.eval()
    summaries, clip_means = [], []
    for start in range(0, len(rows), 8):
        chunk = rows[start : start + 8]
        hidden = backbone(
            pixel_values=torch.stack([r["pixel_values"] for r in chunk]),
            input_features=torch.stack([r["input_features"] for r in chunk]),
        ).last_hidden_state
        summaries.append(torch.cat([hidden[:, 0], hidden[:, NUM_CLIPS + 1]], dim=-1))
        clip_means.append(torch.cat([hidden[:, 1 : NUM_CLIPS + 1].mean(1), hidden[:, NUM_CLIPS + 2 :].mean(1)], dim=-1))
    features = dict(zip(PROBE_FEATURES, (torch.cat(summaries), torch.cat(clip_means)), strict=True))
    return features, torch.stack([r["labels"] for r in rows])


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


def few_shot_probe(
    train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor, seed: int
) -> tuple[float, float, list[float]]:
    """Held-out accuracy of `linear_probe` fit on `FEW_SHOT` training videos per class: mean, standard deviation and
    the accuracy of each of `FEW_SHOT_DRAWS` seeded draws (the same draws for every backbone, so that two backbones can
    be compared draw by draw). Few labels make the probe depend on the features, not on the labels."""
    generator = torch.Generator().manual_seed(seed)
    accuracies = []
    for draw in range(FEW_SHOT_DRAWS):
        chosen = torch.cat(
            [
                torch.nonzero(train_y == label).squeeze(1)[
                    torch.randperm(int((train_y == label).sum()), generator=generator)[:FEW_SHOT]
                ]
                for label in train_y.unique()
            ]
        )
        accuracies.append(linear_probe(train_x[chosen], train_y[chosen], test_x, test_y, seed + draw)["test_accuracy"])
    values = torch.tensor(accuracies)
    return float(values.mean()), float(values.std()), accuracies


def pretrain(
    model: AVBertForPreTraining,
    unlabeled_set,
    processor,
    augmentation: dict[str, float],
    args: argparse.Namespace,
    output_dir: Path,
) -> tuple[int, list[tuple[int, float]]]:
    """The `Trainer` run on the unlabeled videos; returns the number of steps and the logged training losses."""
    training_args = TrainingArguments(
        output_dir=str(output_dir),
        num_train_epochs=float(args.epochs),
        per_device_train_batch_size=8,
        learning_rate=args.lr,
        weight_decay=0.01,
        warmup_steps=args.warmup_steps,
        lr_scheduler_type="cosine",
        optim="adamw_torch",
        logging_steps=LOGGING_STEPS,
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
        train_dataset=unlabeled_set.with_transform(
            MediaTransform(processor, "audio-visual", train=True, augmentation=augmentation)
        ),
        data_collator=PretrainingCollator(),
    )
    output = trainer.train()
    return output.global_step, [(e["step"], e["loss"]) for e in trainer.state.log_history if "loss" in e]


def calibrate_batch_norm(model: AVBertForPreTraining, rows: list[dict]) -> None:
    """Recompute every BatchNorm's running statistics (all are in the two CNNs) as plain averages over `rows`.
    Applied to every model compared, so that pretraining gets no credit for merely having run data through the
    BatchNorms of a model whose running statistics are still the initial 0 / 1."""
    chunks = [rows[start : start + 8] for start in range(0, len(rows), 8)]
    pixels = [torch.stack([r["pixel_values"] for r in chunk]).flatten(0, 1) for chunk in chunks]
    sounds = [torch.stack([r["input_features"] for r in chunk]).flatten(0, 1) for chunk in chunks]
    update_bn(pixels, model.avbert.visual_encoder)
    update_bn(sounds, model.avbert.audio_encoder)


def probe_backbone(backbone: AVBertModel, probe_sets: dict[str, tuple[list, list]], seed: int) -> dict:
    """Full and few-shot linear probes of each feature of a frozen backbone on each labeled set."""
    backbone.requires_grad_(False)
    probes: dict[str, dict] = {}
    for name, (train_rows, test_rows) in probe_sets.items():
        train_x, train_y = probe_features(backbone, train_rows)
        test_x, test_y = probe_features(backbone, test_rows)
        for feature in PROBE_FEATURES:
            probe = linear_probe(train_x[feature], train_y, test_x[feature], test_y, seed)
            probe["few_shot"] = few_shot_probe(train_x[feature], train_y, test_x[feature], test_y, seed)
            probes.setdefault(feature, {})[name] = probe
    return probes


def prepare_data(args: argparse.Namespace) -> dict:
    """Write the unlabeled and labeled videos and decode what the evaluation needs, once for all seeds."""
    out = args.output_dir
    start = time.perf_counter()
    unlabeled_dir = make_synthetic_av_dataset(
        out / "unlabeled", num_classes=4, videos_per_class=args.unlabeled_per_class, seed=1, test_fraction=0
    )
    unlabeled_set = unlabeled_dataset(unlabeled_dir)  # as `avbert-pretrain --data-dir` reads a folder
    processor = demo_processor()
    probe_sets, sizes = {}, {}
    for name, settings in PROBE_SETS.items():
        data_dir = make_synthetic_av_dataset(out / name.replace(" ", "_"), num_classes=4, **settings)
        train_set = load_media_dataset("folder", data_dir, "train")
        test_set = load_media_dataset("folder", data_dir, "test")
        probe_sets[name] = (decode_all(train_set, processor, train=False), decode_all(test_set, processor, False))
        sizes[name] = (len(train_set), len(test_set))
    class_names = train_set.features["label"].names
    test_rows = probe_sets["demo data"][1]  # held-out losses on the demo's own held-out videos
    # Evenly spaced over the sorted paths, so that every class of the generator is among them.
    seen = torch.linspace(0, len(unlabeled_set) - 1, min(NUM_SEEN, len(unlabeled_set))).round().long().tolist()
    seen_rows = decode_all(unlabeled_set.select(seen), processor, train=False)
    print(f"{len(unlabeled_set)} unlabeled; labeled (training, held-out): {sizes}; classes {class_names}")
    return {
        "unlabeled_set": unlabeled_set,
        "processor": processor,
        "probe_sets": probe_sets,
        "probe_set_sizes": sizes,
        "class_names": class_names,
        "test_rows": test_rows,
        "seen_rows": seen_rows,
        "seconds": time.perf_counter() - start,
    }


def run(args: argparse.Namespace, data: dict) -> dict:
    """Every pretraining run of one seed (`args.seed`) and the comparisons with its initialization."""
    out = args.output_dir / f"seed_{args.seed}"
    unlabeled_set, processor, probe_sets = data["unlabeled_set"], data["processor"], data["probe_sets"]
    test_rows, seen_rows = data["test_rows"], data["seen_rows"]
    timings = {}
    config = demo_config(data["class_names"])
    config.num_negatives = args.num_negatives
    config.mask_ratio = args.mask_ratio
    config.contrastive_temperature = args.temperature
    set_seed(args.seed)
    initial_state = AVBertForPreTraining(config).state_dict()  # every run starts from these weights
    eval_batches = {
        name: make_batches(rows, EVAL_BATCH_SIZE, args.seed, config.mask_ratio, config.pair_negative_ratio)
        for name, rows in ((HELD_OUT, test_rows), (SEEN, seen_rows))
    }

    def losses(model: AVBertForPreTraining) -> dict[str, dict[str, float]]:
        return {name: evaluate_losses(model, batches, args.seed) for name, batches in eval_batches.items()}

    random_model = AVBertForPreTraining(config)
    random_model.load_state_dict(initial_state)
    start = time.perf_counter()
    calibrate_batch_norm(random_model, seen_rows)
    before = losses(random_model)
    probes = {"random init": probe_backbone(random_model.avbert, probe_sets, args.seed)}
    timings["random init: losses and probes"] = time.perf_counter() - start
    print("before:", json.dumps(before))

    # One run per strategy with the pretraining augmentation, and the first strategy again without the per-clip
    # jitter (the ablation that shows what the jitter is for).
    jitter = {key: getattr(args, key) for key in CLIP_JITTER}
    runs = [(strategy, strategy, jitter) for strategy in args.negative_sampling]
    if not args.no_ablation:
        strategy = args.negative_sampling[0]
        runs.append((f"{strategy}, no clip jitter", strategy, {}))
    after, train_logs, train_steps = {}, {}, {}
    for label, strategy, augmentation in runs:
        config.negative_sampling = strategy
        model = AVBertForPreTraining(config)
        model.load_state_dict(initial_state)
        set_seed(args.seed)
        start = time.perf_counter()
        folder = out / label.replace(", ", "_").replace(" ", "_")
        train_steps[label], train_logs[label] = pretrain(model, unlabeled_set, processor, augmentation, args, folder)
        timings[f"pretraining ({label})"] = time.perf_counter() - start
        start = time.perf_counter()
        calibrate_batch_norm(model, seen_rows)
        after[label] = losses(model)
        probes[f"pretrained ({label})"] = probe_backbone(model.avbert, probe_sets, args.seed)
        timings[f"{label}: losses and probes"] = time.perf_counter() - start
        print(f"after ({label}):", json.dumps(after[label]))
        print(f"probes ({label}):", json.dumps(probes[f"pretrained ({label})"]))

    return {
        "seed": args.seed,
        "class_names": data["class_names"],
        "num_unlabeled": len(unlabeled_set),
        "probe_set_sizes": data["probe_set_sizes"],
        "num_params": sum(p.numel() for p in random_model.parameters()),
        "config": config,
        "before": before,
        "after": after,
        "train_logs": train_logs,
        "train_steps": train_steps,
        "probes": probes,
        "timings": timings,
    }


def report(
    args: argparse.Namespace, data: dict, results: list[dict], total_s: float, load: tuple[float, float, float]
) -> str:
    """The whole section: the setting, then the tables of each pretraining seed."""
    result = results[0]
    config = result["config"]
    runs = list(result["after"])
    sizes = result["probe_set_sizes"]
    chance = math.log(config.num_negatives + 1)
    lines = [
        "## Self-supervised pretraining and linear probe on synthetic audio-visual data "
        "(`benchmarks/bench_pretraining.py`)",
        "",
        f"- Command: `{command_line()}` (run time {total_s:.0f} s, imports excluded)",
        f"- Date: {utc_timestamp()}; {library_versions(torch, transformers)}",
        f"- Device: {describe_cpu()}, {available_cores()} cores, torch threads {torch.get_num_threads()}; "
        f"load average at start {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (1/5/15 min; other jobs were running "
        "where this exceeds ~0)",
        f"- Pretraining data: {result['num_unlabeled']} unlabeled videos of the demo's generator, "
        f"`make_synthetic_av_dataset(num_classes=4, videos_per_class={args.unlabeled_per_class}, seed=1, "
        "test_fraction=0)`, read as `avbert-pretrain --data-dir` reads a folder (labels unused)",
        "- Labeled data (probes; held-out losses on the demo's): "
        + "; ".join(
            f"{name}: `make_synthetic_av_dataset(num_classes=4, "
            + ", ".join(f"{key}={value}" for key, value in PROBE_SETS[name].items())
            + f")`, {train} training / {test} held-out videos"
            for name, (train, test) in sizes.items()
        )
        + f"; classes {', '.join(result['class_names'])}; none of them seen in pretraining; `demo_processor()` "
        "(4 clips x 8 frames, 64 px crops; 56 px training crops)",
        f"- Model: `AVBertForPreTraining(demo_config(...))`, {result['num_params']:,} parameters; mask_ratio "
        f"{config.mask_ratio}, num_negatives {config.num_negatives}, pair_negative_ratio {config.pair_negative_ratio}, "
        f"contrastive_temperature {config.contrastive_temperature}, cans_outlier_quantile "
        f"{config.cans_outlier_quantile}; runs ({', '.join(runs)}) all from the same initial weights",
        f"- Pretraining: `Trainer`, {args.epochs} epochs ({', '.join(map(str, result['train_steps'].values()))} "
        f"steps), batch 8, AdamW lr {args.lr:g} ({args.warmup_steps} warmup steps, cosine), weight decay 0.01, 2 "
        "DataLoader workers; augmentation: the demo's training one (random scale, crop, flip, "
        f"SpecAugment) plus the per-clip jitter "
        f"({', '.join(f'{key}={getattr(args, key):g}' for key in CLIP_JITTER)}), except in the run marked "
        '"no clip jitter"',
        "- BatchNorm statistics of every model compared (random init and each pretrained one) recomputed the same way "
        f"before its losses and probes: plain averages over the {SEEN} (center crop)",
        f"- Loss evaluation: {HELD_OUT} and {SEEN}; center crop, eval mode, `no_grad`, batches of {EVAL_BATCH_SIZE} "
        "(videos in a seeded random order, so that a batch mixes classes as in training); the same masks, pair "
        "labels (drawn once, seeded) and negatives (`torch.manual_seed` before each pass) for "
        f"every model. Chance level of each InfoNCE loss with {config.num_negatives} negatives: "
        f"ln({config.num_negatives + 1}) = {chance:.3f}; of the pair loss: ln 2 = {math.log(2):.3f}",
        "- Linear probe: frozen backbone in eval mode; two features of the multimodal stage, each "
        f"{2 * config.hidden_size} values: the outputs at the two summary positions (`last_hidden_state[:, 0]` and "
        f"`[:, {NUM_CLIPS + 1}]`, what the classifiers' sequence head reads) and the mean clip output of each "
        "modality; center crop, no augmentation; standardized; multinomial logistic regression, full batch L-BFGS "
        "(300 iterations, strong Wolfe), L2 1e-3, trained on the training videos of a labeled set (all of them, or "
        f"{FEW_SHOT} per class drawn at random {FEW_SHOT_DRAWS} times, the same draws for every backbone), scored on "
        "its held-out ones. The random backbone is the exact initialization the pretraining runs started from.",
        f"- Seeds: {', '.join(str(r['seed']) for r in results)} (initial weights, pretraining data order and "
        "augmentation, evaluation masks and negatives); one section per seed below. The videos are written and the "
        f"evaluation data decoded once for all seeds ({data['seconds']:.0f} s).",
        "",
    ]
    for result in results:
        lines += [f"### Seed {result['seed']}", "", *seed_report(result)]
    lines.append(
        "One held-out video is "
        + ", ".join(f"{1 / test:.1%} of the {name}" for name, (_, test) in sizes.items())
        + f". Few-shot verdicts: paired difference beyond 2 standard errors over the {FEW_SHOT_DRAWS} draws (this "
        "covers the draw of the labeled videos, not the pretraining run: compare the seeds for that)."
    )
    return "\n".join(lines)


def seed_report(result: dict) -> list[str]:
    """Losses, probe table and verdicts of one seed."""
    before, after = result["before"], result["after"]
    runs = list(after)
    sizes = result["probe_set_sizes"]
    lines = []
    for name in (HELD_OUT, SEEN):
        header = " | ".join(f"after, {run}" for run in runs)
        lines += [f"Losses on the {name}:", "", f"| objective | before pretraining | {header} |"]
        lines.append("|---" * (2 + len(runs)) + "|")
        for loss in (*LOSS_NAMES, "pair_accuracy"):
            fmt = "{:.1%}" if loss == "pair_accuracy" else "{:.4f}"
            cells = " | ".join(fmt.format(after[run][name][loss]) for run in runs)
            lines.append(f"| {loss} | {fmt.format(before[name][loss])} | {cells} |")
        lines.append("")
    for run in runs:
        logged = result["train_logs"][run]
        every = max(1, len(logged) // 10)
        steps = ", ".join(f"{step}: {loss:.3f}" for step, loss in logged[every - 1 :: every])
        lines.append(f"Training loss, {run} (Trainer log; step: mean of the {LOGGING_STEPS} steps before it): {steps}")
        lines.append("")
    lines += [
        "| backbone | feature | "
        + " | ".join(
            f"{name}: all {train} labels | {name}: {FEW_SHOT} per class (mean ± sd of {FEW_SHOT_DRAWS} draws)"
            for name, (train, _) in sizes.items()
        )
        + " |",
        "|---|---" + "|---|---" * len(sizes) + "|",
    ]
    for backbone, by_feature in result["probes"].items():
        for feature, by_set in by_feature.items():
            cells = " | ".join(
                f"{probe['test_accuracy']:.1%} | {probe['few_shot'][0]:.1%} ± {probe['few_shot'][1]:.1%}"
                for probe in by_set.values()
            )
            lines.append(f"| {backbone} | {feature} | {cells} |")
    lines.append("| chance (4 balanced classes) | |" + " 25.0% | 25.0% |" * len(sizes))
    timing = "; ".join(f"{name} {seconds:.0f} s" for name, seconds in result["timings"].items())
    lines += ["", f"Times: {timing}.", ""]
    for run in runs:
        lowered = {
            name: [loss for loss in LOSS_NAMES if after[run][name][loss] < before[name][loss]]
            for name in (HELD_OUT, SEEN)
        }
        comparisons = []
        for feature in PROBE_FEATURES:
            for probe_set in sizes:
                pre = result["probes"][f"pretrained ({run})"][feature][probe_set]
                rnd = result["probes"]["random init"][feature][probe_set]
                a, b = round(pre["test_accuracy"], 3), round(rnd["test_accuracy"], 3)  # as printed
                verdict = "better" if a > b else "equal" if a == b else "WORSE"
                comparisons.append(f"{feature}, {probe_set}, all labels: {a:.1%} vs {b:.1%} ({verdict})")
                # Few-shot: the same draws for both, so the difference is paired; mean ± standard error over draws.
                differences = torch.tensor(pre["few_shot"][2]) - torch.tensor(rnd["few_shot"][2])
                mean, error = float(differences.mean()), float(differences.std() / math.sqrt(len(differences)))
                verdict = "better" if mean > 2 * error else "WORSE" if mean < -2 * error else "no clear difference"
                comparisons.append(
                    f"{feature}, {probe_set}, {FEW_SHOT} per class: {pre['few_shot'][0]:.1%} vs "
                    f"{rnd['few_shot'][0]:.1%}, paired difference {100 * mean:+.1f} ± {100 * error:.1f} points "
                    f"({verdict})"
                )
        lines.append(
            f"{run}: pretraining lowered "
            + "; ".join(f"on the {name}: {', '.join(names) if names else 'no loss'}" for name, names in lowered.items())
            + f". Probe held-out accuracy, pretrained vs random init: {'; '.join(comparisons)}."
        )
        lines.append("")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--unlabeled-per-class", type=int, default=300, help="unlabeled pretraining videos per class")
    parser.add_argument(
        "--lr", type=float, default=3e-4, help="at 3e-3 the MEP losses end above chance (docs/pretraining.md)"
    )
    parser.add_argument("--warmup-steps", type=int, default=30)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="one full comparison per seed")
    parser.add_argument("--mask-ratio", type=float, default=0.25)
    parser.add_argument("--num-negatives", type=int, default=8)
    parser.add_argument(
        "--negative-sampling",
        nargs="+",
        choices=("cans", "random", "easy", "hard"),
        default=["cans", "random"],
        help="one pretraining run per strategy, each from the same initial weights",
    )
    for key, value in CLIP_JITTER.items():
        parser.add_argument(f"--{key.replace('_', '-')}", type=float, default=value, help="per-clip jitter")
    parser.add_argument(
        "--no-ablation", action="store_true", help="skip the run of the first strategy without the per-clip jitter"
    )
    parser.add_argument("--temperature", type=float, default=1.0, help="contrastive_temperature")
    parser.add_argument("--output-dir", type=Path, default=Path("outputs") / "pretraining_probe")
    parser.add_argument("--no-write", action="store_true", help="print the report without writing BENCHMARKS.md")
    args = parser.parse_args(argv)
    load = os.getloadavg()
    start = time.perf_counter()
    torch.set_num_threads(min(torch.get_num_threads(), available_cores()))
    data = prepare_data(args)
    results = [run(argparse.Namespace(**vars(args), seed=seed), data) for seed in args.seeds]
    text = report(args, data, results, time.perf_counter() - start, load)
    publish(text, SECTION, REPO / "BENCHMARKS.md", write=not args.no_write)


if __name__ == "__main__":
    main()
