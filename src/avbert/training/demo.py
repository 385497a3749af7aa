"""
The AVBERT demo (`avbert-demo`, `make demo`): needs no data and no internet, and takes a few minutes on 2 CPU cores.

1. Writes a small synthetic audio-visual dataset of real encoded media files (`synthetic.py`): a red square or a blue
   circle moving over noise, with a 440 Hz or a 1760 Hz tone, so two classes differ only in the picture and two only
   in the sound; a model must use both modalities to beat 50%.
2. Fine-tunes a small AVBERT (both CNNs, the shared factorized transformer, both heads) on it with the `Trainer`
   (`AVBertTrainer`: Adam eps 1e-6, the original's cosine schedule), decoding lazily in DataLoader workers.
3. Evaluates on the held-out clips: the Trainer's `eval_results.json` (`eval_accuracy`), then the original's
   multi-view protocol (clips x 3 spatial crops) with a confusion matrix.
4. Saves model and processor, reloads them through the Auto classes, and classifies a held-out clip with
   `pipeline("video-classification")`, which reads its frames and its sound track.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from .recipes import Recipe, training_arguments

if TYPE_CHECKING:  # the model, processing, data and `Trainer` modules take seconds to import: not for `--help`
    from ..configuration_avbert import AVBertConfig
    from ..processing_avbert import AVBertProcessor

NUM_CLIPS = 4
NUM_FRAMES = 8

# From scratch, so the backbone learns as fast as the heads; otherwise the Kinetics-Sounds recipe's optimizer.
DEMO_RECIPE = Recipe(
    name="demo",
    modality="audio-visual",
    protocol="finetune",
    base_lr=1e-3,
    finetune_lr=1e-3,
    weight_decay=5e-6,
    finetune_weight_decay=5e-6,
    num_epochs=8,
    train_batch_size=8,
    eval_batch_size=8,
    lr_policy="cosine",
    classifier_dropout=0.1,
    num_clips=NUM_CLIPS,
)


def demo_processor() -> AVBertProcessor:
    """The original pipeline at a smaller scale: 4 clips of 8 frames (every 2nd at 30 fps), 64 px short side."""
    from ..feature_extraction_avbert import AVBertFeatureExtractor
    from ..processing_avbert import AVBertProcessor
    from ..video_processing_avbert import AVBertVideoProcessor

    video_processor = AVBertVideoProcessor(
        num_clips=NUM_CLIPS,
        num_frames=NUM_FRAMES,
        size={"shortest_edge": 64},
        crop_size={"height": 64, "width": 64},
        train_jitter_scales=(64, 80),
        train_crop_size=56,
        load_audio_in_video=True,
    )
    feature_extractor = AVBertFeatureExtractor(num_clips=NUM_CLIPS, clip_samples=int(44100 * NUM_FRAMES * 2 / 30))
    return AVBertProcessor(feature_extractor=feature_extractor, video_processor=video_processor)


def demo_config(class_names: list[str]) -> AVBertConfig:
    """A small AVBERT: one block per CNN stage at width 8, a 64-wide transformer (0.37M parameters in all)."""
    from ..configuration_avbert import AVBertConfig

    return AVBertConfig(
        visual_base_width=8,
        visual_depths=(1, 1, 1, 1),
        audio_base_width=8,
        audio_depths=(1, 1, 1, 1),
        hidden_size=64,
        num_attention_heads=4,
        intermediate_size=128,
        num_hidden_layers=2,
        orthogonal_size=16,
        num_clips=NUM_CLIPS,
        num_frames=NUM_FRAMES,
        max_position_embeddings=2 * (NUM_CLIPS + 1),
        classifier_dropout=DEMO_RECIPE.classifier_dropout,
        id2label=dict(enumerate(class_names)),
        label2id={name: index for index, name in enumerate(class_names)},
    )


def run_demo(
    output_dir: Path, videos_per_class: int = 12, epochs: int = 8, seed: int = 0, multi_view: bool = True
) -> dict[str, float]:
    """Run the whole demo; returns the held-out metrics."""
    import torch
    from transformers import AutoModelForVideoClassification, pipeline, set_seed

    from ..data.folders import load_media_dataset
    from ..data.synthetic import make_synthetic_av_dataset
    from ..data.transform import AVBertDataCollator, MediaTransform
    from ..modeling_avbert import AVBertForVideoClassification
    from .callbacks import TrainingCurveCallback
    from .evaluate import evaluate_model, write_outputs
    from .train import top_k_metrics
    from .trainers import AVBertTrainer

    set_seed(seed)
    data_dir = make_synthetic_av_dataset(
        output_dir / "data", num_classes=4, videos_per_class=videos_per_class, seed=seed
    )
    train_set = load_media_dataset("folder", data_dir, "train")
    test_set = load_media_dataset("folder", data_dir, "test")
    class_names = train_set.features["label"].names
    print(f"Synthetic dataset: {len(train_set)} training and {len(test_set)} held-out videos of {class_names}")

    processor = demo_processor()
    model = AVBertForVideoClassification(demo_config(class_names))
    print(f"Model: {sum(p.numel() for p in model.parameters()):,} parameters")
    model_dir = output_dir / "model"
    args = training_arguments(
        DEMO_RECIPE,
        model_dir,
        num_train_epochs=float(epochs),
        save_strategy="no",
        logging_steps=5,
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=2,
        seed=seed,
    )
    trainer = AVBertTrainer(
        model=model,
        args=args,
        recipe=DEMO_RECIPE,
        # uint8 frames from the workers, normalized by the trainer on the model's device
        video_processor=processor.video_processor,
        train_dataset=train_set.with_transform(
            MediaTransform(processor, "audio-visual", train=True, defer_normalization=True)
        ),
        eval_dataset=test_set.with_transform(
            MediaTransform(processor, "audio-visual", train=False, defer_normalization=True)
        ),
        data_collator=AVBertDataCollator(),
        compute_metrics=top_k_metrics(),
        callbacks=[TrainingCurveCallback()],
    )
    trainer.train()
    metrics = trainer.evaluate()
    trainer.save_metrics("eval", metrics)  # eval_results.json, with eval_accuracy
    trainer.save_model(model_dir)
    processor.save_pretrained(model_dir)
    print(f"Held-out accuracy (center crop): {metrics['eval_accuracy']:.1%}")

    reloaded = AutoModelForVideoClassification.from_pretrained(model_dir).eval()
    if multi_view:
        result = evaluate_model(reloaded, processor, test_set, modality="audio-visual")
        write_outputs(result, model_dir / "multi_view_eval")
        metrics["multi_view_top1_accuracy"] = result["top1_accuracy"]
        print(f"Held-out accuracy ({NUM_CLIPS} clips x 3 crops): {result['top1_accuracy']:.1%}")

    clip = test_set[0]
    prediction = pipeline("video-classification", model=str(model_dir))(clip["path"], top_k=1)[0]
    truth = class_names[clip["label"]]
    print(f"pipeline('video-classification') on {Path(clip['path']).name}: {prediction['label']} ({truth} expected)")
    (output_dir / "demo_summary.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="avbert-demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=Path("outputs") / "demo",
        help="where the dataset, checkpoints, model and metrics go (default: %(default)s, under the current folder)",
    )
    parser.add_argument(
        "--videos-per-class",
        type=int,
        default=12,
        help="synthetic videos written per class, of 4 classes; a quarter of them held out (default: %(default)s)",
    )
    parser.add_argument("--epochs", type=int, default=8, help="fine-tuning epochs (default: %(default)s)")
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the synthetic data, the model and training (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    print(f"avbert-demo: writing into {args.output_dir.absolute()}")
    run_demo(args.output_dir, args.videos_per_class, args.epochs, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
