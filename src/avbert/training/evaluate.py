"""Multi-view evaluation of a fine-tuned AVBERT classifier: ``avbert-evaluate`` and `evaluate_model`.

Why not ``Trainer.evaluate``: the original reports test accuracy on an ensemble of views per video (spec 6.4): 10
temporal clips x 3 spatial crops for videos, 10 windows for ESC-50 sounds, with the softmax scores of all views summed.
The Trainer sees one row per item and would need the 3 crops as separate items regrouped afterwards. Here each video is
decoded once into its 3 crop rows (``all_views=True``), each row holding all ``num_clips`` clips; the model already
averages its clips (and, with a transformer, its two heads) into ``logits = log(mean softmax)``, so averaging
``softmax(logits)`` over the 3 rows gives the mean over all 30 (clip, crop) views, i.e. the original's summed score
divided by a constant (same ranking, same top-k). Audio files give one row of ``num_clips`` windows.

Unreadable files are never dropped silently: each is logged with its reason and listed in ``metrics.json``.

Outputs (``--output-dir``): ``metrics.json`` (top-1 / top-5 through the local ``top_k_accuracy`` evaluate module,
per-class accuracy, counts, skipped files), ``predictions.csv`` (one row per evaluated file) and
``confusion_matrix.png``.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

import avbert  # noqa: F401  (registers the AVBERT classes with the Auto classes)

from ..cli import UsageError
from ..data.datasets_source import DATASET_HELP, Columns, as_splits, load_source, split_rows, train_eval_rows
from .cli import exit_status
from .heap import enable_freed_memory_reuse
from .recipes import RECIPES

if TYPE_CHECKING:  # `evaluate`, `datasets` and the processors take seconds to import: not for `--help`
    import evaluate

logger = logging.getLogger(__name__)

__all__ = [
    "EvaluationResult",
    "evaluate_model",
    "infer_modality",
    "load_model_and_processor",
    "load_top_k_metric",
    "main",
    "run",
    "write_outputs",
]

METRIC_PATH = Path(__file__).parent / "metrics" / "top_k_accuracy"
SPATIAL_VIEWS = 3  # left/center/right (or top/center/bottom) crops, as in the original's test protocol
MODALITIES = ("audio-visual", "visual", "audio")
# Label names on the confusion-matrix axes only up to this many classes; beyond it they overlap into a grey smear.
MAX_LABELLED_CLASSES = 50

EvaluationResult = dict[str, Any]


def load_top_k_metric() -> evaluate.EvaluationModule:
    """The package's own top-k module: ``evaluate.load("accuracy")`` would need the Hub and has no top-k."""
    import evaluate

    return evaluate.load(str(METRIC_PATH))


def infer_modality(model: torch.nn.Module) -> str:
    """The inputs a model reads, from its class and config flags (so `evaluate_model` needs no recipe)."""
    config = model.config
    if type(model).__name__ == "AVBertForAudioClassification" or not getattr(config, "use_visual", True):
        return "audio"
    return "audio-visual" if getattr(config, "use_audio", True) else "visual"


def load_model_and_processor(
    model_dir: str | Path, modality: str, dtype: torch.dtype | None = None
) -> tuple[torch.nn.Module, Any]:
    """Model and matching processor from one folder: ESC-50 folders hold a feature extractor, the others a processor.

    ``dtype``: the weights' dtype (``torch.bfloat16`` for ``--bf16``); the model casts the processors' float32
    outputs to it.
    """
    from transformers import AutoModelForAudioClassification, AutoModelForVideoClassification

    from avbert.feature_extraction_avbert import AVBertFeatureExtractor
    from avbert.processing_avbert import AVBertProcessor

    if modality == "audio":
        return (
            AutoModelForAudioClassification.from_pretrained(model_dir, dtype=dtype),
            AVBertFeatureExtractor.from_pretrained(model_dir),
        )
    model = AutoModelForVideoClassification.from_pretrained(model_dir, dtype=dtype)
    return model, AVBertProcessor.from_pretrained(model_dir)


# ---------------------------------------------------------------------------------------------------------------------
# Decoding


