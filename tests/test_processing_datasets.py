"""`datasets` video values (torchcodec decoders, {"bytes", "path"} dicts) through the processor, MediaTransform and the
Trainer: load_dataset("videofolder", ...) -> processor -> Trainer, end to end."""

from pathlib import Path

import av
import numpy as np
import pytest
import torch
from conftest import TINY_CONFIG
from datasets import Video, load_dataset
from transformers import Trainer, TrainingArguments

from avbert import (
    AVBertConfig,
    AVBertFeatureExtractor,
    AVBertForVideoClassification,
    AVBertProcessor,
    AVBertVideoProcessor,
    MediaDecodeError,
)
from avbert.data.transform import AVBertDataCollator, MediaTransform

pytest.importorskip("torchcodec")


def write_clip(path: Path, hz: float, brightness: int, seconds: float = 1.5) -> None:
    """A small H.264 + AAC file: flat frames of one brightness and a tone."""
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=30)
        video.width, video.height, video.pix_fmt = 32, 24, "yuv420p"
        audio = container.add_stream("aac", rate=44100, layout="mono")
        for _ in range(int(30 * seconds)):
            image = np.full((24, 32, 3), brightness, np.uint8)
            container.mux(video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(video.encode())
        times = np.arange(int(44100 * seconds)) / 44100
        frame = av.AudioFrame.from_ndarray(
            (0.3 * np.sin(2 * np.pi * hz * times)).astype(np.float32)[None], format="flt", layout="mono"
        )
        frame.sample_rate, frame.pts = 44100, 0
        container.mux(audio.encode(frame))
        container.mux(audio.encode())


@pytest.fixture(scope="module")
def video_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("videofolder")
    for label, (hz, brightness) in {"low": (300, 40), "high": (3000, 220)}.items():
        (root / "train" / label).mkdir(parents=True)
        for index in range(3):
            write_clip(root / "train" / label / f"{label}_{index}.mp4", hz, brightness + 5 * index)
    return root


def tiny_processor() -> AVBertProcessor:
    return AVBertProcessor(
        feature_extractor=AVBertFeatureExtractor(
            num_clips=3, feature_size=16, num_time_frames=16, clip_samples=int(44100 * 4 * 2 / 30)
        ),
        video_processor=AVBertVideoProcessor(
            num_clips=3,
            num_frames=4,
            size={"shortest_edge": 16},
            crop_size={"height": 16, "width": 16},
            train_jitter_scales=(16, 20),
            train_crop_size=16,
        ),
    )


def test_processor_takes_datasets_video_values_as_it_takes_paths(video_folder):
    dataset = load_dataset("videofolder", data_dir=str(video_folder), split="train")
    processor = tiny_processor()
    row = dataset[0]
    decoder = row["video"]
    assert type(decoder).__module__.startswith("torchcodec")
    path = decoder._hf_encoded["path"]
    expected = processor(videos=path, return_tensors="pt")
    undecoded = dataset.cast_column("video", Video(decode=False))[0]["video"]
    assert set(undecoded) == {"bytes", "path"}
    with open(path, "rb") as handle:
        as_bytes = {"bytes": handle.read(), "path": path}
    for value in (decoder, undecoded, as_bytes):
        out = processor(videos=value, return_tensors="pt")
        for key in ("pixel_values", "input_features"):
            torch.testing.assert_close(out[key], expected[key], rtol=0, atol=0)
    with pytest.raises(MediaDecodeError, match=r"broken\.mp4"):
        processor(videos={"bytes": b"not a video", "path": "broken.mp4"})


def test_videofolder_to_trainer_end_to_end(video_folder, tmp_path):
    dataset = load_dataset("videofolder", data_dir=str(video_folder), split="train")
    names = dataset.features["label"].names
    dataset = dataset.with_transform(MediaTransform(tiny_processor(), "audio-visual", train=True))
    collator = AVBertDataCollator()
    batch = collator([dataset[0], dataset[1]])
    assert batch["pixel_values"].shape == (2, 3, 3, 4, 16, 16) and batch["input_features"].shape == (2, 3, 1, 16, 16)

    config = AVBertConfig(**{**TINY_CONFIG, "num_labels": len(names)})
    model = AVBertForVideoClassification(config)
    args = TrainingArguments(
        output_dir=str(tmp_path / "run"),
        per_device_train_batch_size=2,
        max_steps=3,
        learning_rate=1e-3,
        report_to=[],
        save_strategy="no",
        remove_unused_columns=False,
        dataloader_num_workers=0,
        use_cpu=True,
    )
    before = {name: value.detach().clone() for name, value in model.named_parameters()}
    result = Trainer(model=model, args=args, train_dataset=dataset, data_collator=collator).train()
    assert np.isfinite(result.training_loss) and result.global_step == 3
    assert any(not torch.equal(before[name], value) for name, value in model.named_parameters())
    assert collator.skipped == []
