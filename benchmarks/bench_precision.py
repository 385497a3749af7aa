"""bf16 against fp32 on this machine: accuracy on the parity fixtures and real videos, eval and train speed, and the
video-classification pipeline's throughput at batch 1 vs 4.

    .venv/bin/python benchmarks/bench_precision.py              # 1-5 minutes on 2 shared cores; writes BENCHMARKS.md
    .venv/bin/python benchmarks/bench_precision.py --no-write   # print only

bf16 two ways: *autocast* = `torch.autocast(device_type, dtype=torch.bfloat16)` around the forward, fp32 weights;
*bf16 weights* = the model loaded with `dtype=torch.bfloat16` (what `avbert-evaluate --bf16` does). Every variant runs
the eval fast path (`fuse_for_inference()`). The parity fixtures (../shared/fixtures/original) and the real videos
(../shared/data/videos) are needed; the fixtures are tiny random models, so agreement on real videos is a figure of
numerical stability, not of accuracy on a task.
"""

import argparse
import contextlib
import csv
import functools
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import transformers
from _report import (
    REPO_ROOT,
    SHARED_DIR,
    available_cores,
    command_line,
    cpu_flags,
    cpu_model,
    replace_section,
    utc_timestamp,
)
from safetensors.torch import load_file

from avbert import AVBertConfig, AVBertForVideoClassification, AVBertProcessor
from avbert.convert_original_checkpoint import convert_checkpoint

FIXTURES = SHARED_DIR / "fixtures" / "original"
VIDEOS = SHARED_DIR / "data" / "videos"
SECTION = "bench_precision:block {}/cpu"
FIXTURE_TASKS = {"tiny_ks": "kinetics-sounds", "tiny_visual": "ucf101", "tiny_audio": "esc50"}
# Speed workloads: "small" has every stage of the full model at a quarter of its widths (eval forward about 1 s on
# 2 cores); "tiny" is bench_model.py's smoke size. 8 frames at least: with 4, the temporal-kernel stage sees 2 frames,
# where torch 2.14's CPU bf16 conv3d weight gradient is garbage (docs/performance.md).
SPEED_CONFIGS = {
    "small": {
        "config": {
            "visual_base_width": 16,
            "audio_base_width": 16,
            "hidden_size": 256,
            "num_attention_heads": 4,
            "intermediate_size": 512,
        },
        "clips": 4,
        "frames": 16,
        "size": 112,
    },
    "tiny": {
        "config": {
            "visual_base_width": 8,
            "visual_depths": (1, 1, 1, 1),
            "audio_base_width": 4,
            "audio_depths": (1, 1, 1, 1),
            "hidden_size": 32,
            "num_attention_heads": 2,
            "intermediate_size": 64,
            "orthogonal_size": 16,
        },
        "clips": 4,
        "frames": 8,
        "size": 32,
    },
}
VARIANTS = ("fp32", "autocast", "bf16 weights")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def precision_context(variant: str) -> contextlib.AbstractContextManager:
    return torch.autocast("cpu", dtype=torch.bfloat16) if variant == "autocast" else contextlib.nullcontext()


def as_variant(model: torch.nn.Module, variant: str) -> torch.nn.Module:
    """The model of `variant`: a bf16 copy for "bf16 weights" (as `from_pretrained(dtype=torch.bfloat16)` loads)."""
    if variant != "bf16 weights":
        return model
    copy = type(model)(model.config)
    copy.load_state_dict(model.state_dict())
    return copy.to(torch.bfloat16).eval().fuse_for_inference()