def decode_views(processor: Any, path: Any, modality: str) -> dict[str, torch.Tensor]:
    """All test views of one file (a path or a `datasets` value), with a leading view axis: (3, clips, ...) for
    videos, (1, clips, ...) for audio."""
    if modality == "audio":
        from avbert.media_decoding import as_media_source, read_audio

        waveform, rate = read_audio(as_media_source(path))
        return dict(processor(waveform, sampling_rate=rate, return_tensors="pt", apply_masking=False))
    inputs = processor(videos=path, return_tensors="pt", all_views=True, load_audio_in_video=modality == "audio-visual")
    keys = ("pixel_values", "input_features") if modality == "audio-visual" else ("pixel_values",)
    return {key: inputs[key] for key in keys}


class _ViewsDataset(TorchDataset):
    """Decodes one file per item (in DataLoader workers); a failure becomes an ``error`` string, not an exception.
    ``media`` are paths or `datasets` values (``{"bytes", "path"}`` dicts), reported by their path."""

    def __init__(self, media: Sequence[Any], labels: Sequence[int], processor: Any, modality: str) -> None:
        self.media, self.labels, self.processor, self.modality = list(media), list(labels), processor, modality

    def __len__(self) -> int:
        return len(self.media)

    def __getitem__(self, index: int) -> dict[str, Any]:
        from ..data.transform import _media_name

        path = _media_name(self.media[index])
        item: dict[str, Any] = {"path": path, "label": int(self.labels[index]), "error": None}
        try:
            item["inputs"] = decode_views(self.processor, self.media[index], self.modality)
        except (ValueError, OSError) as exc:  # MediaDecodeError is a ValueError
            item["error"] = str(exc)
        return item


