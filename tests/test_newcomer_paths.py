"""The paths a newcomer takes first, run as they would run them: each trains, classifies or fails loudly with a message
that says what to do (issue 24). The documented snippets themselves run in tests/test_docs_snippets.py."""

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_CONFIG
from datasets import load_dataset
from test_processing_datasets import tiny_processor, write_clip
from test_training_recipes import TINY
from transformers import AutoProcessor, Trainer, TrainingArguments, pipeline

from avbert import AVBertConfig, AVBertForVideoClassification, AVBertProcessor, MediaDecodeError
from avbert.data.transform import AVBertDataCollator, MediaDataset, MediaTransform

pytest.importorskip("torchcodec")
needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="the ffmpeg program is not installed")


def ffmpeg_clip(path: Path, sound: bool = True, seconds: float = 1.5) -> Path:
    """A small H.264 test pattern (with a 440 Hz AAC tone when ``sound``) made by the ffmpeg program."""
    inputs = ["-f", "lavfi", "-i", f"testsrc=size=48x40:rate=30:duration={seconds}"]
    if sound:
        inputs += ["-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=16000:duration={seconds}", "-c:a", "aac"]
    command = ["ffmpeg", "-loglevel", "error", "-y", *inputs, "-c:v", "libx264", "-pix_fmt", "yuv420p", str(path)]
    subprocess.run(command, check=True)
    return path


@pytest.fixture(scope="module")
def video_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("videofolder")
    for label, (hz, brightness) in {"low": (300, 40), "high": (3000, 220)}.items():
        (root / "train" / label).mkdir(parents=True)
        for index in range(2):
            write_clip(root / "train" / label / f"{label}_{index}.mp4", hz, brightness + 5 * index)
    return root


def default_arguments(output_dir: Path) -> TrainingArguments:
    """`TrainingArguments` at their defaults but for what a two-step CPU run needs."""
    return TrainingArguments(output_dir=str(output_dir), max_steps=2, per_device_train_batch_size=2, use_cpu=True)


def tiny_model(num_labels: int = 2) -> AVBertForVideoClassification:
    return AVBertForVideoClassification(AVBertConfig(**{**TINY_CONFIG, "num_labels": num_labels}))


def test_with_transform_and_default_trainer_arguments_fail_loudly(video_folder, tmp_path):
    """The Trainer's `remove_unused_columns` drops the `video` column before the transform runs: that used to end
    the epoch at step 0 ("not a single sample") with a normal return."""
    videos = load_dataset("videofolder", data_dir=str(video_folder), split="train")
    dataset = videos.with_transform(MediaTransform(tiny_processor(), "audio-visual", train=True))
    trainer = Trainer(
        model=tiny_model(), args=default_arguments(tmp_path), train_dataset=dataset, data_collator=AVBertDataCollator()
    )
    with pytest.raises(ValueError, match=r"remove_unused_columns.*MediaDataset\(dataset, MediaTransform"):
        trainer.train()


def test_media_dataset_of_a_videofolder_trains_with_default_trainer_arguments(video_folder, tmp_path):
    videos = load_dataset("videofolder", data_dir=str(video_folder), split="train")
    model = tiny_model()
    before = {name: value.detach().clone() for name, value in model.named_parameters()}
    collator = AVBertDataCollator()
    trainer = Trainer(
        model=model,
        args=default_arguments(tmp_path),
        train_dataset=MediaDataset(videos, MediaTransform(tiny_processor(), "audio-visual", train=True)),
        data_collator=collator,
    )
    result = trainer.train()
    with pytest.raises(ValueError, match=r"one split \(e\.g\. dataset\['train'\]\), not a DatasetDict"):
        MediaDataset(load_dataset("videofolder", data_dir=str(video_folder)), trainer.train_dataset.transform)
    assert result.global_step == 2 and np.isfinite(result.training_loss) and result.training_loss > 0
    assert any(not torch.equal(before[name], value) for name, value in model.named_parameters())
    assert collator.skipped == []


@pytest.fixture(scope="module")
def sound_and_silent_videos(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("media")
    return ffmpeg_clip(folder / "sound.mp4"), ffmpeg_clip(folder / "silent.mp4", sound=False)


@needs_ffmpeg
@pytest.mark.parametrize("use_audio", [True, False])
def test_a_default_processor_saved_beside_a_model_reads_what_the_model_needs(
    use_audio, sound_and_silent_videos, tmp_path
):
    """`model.save_pretrained(d); AVBertProcessor().save_pretrained(d)`: the video-classification pipeline gives an
    audio-visual model the sound, and a visual-only one the frames alone (soundless videos included)."""
    sound, silent = sound_and_silent_videos
    config = AVBertConfig(
        **{**TINY, "num_mel_bins": 80, "audio_num_frames": 128, "num_clips": 10, "max_position_embeddings": 24},
        use_audio=use_audio,
    )
    AVBertForVideoClassification(config).save_pretrained(tmp_path)
    AVBertProcessor().save_pretrained(tmp_path)
    classifier = pipeline("video-classification", model=str(tmp_path))
    assert len(classifier(str(sound), top_k=2)) == 2
    # AutoProcessor of the same folder follows the model as well.
    assert ("input_features" in AutoProcessor.from_pretrained(tmp_path)(videos=str(sound))) == use_audio
    if use_audio:
        with pytest.raises(MediaDecodeError, match=r"silent\.mp4: no audio stream.*use a visual-only model"):
            classifier(str(silent))
    else:
        assert len(classifier(str(silent), top_k=2)) == 2
        inputs = classifier.video_processor(str(sound), num_frames=4, do_sample_frames=True)
        assert set(inputs) == {"pixel_values"}


@needs_ffmpeg
def test_audio_classification_of_video_files_and_of_a_soundless_one(sound_and_silent_videos, tmp_path):
    """docs/processing.md, System requirement: the pipeline reads the sound of a video file; a file without sound is
    named by `read_audio` ("no audio stream"), and a waveform goes in as {"raw", "sampling_rate"}."""
    from avbert import AVBertFeatureExtractor, AVBertForAudioClassification
    from avbert.media_decoding import read_audio

    sound, silent = sound_and_silent_videos
    AVBertForAudioClassification(AVBertConfig(**TINY)).save_pretrained(tmp_path)
    AVBertFeatureExtractor(feature_size=16, num_time_frames=16, num_clips=3, clip_samples=44100).save_pretrained(
        tmp_path
    )
    classifier = pipeline("audio-classification", model=str(tmp_path))
    from_file = classifier(str(sound), top_k=1)
    waveform, rate = read_audio(sound)
    from_waveform = classifier({"raw": waveform.mean(0), "sampling_rate": rate}, top_k=1)
    labels = set(classifier.model.config.id2label.values())
    assert {from_file[0]["label"], from_waveform[0]["label"]} <= labels
    with pytest.raises(MediaDecodeError, match=r"silent\.mp4: no audio stream"):
        read_audio(silent)