def max_difference(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return (actual.float() - expected.float()).abs().max().item()


# ---------------------------------------------------------------------------------------------------------------------
# Accuracy


def fixture_logits(folder: Path, name: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{variant: (logits, clip_logits)} of one converted fixture on its recorded inputs, and the recorded logits."""
    model = convert_checkpoint(
        FIXTURES / name / "finetuned_checkpoint.pyth",
        folder / name,
        FIXTURE_TASKS[name],
        original_config_path=FIXTURES / name / "config.yaml",
    )
    model.eval().fuse_for_inference()
    inputs = load_file(FIXTURES / name / "inputs.safetensors")
    if name == "tiny_ks":
        model_inputs = {"pixel_values": inputs["visual_seq"], "input_features": inputs["audio_seq"]}
    elif name == "tiny_visual":
        model_inputs = {"pixel_values": inputs["visual_clip"].unsqueeze(1)}
    else:
        model_inputs = {"input_features": inputs["audio_clip"].unsqueeze(1)}
    results, models = {}, {variant: as_variant(model, variant) for variant in VARIANTS}
    for variant in VARIANTS:
        with torch.inference_mode(), precision_context(variant):
            output = models[variant](**model_inputs)
        results[variant] = (output.logits, output.clip_logits)
    return results


def fixture_rows(folder: Path) -> list[str]:
    rows = []
    for name in FIXTURE_TASKS:
        log(f"fixture {name} ...")
        results = fixture_logits(folder, name)
        logits, clip_logits = results["fp32"]
        cells = []
        for variant in VARIANTS[1:]:
            other_logits, other_clip_logits = results[variant]
            cells += [
                f"{max_difference(other_logits, logits):.2e}",
                f"{max_difference(other_clip_logits, clip_logits):.2e}",
            ]
        agree = sum(bool((results[variant][0].argmax(-1) == logits.argmax(-1)).all()) for variant in VARIANTS[1:])
        rows.append(
            f"| {name} ({FIXTURE_TASKS[name]}) | {logits.abs().max().item():.2f} | {' | '.join(cells)} | "
            f"{logits.shape[0]} | {agree}/2 |"
        )
    return rows


def videos_with_audio() -> list[Path]:
    with open(VIDEOS / "manifest.csv") as handle:
        return [
            VIDEOS / row["path"]
            for row in csv.DictReader(handle)
            if row["has_audio"] == "True" and row["decoded_video_frames"]
        ]


def real_video_agreement(folder: Path) -> tuple[str, list[Path]]:
    """Top-1 of fp32 vs each bf16 variant on every real video with sound, per view row and per video."""
    ks = folder / "tiny_ks"
    processor = AVBertProcessor.from_pretrained(ks)
    model = AVBertForVideoClassification.from_pretrained(ks).eval().fuse_for_inference()
    bf16_model = AVBertForVideoClassification.from_pretrained(ks, dtype=torch.bfloat16).eval().fuse_for_inference()
    videos = videos_with_audio()
    rows = {variant: [] for variant in VARIANTS}
    for path in videos:
        log(f"video {path.name} ...")
        inputs = processor(videos=str(path), return_tensors="pt", all_views=True)
        inputs = {key: inputs[key] for key in ("pixel_values", "input_features")}
        with torch.inference_mode():
            for variant in VARIANTS:
                with precision_context(variant):
                    logits = (bf16_model if variant == "bf16 weights" else model)(**inputs).logits
                rows[variant].append(logits.float())
    fp32 = torch.stack(rows["fp32"])  # (videos, views, classes)
    lines = []
    for variant in VARIANTS[1:]:
        other = torch.stack(rows[variant])
        per_view = (other.argmax(-1) == fp32.argmax(-1)).float()
        per_video = (other.softmax(-1).mean(1).argmax(-1) == fp32.softmax(-1).mean(1).argmax(-1)).float()
        probability_difference = max_difference(other.softmax(-1), fp32.softmax(-1))
        lines.append(
            f"| {variant} | {int(per_video.sum())}/{len(videos)} | {int(per_view.sum())}/{per_view.numel()} | "
            f"{max_difference(other, fp32):.2e} | {probability_difference:.2e} |"
        )
    return "\n".join(lines), videos


# ---------------------------------------------------------------------------------------------------------------------
# Speed


def interleaved_medians(runs: dict[str, Callable[[], object]], warmup: int, iters: int) -> dict[str, float]:
    """Median seconds of each run; every round runs each once in turn, so contention on shared cores hits all alike."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for round_index in range(warmup + iters):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            if round_index >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def eval_forward(model: torch.nn.Module, inputs: dict[str, torch.Tensor], variant: str) -> object:
    with torch.inference_mode(), precision_context(variant):
        return model(**inputs)


def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    inputs: dict[str, torch.Tensor],
    labels: torch.Tensor,
    variant: str,
) -> torch.Tensor:
    with precision_context(variant):
        loss = model(**inputs, labels=labels).loss
    loss.backward()
    if not all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None):
        raise RuntimeError(f"{variant} train step: non-finite gradients")
    optimizer.step()
    optimizer.zero_grad()
    return loss