def _as_list(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return batch


# ---------------------------------------------------------------------------------------------------------------------
# Scoring


@torch.inference_mode()
def view_averaged_scores(model: torch.nn.Module, items: list[dict[str, torch.Tensor]]) -> torch.Tensor:
    """(len(items), C) class probabilities: softmax of each view row's logits, averaged over the rows of an item.

    All rows of all items go through the model in one batch; every item of a call has the same number of views.
    """
    views = next(iter(items[0].values())).shape[0]
    device = next(model.parameters()).device
    inputs = {key: torch.cat([item[key] for item in items]).to(device) for key in items[0]}
    probabilities = model(**inputs).logits.float().softmax(dim=-1)
    return probabilities.reshape(len(items), views, -1).mean(dim=1).cpu()


def evenly_spaced_subset(num_items: int, max_samples: int | None) -> list[int]:
    """Indices of at most ``max_samples`` items spread over the whole list: the first N of a sorted folder listing
    would all be one class."""
    if max_samples is None or max_samples >= num_items:
        return list(range(num_items))
    return sorted({round(value) for value in np.linspace(0, num_items - 1, max_samples)})


def _class_names(dataset: Any, model: torch.nn.Module) -> list[str]:
    """Dataset ClassLabel names when present (the labels refer to them), else the model's id2label."""
    feature = getattr(dataset, "features", {}).get("label") if hasattr(dataset, "features") else None
    if feature is not None and hasattr(feature, "names"):
        return list(feature.names)
    return [str(model.config.id2label[index]) for index in range(model.config.num_labels)]


def _media_and_labels(dataset: Any, indices: list[int]) -> tuple[list[Any], list[int]]:
    """Columns of the selected rows; only ``path`` (a path or a `datasets` media value) and ``label`` are read (a
    list of dicts works as well)."""
    rows = [dataset[index] for index in indices]
    media = [row["path"] if isinstance(row["path"], dict) else str(row["path"]) for row in rows]
    return media, [int(row["label"]) for row in rows]


def num_views(processor: Any, modality: str) -> dict[str, int]:
    """Temporal and spatial views per file, recorded in metrics.json so results say which protocol they follow."""
    clips = processor.num_clips if modality == "audio" else processor.video_processor.num_clips
    return {"clips_per_view": int(clips), "spatial_views": 1 if modality == "audio" else SPATIAL_VIEWS}


def per_class_accuracy(labels: np.ndarray, predictions: np.ndarray, names: list[str]) -> dict[str, float | None]:
    """Top-1 accuracy of each class; ``None`` for a class with no evaluated file (0 would claim it was all wrong)."""
    result: dict[str, float | None] = {}
    for index, name in enumerate(names):
        mask = labels == index
        result[name] = float((predictions[mask] == index).mean()) if mask.any() else None
    return result


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts (true class, predicted class)."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (labels, predictions), 1)
    return matrix


def _summary(
    scores: np.ndarray, labels: np.ndarray, names: list[str], k: Iterable[int], skipped: list[dict[str, str]]
) -> dict[str, Any]:
    """The metrics.json content (without the per-file arrays)."""
    predictions = scores.argmax(axis=1)
    metrics = load_top_k_metric().compute(predictions=scores.tolist(), references=labels.tolist(), k=tuple(k))
    return {
        **metrics,
        "num_videos": len(labels),
        "num_skipped": len(skipped),
        "skipped_files": skipped,
        "per_class_accuracy": per_class_accuracy(labels, predictions, names),
        "per_class_num_videos": {name: int((labels == index).sum()) for index, name in enumerate(names)},
    }


def evaluate_model(
    model: torch.nn.Module,
    processor: Any,
    dataset: Any,
    modality: str | None = None,
    batch_size: int = 2,
    max_samples: int | None = None,
    num_workers: int = 0,
    device: str | torch.device | None = None,
    k: Iterable[int] = (1, 5),
) -> EvaluationResult:
    """Multi-view accuracy of ``model`` on ``dataset`` (rows with ``path`` and ``label``, e.g. `load_media_dataset`;
    ``path`` may hold `datasets` media values, as the rows of `avbert.data.datasets_source.media_rows` do).

    Args:
        processor: an ``AVBertProcessor`` (video models) or ``AVBertFeatureExtractor`` (audio models); its
            ``num_clips`` is the number of temporal views.
        modality: "audio-visual", "visual" or "audio"; inferred from the model when ``None``.
        batch_size: files per forward pass (a video contributes 3 rows of ``num_clips`` clips each).
        max_samples: evaluate at most this many files, evenly spread over the dataset.
        num_workers: DataLoader worker processes for decoding.

    Returns:
        ``top{k}_accuracy`` (fractions), ``num_videos``, ``num_skipped``, ``skipped_files`` (``path``, ``reason``),
        ``per_class_accuracy``, ``per_class_num_videos``, ``class_names``, and per evaluated file ``paths``,
        ``labels`` (N,) and ``scores`` (N, C) (view-averaged probabilities, numpy).
    """
    modality = modality or infer_modality(model)
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES}, not {modality!r}")
    names = _class_names(dataset, model)
    if len(names) != model.config.num_labels:
        raise ValueError(f"the dataset has {len(names)} classes but the model predicts {model.config.num_labels}")
    indices = evenly_spaced_subset(len(dataset), max_samples)
    media, labels = _media_and_labels(dataset, indices)
    loader = DataLoader(
        _ViewsDataset(media, labels, processor, modality),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=_as_list,
    )
    if device is not None:
        model.to(device)
    model.eval()
    kept_paths, kept_labels, scores, skipped = [], [], [], []
    for batch_index, batch in enumerate(loader):
        for item in batch:
            if item["error"] is not None:
                logger.warning("skipping unreadable file %s: %s", item["path"], item["error"])
                skipped.append({"path": item["path"], "reason": item["error"]})
        good = [item for item in batch if item["error"] is None]
        if good:
            scores.append(view_averaged_scores(model, [item["inputs"] for item in good]).numpy())
            kept_paths += [item["path"] for item in good]
            kept_labels += [item["label"] for item in good]
        logger.info("evaluated %d / %d batches", batch_index + 1, len(loader))
    if not kept_paths:
        raise RuntimeError(f"no file could be decoded; skipped: {[entry['path'] for entry in skipped]}")
    all_scores, all_labels = np.concatenate(scores), np.asarray(kept_labels, dtype=np.int64)
    return {
        **_summary(all_scores, all_labels, names, k, skipped),
        "class_names": names,
        "paths": kept_paths,
        "labels": all_labels,
        "scores": all_scores,
    }