def speed_rows(names: list[str], warmup: int, iters: int) -> list[str]:
    rows = []
    for name in names:
        spec = SPEED_CONFIGS[name]
        torch.manual_seed(0)
        config = AVBertConfig(num_labels=32, num_clips=spec["clips"], num_frames=spec["frames"], **spec["config"])
        model = AVBertForVideoClassification(config).eval().fuse_for_inference()
        size, clips = spec["size"], spec["clips"]
        inputs = {
            "pixel_values": torch.randn(1, clips, 3, spec["frames"], size, size),
            "input_features": torch.randn(1, clips, 1, config.num_mel_bins, config.audio_num_frames),
        }
        models = {variant: as_variant(model, variant) for variant in VARIANTS}

        log(f"speed {name}: eval ...")
        runs = {variant: functools.partial(eval_forward, models[variant], inputs, variant) for variant in VARIANTS}
        eval_times = interleaved_medians(runs, warmup, iters)
        train_model = AVBertForVideoClassification(config).train()
        train_model.load_state_dict(model.state_dict())
        optimizer = torch.optim.Adam(train_model.parameters(), lr=1e-4)
        labels = torch.tensor([1])

        log(f"speed {name}: train ...")
        train_times = interleaved_medians(
            {
                variant: functools.partial(train_step, train_model, optimizer, inputs, labels, variant)
                for variant in ("fp32", "autocast")
            },
            warmup,
            iters,
        )
        shape = f"{clips} clips x {spec['frames']} frames at {size}"
        for variant in VARIANTS:
            ratio = eval_times[variant] / eval_times["fp32"]
            train = (
                f"{train_times[variant] * 1e3:,.0f} | {train_times[variant] / train_times['fp32']:.2f}x"
                if variant in train_times
                else "| "
            )
            rows.append(f"| {name} ({shape}) | {variant} | {eval_times[variant] * 1e3:,.0f} | {ratio:.2f}x | {train} |")
    return rows


# ---------------------------------------------------------------------------------------------------------------------
# Batched pipeline


def pipeline_rows(folder: Path, videos: list[Path], batch_sizes: list[int], rounds: int) -> list[str]:
    """videos/s of `pipeline("video-classification", ...)` over the same files at each batch size (feature extractor
    passed, which transformers needs to batch), and the largest score difference from the first batch size."""
    from transformers import AutoFeatureExtractor, pipeline

    ks = folder / "tiny_ks"
    files = [str(path) for path in videos]
    classifiers = {
        batch_size: pipeline(
            "video-classification",
            model=str(ks),
            feature_extractor=AutoFeatureExtractor.from_pretrained(ks),
            batch_size=batch_size,
        )
        for batch_size in batch_sizes
    }
    scores: dict[int, list[dict[str, float]]] = {}

    def classify(batch_size: int) -> Callable[[], object]:
        def run() -> object:
            predictions = classifiers[batch_size](files, top_k=5)
            scores[batch_size] = [{p["label"]: p["score"] for p in video} for video in predictions]
            return predictions

        return run

    log("pipeline ...")
    seconds = interleaved_medians({size: classify(size) for size in batch_sizes}, warmup=1, iters=rounds)
    reference = scores[batch_sizes[0]]
    rows = []
    for batch_size in batch_sizes:
        difference = max(
            abs(score[label] - expected[label])
            for score, expected in zip(scores[batch_size], reference, strict=True)
            for label in expected
        )
        rows.append(
            f"| {batch_size} | {len(files)} | {seconds[batch_size]:.2f} | {len(files) / seconds[batch_size]:.2f} | "
            f"{difference:.1e} |"
        )
    return rows


# ---------------------------------------------------------------------------------------------------------------------