# ---------------------------------------------------------------------------------------------------------------------
# Outputs


def write_predictions_csv(result: EvaluationResult, path: Path, top: int = 5) -> Path:
    """One row per evaluated file: true and predicted class, the predicted probability and the top classes."""
    names = result["class_names"]
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "label_name", "prediction", "prediction_name", "score", "correct", "top5"])
        for file, label, row in zip(result["paths"], result["labels"], result["scores"], strict=True):
            ranking = np.argsort(-row, kind="stable")[:top]
            best = int(ranking[0])
            top_names = "|".join(names[int(index)] for index in ranking)
            writer.writerow(
                [file, int(label), names[label], best, names[best], f"{row[best]:.6f}", best == label, top_names]
            )
    return path


def plot_confusion_matrix(matrix: np.ndarray, names: list[str], path: Path) -> Path:
    """Row-normalized confusion matrix as a PNG (``Figure`` directly: no pyplot, no global backend state)."""
    from matplotlib.figure import Figure

    num_classes = len(names)
    side = min(4 + 0.3 * num_classes, 30)
    figure = Figure(figsize=(side, side), layout="constrained")
    axes = figure.add_subplot()
    totals = matrix.sum(axis=1, keepdims=True)
    normalized = np.divide(matrix, totals, out=np.zeros(matrix.shape, dtype=float), where=totals > 0)
    image = axes.imshow(normalized, cmap="Blues", vmin=0.0, vmax=1.0)
    figure.colorbar(image, ax=axes, fraction=0.046, label="fraction of the true class")
    if num_classes <= MAX_LABELLED_CLASSES:
        axes.set_xticks(range(num_classes), names, rotation=90)
        axes.set_yticks(range(num_classes), names)
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    axes.set_title(f"Confusion matrix ({int(matrix.sum())} files)")
    figure.savefig(path, dpi=100)
    return path