def cpu_line() -> str:
    name, flags = cpu_model(), cpu_flags()
    present = ", ".join(
        f"{flag} {'yes' if flag in flags else 'no'}" for flag in ("avx512_bf16", "amx_bf16", "amx_tile")
    )
    capability = torch.backends.cpu.get_cpu_capability()
    threads = torch.get_num_threads()
    return f"{name}, {available_cores()} cores, torch threads {threads}; {present} (torch CPU capability: {capability})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--speed-configs", default="small,tiny", help="comma-separated subset of small, tiny")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--batch-sizes", default="1,4", help="pipeline batch sizes")
    parser.add_argument("--pipeline-rounds", type=int, default=3, help="timed rounds over the videos per batch size")
    parser.add_argument("--no-write", action="store_true", help="print the sections instead of writing BENCHMARKS.md")
    args = parser.parse_args()
    if not FIXTURES.is_dir() or not (VIDEOS / "manifest.csv").is_file():
        raise SystemExit(f"needs the parity fixtures ({FIXTURES}) and the real videos ({VIDEOS})")
    started = time.perf_counter()
    header = [
        f"- Command: `{command_line()}`",
        f"- Date: {utc_timestamp()}; torch {torch.__version__}, transformers {transformers.__version__}",
        f"- CPU: {cpu_line()}",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        fixtures = fixture_rows(folder)
        agreement, videos = real_video_agreement(folder)
        speed = speed_rows(args.speed_configs.split(","), args.warmup, args.iters)
        batch_sizes = [int(size) for size in args.batch_sizes.split(",")]
        batched = pipeline_rows(folder, videos, batch_sizes, args.pipeline_rounds)
    elapsed = time.perf_counter() - started
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    header.append(f"- Run time {elapsed:.0f} s (imports excluded); load average at the end (1, 5, 15 min): {load}")
    precision = "\n".join(
        [
            "### bf16 vs fp32 on CPU",
            "",
            *header,
            '- Variants: *fp32*; *autocast* = `torch.autocast("cpu", dtype=torch.bfloat16)`, fp32 weights; *bf16 '
            "weights* = loaded with `dtype=torch.bfloat16` (`avbert-evaluate --bf16`). All on the eval fast path "
            "(`fuse_for_inference()`).",
            "",
            "Parity fixtures (the original's recorded inputs; tiny random models): max |difference| from fp32.",
            "",
            "| fixture | max \\|fp32 logit\\| | autocast: logits | autocast: clip logits | bf16 weights: logits | "
            "bf16 weights: clip logits | items | same top-1 on all items |",
            "|---|---|---|---|---|---|---|---|",
            *fixtures,
            "",
            f"Real videos with sound ({len(videos)} files under ../shared/data/videos, 3 spatial views x 3 clips each, "
            "the tiny_ks model): top-1 agreement with fp32. The model is random, its scores close together, so this "
            "measures numerical stability, not task accuracy.",
            "",
            "| variant | same top-1 (videos, view-averaged) | same top-1 (view rows) | max \\|logit difference\\| | "
            "max \\|probability difference\\| |",
            "|---|---|---|---|---|",
            agreement,
            "",
            "Speed: eval forward (`inference_mode`, batch 1) and train step (forward with labels, backward, Adam "
            f"step), random weights; {args.warmup} warm-up + {args.iters} timed rounds, each variant in turn per round "
            "(interleaved), medians; ratio = time / fp32 time "
            "(below 1 is faster).",
            "",
            "| config | variant | eval (ms) | eval vs fp32 | train step (ms) | train vs fp32 |",
            "|---|---|---|---|---|---|",
            *speed,
        ]
    )
    pipeline_section = "\n".join(
        [
            "### video-classification pipeline, batch 1 vs 4, on CPU",
            "",
            *header,
            '- `pipeline("video-classification", model=tiny_ks_folder, feature_extractor=AutoFeatureExtractor'
            ".from_pretrained(tiny_ks_folder), batch_size=N)` over the real videos with sound (each decoded, 3 clips "
            f"with their sound, center crop 32); 1 warm-up + {args.pipeline_rounds} timed rounds, "
            "each batch size in turn per round (interleaved), medians. Score difference: largest over the files' "
            "top-5 scores from the batch-1 run.",
            "",
            "| batch size | videos | seconds | videos/s | max score difference from batch 1 |",
            "|---|---|---|---|---|",
            *batched,
        ]
    )
    if args.no_write:
        print(precision + "\n\n" + pipeline_section)
        return
    replace_section(REPO_ROOT / "BENCHMARKS.md", SECTION.format("precision"), precision)
    replace_section(REPO_ROOT / "BENCHMARKS.md", SECTION.format("pipeline-batching"), pipeline_section)
    log(f"wrote BENCHMARKS.md ({elapsed:.0f} s)")


if __name__ == "__main__":
    main()