def write_outputs(
    result: EvaluationResult, output_dir: str | Path, extra: dict[str, Any] | None = None
) -> dict[str, Path]:
    """``metrics.json`` (scalars, skipped files, per-class accuracy, plus ``extra``), ``predictions.csv``,
    ``confusion_matrix.png``."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    arrays = {"paths", "labels", "scores"}
    metrics = {**(extra or {}), **{key: value for key, value in result.items() if key not in arrays}}
    metrics_path = output_dir / "metrics.json"
    metrics_path.write_text(json.dumps(metrics, indent=2) + "\n")
    matrix = confusion_matrix(result["labels"], result["scores"].argmax(axis=1), len(result["class_names"]))
    return {
        "metrics": metrics_path,
        "predictions": write_predictions_csv(result, output_dir / "predictions.csv"),
        "confusion_matrix": plot_confusion_matrix(matrix, result["class_names"], output_dir / "confusion_matrix.png"),
    }


# ---------------------------------------------------------------------------------------------------------------------
# Command line


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="avbert-evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, type=Path, help="folder with the model and its processor")
    parser.add_argument("--data-dir", "--data_dir", type=Path, help="dataset root (with --dataset-name: its folder)")
    parser.add_argument("--recipe", required=True, choices=sorted(RECIPES))
    parser.add_argument("--layout", help="dataset layout (default: the recipe's name; see load_media_dataset)")
    for flag, default in (
        ("dataset_name", None),
        ("dataset_config_name", None),
        ("video_column_name", "video"),
        ("audio_column_name", "audio"),
        ("label_column_name", "label"),
    ):
        help_text = DATASET_HELP[flag] + (f" (default: {default})" if default else "")
        parser.add_argument(f"--{flag.replace('_', '-')}", f"--{flag}", default=default, help=help_text)
    parser.add_argument(
        "--split",
        "--eval-split-name",
        "--eval_split_name",
        default="test",
        help="split to evaluate (a `datasets` dataset with only a train split: the part avbert-train held out)",
    )
    parser.add_argument("--split-id", type=int, default=1, help="UCF101 split list / ESC-50 test fold")
    parser.add_argument("--output-dir", type=Path, help="default: <model>/eval-<split>")
    parser.add_argument("--batch-size", type=int, default=2, help="files per forward pass (a video gives 3 rows)")
    parser.add_argument("--max-samples", type=int, help="evaluate at most this many files, spread over the split")
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader processes for decoding")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--bf16",
        action="store_true",
        help="load the weights in bfloat16 (faster on GPUs and on CPUs with AMX; docs/performance.md)",
    )
    parser.add_argument(
        "--no-reuse-freed-memory",
        "--no_reuse_freed_memory",
        dest="reuse_freed_memory",
        action="store_false",
        help="leave malloc as it is (by default, on the CPU, glibc keeps the memory a forward frees for the next one; "
        "docs/performance.md, Freed memory reused)",
    )
    return parser.parse_args(argv)


def load_split(args: argparse.Namespace, modality: str, dataset: Any = None) -> Any:
    """The rows to evaluate: ``--split`` of ``dataset`` (loaded already) or ``--dataset-name``, else of the
    ``--data-dir`` layout."""
    from ..data.folders import load_media_dataset

    if dataset is None and args.dataset_name is not None:
        dataset = load_source(args.dataset_name, args.dataset_config_name, args.data_dir and str(args.data_dir))
    if dataset is None:
        return load_media_dataset(args.layout or args.recipe, args.data_dir, args.split, args.split_id)
    if args.layout is not None:
        raise UsageError("--layout is for --data-dir folders; a `datasets` dataset has its own columns and splits")
    splits, columns = as_splits(dataset, args.split), Columns.of(args, modality)
    if args.split not in splits and list(splits) == ["train"]:
        return train_eval_rows(splits, "train", args.split, columns)[1]  # what avbert-train held out
    return split_rows(splits, args.split, "split", columns)


def run(argv: Sequence[str] | None = None, dataset: Any = None) -> dict[str, Any]:
    """Evaluate a saved model on one split and write the outputs; returns the metrics dict.

    ``dataset``: an already loaded ``datasets.DatasetDict`` (its ``--split``) or ``Dataset`` (evaluated whole)
    instead of ``--data-dir`` / ``--dataset-name``; the column flags apply to it.
    """
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    modality = RECIPES[args.recipe].modality
    if not args.model.is_dir():
        raise UsageError(f"--model {args.model}: no such folder (it takes a save_pretrained folder)")
    if dataset is None and args.dataset_name is None:
        if args.data_dir is None:
            raise UsageError("give --data-dir (a dataset folder) or --dataset-name (a `datasets` dataset)")
        if not args.data_dir.exists():
            raise UsageError(f"--data-dir {args.data_dir}: no such folder or file")
    rows = load_split(args, modality, dataset)  # a wrong split or column is said before the model loads
    model, processor = load_model_and_processor(args.model, modality, torch.bfloat16 if args.bf16 else None)
    if args.reuse_freed_memory and torch.device(args.device).type == "cpu":
        enable_freed_memory_reuse()
    result = evaluate_model(
        model,
        processor,
        rows,
        modality=modality,
        batch_size=args.batch_size,
        max_samples=args.max_samples,
        num_workers=args.num_workers,
        device=args.device,
    )
    extra = {
        "model": str(args.model),
        "recipe": args.recipe,
        "data_dir": None if args.data_dir is None else str(args.data_dir),
        **({"dataset_name": args.dataset_name} if args.dataset_name else {"layout": args.layout or args.recipe}),
        "split": args.split,
        "split_id": args.split_id,
        "dtype": str(model.dtype).removeprefix("torch."),
        **num_views(processor, modality),
    }
    files = write_outputs(result, args.output_dir or args.model / f"eval-{args.split}", extra)
    summary = ", ".join(f"{key} {result[key]:.4f}" for key in result if key.startswith("top"))
    print(
        f"{summary} on {result['num_videos']} files ({result['num_skipped']} skipped); wrote {files['metrics'].parent}"
    )
    return {key: value for key, value in result.items() if key not in {"paths", "labels", "scores"}}


def main(argv: Sequence[str] | None = None) -> int:
    """``avbert-evaluate``: 0 when the outputs are written, 1 with a one-line error for a bad model, folder or data."""
    return exit_status("avbert-evaluate", lambda: run(argv))


if __name__ == "__main__":
    sys.exit(main())
