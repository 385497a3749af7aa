"""Training-geometry shards: `avbert-prepare shards --transcode RECIPE` re-encodes every file once (short side = the
recipe's largest train scale, the frame rate its clip stride keeps, mono sound at the feature extractor's rate).

Tested as a user meets it: ffmpeg-made clips in tmp_path (and one real Kinetics video when ../shared is present), the
command run as a subprocess, the shards read back by the same reader and processor that training uses."""

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
from transformers import TrainingArguments

from avbert import AVBertFeatureExtractor, AVBertProcessor, AVBertVideoProcessor
from avbert.data.shards import ShardedVideoDataset, ShardReadError, load_manifests, shard_dataset, write_shards
from avbert.data.transcode import TranscodeSettings, check_transcode, default_processors, transcode_file
from avbert.data.transform import MediaTransform
from avbert.media_decoding import probe

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
REAL_VIDEO = REPO.parent / "shared" / "data" / "videos" / "kinetics400" / "R6llTwEh07w.mp4"  # 340x256, 30 fps


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *args], check=True)


def make_video(path: Path, frames: int = 91) -> Path:
    """320x240 at 30 fps whose brightness tells the frame's time (2 levels a frame) over a horizontal gradient, with
    a 48 kHz stereo chirp (its spectrum tells the sound's time): the clips of a transcode can only match the
    source's if they are taken at the same times. 91 frames: an odd count, so 15 fps cannot end where 30 fps does
    and the clip starts drift apart by up to one frame, the case the tolerance must cover."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ffmpeg(
        "-f", "lavfi", "-i", "color=c=gray:size=320x240:rate=30:duration=4,geq=lum='16+2*N+X/8':cb=128:cr=128",
        "-f", "lavfi", "-i", "aevalsrc='0.5*sin(2*PI*(200+600*t)*t)|0.3*sin(2*PI*(300+500*t)*t)':sample_rate=48000",
        "-frames:v", str(frames), "-t", f"{frames / 30:.4f}", "-c:v", "libx264", "-crf", "12", "-pix_fmt", "yuv420p",
        "-c:a", "aac", "-b:a", "192k", str(path),
    )  # fmt: skip
    return path


def make_unencodable_video(path: Path) -> Path:
    """An 8200x16 strip (FFV1 + PCM in Matroska): it probes and decodes (`avbert-prepare check` passes it), and its
    short side is already below 160, so the transcode keeps its width, which MPEG-4 part 2 cannot code (at most
    8191): the transcode fails inside ffmpeg."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ffmpeg(
        "-f", "lavfi", "-i", "testsrc=size=8200x16:rate=30", "-f", "lavfi", "-i", "sine=sample_rate=44100",
        "-t", "0.3", "-c:v", "ffv1", "-c:a", "pcm_s16le", str(path),
    )  # fmt: skip
    return path


def console(name: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    return subprocess.run([str(BIN / name), *args], capture_output=True, text=True, env=env, timeout=300)


def training_clip(path: Path, seed: int) -> dict[str, torch.Tensor]:
    """The Kinetics-Sounds training input of ``path`` for ``seed`` (scale, crop and flip drawn from it), uint8 frames
    as `avbert-train` sends them; no SpecAugment, whose masks come from the global RNG, not from the file."""
    processor = AVBertProcessor()  # the recipe's geometry: scales [128, 160], crop 112, stride 2 at 30 fps, 44.1 kHz
    return processor(
        videos=str(path), do_train_augmentation=True, seed=seed, defer_normalization=True, apply_masking=False
    )


def clip_differences(source: Path, transcoded: Path, seed: int) -> tuple[float, float]:
    """Mean absolute difference of the seeded clips' uint8 frames (0-255) and of their log-mels (natural log)."""
    a, b = training_clip(source, seed), training_clip(transcoded, seed)
    assert a["pixel_values"].shape == b["pixel_values"].shape and a["input_features"].shape == b["input_features"].shape
    frames = (a["pixel_values"].float() - b["pixel_values"].float()).abs().mean().item()
    return frames, (a["input_features"] - b["input_features"]).abs().mean().item()


KS_SETTINGS = TranscodeSettings.for_recipe("kinetics-sounds", "audio-visual", *default_processors("audio-visual"))


@pytest.mark.parametrize(("frames", "mel_tolerance"), [(90, 0.2), (91, 0.6)])
def test_transcode_has_the_training_geometry_and_the_source_clips(
    tmp_path: Path, frames: int, mel_tolerance: float
) -> None:
    """Tolerance, and why. Frames: a seeded clip's uint8 frames differ from the source's by at most 3 of 255 on
    average. The transcode resizes once more (320x240 -> 214x160 by ffmpeg, then the draw's nearest resize, against
    one nearest resize of the source) and the codec rounds, under 1 level on this smooth picture; the rest is time (2
    levels a source frame). Clip times: with 91 frames at 30 fps, 15 fps cannot end where the source does (46 frames
    end 1/30 s later), so clip i starts up to i/9 x 1/30 s later: every clip start is within one transcoded frame
    (1/15 s) of the source's. Log-mels (natural log, spread ~5): within 0.2 on average where the clips start at the
    same times (90 frames; what is left is ffmpeg's 48 -> 44.1 kHz resampler against torchaudio's), within 0.6 with
    the drift on this chirp, whose spectrum moves 1.2 kHz a second (real sound moves slower, see the next test)."""
    source = make_video(tmp_path / "source.mp4", frames=frames)
    transcoded = tmp_path / "transcoded.mp4"
    assert transcode_file(source, transcoded, KS_SETTINGS) is None
    info, source_info = probe(transcoded), probe(source)
    assert (info.video.height, info.video.width, info.video.fps) == (160, 214, 15.0)
    assert (info.audio.sample_rate, info.audio.channels) == (44100, 1)
    sampling = AVBertProcessor().video_processor.clip_sampling()
    starts = sampling.start_times(info.video.num_frames, info.video.fps)
    source_starts = sampling.start_times(source_info.video.num_frames, source_info.video.fps)
    assert abs(starts - source_starts).max() <= 1 / 15 + 1e-9
    for seed in (0, 1):
        pixels, log_mels = clip_differences(source, transcoded, seed)
        assert pixels <= 3.0 and log_mels <= mel_tolerance, (seed, pixels, log_mels)


@pytest.mark.skipif(not REAL_VIDEO.is_file(), reason="../shared/data/videos is not present")
def test_transcoded_real_video_gives_the_source_clips(tmp_path: Path) -> None:
    """A real Kinetics video (340x256, 30 fps, AAC). Tolerance: frames within 16 of 255 on average, under a third of
    what the same file's clip with another draw differs by (57: a different crop), so the clip shows the same
    picture; the residual is the second resize of fine detail (a 1-source-pixel shift of textured regions) and the
    up-to-one-frame drift of the clip starts. Log-mels within 0.8 (their spread is ~4): the same drift (up to 33 ms,
    two mel frames, at the last clip) on real sound; the first clip, which starts at 0 in both, within 0.15."""
    transcoded = tmp_path / "transcoded.mp4"
    assert transcode_file(REAL_VIDEO, transcoded, KS_SETTINGS) is None
    frames, log_mels = clip_differences(REAL_VIDEO, transcoded, seed=0)
    other_draw = training_clip(REAL_VIDEO, 0)["pixel_values"].float() - training_clip(REAL_VIDEO, 7)["pixel_values"]
    assert frames <= 16.0 and frames < other_draw.abs().mean().item() / 3, frames
    assert log_mels <= 0.8, log_mels
    first = (training_clip(REAL_VIDEO, 0)["input_features"] - training_clip(transcoded, 0)["input_features"])[:, 0]
    assert first.abs().mean().item() <= 0.15


def test_visual_recipe_drops_the_sound_and_audio_recipe_keeps_only_it(tmp_path: Path) -> None:
    source = make_video(tmp_path / "source.mp4", frames=30)
    visual = TranscodeSettings.for_recipe("ucf101", "visual", *default_processors("visual"))
    audio = TranscodeSettings.for_recipe("esc50", "audio", *default_processors("audio"))
    assert transcode_file(source, tmp_path / "v.mp4", visual) is None
    assert transcode_file(source, tmp_path / "a.flac", audio) is None
    assert probe(tmp_path / "v.mp4").audio is None and probe(tmp_path / "v.mp4").video.height == 160
    sound_only = probe(tmp_path / "a.flac")
    assert sound_only.video is None and (sound_only.audio.sample_rate, sound_only.audio.channels) == (44100, 1)
    assert audio.short_side is None and visual.sound_rate is None


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    """`avbert-prepare shards --transcode kinetics-sounds --num-proc 2` over two good videos, one that ffmpeg cannot
    encode and one that does not open."""
    root = tmp_path_factory.mktemp("prepared")
    make_video(root / "src" / "a" / "one.mp4", frames=45)
    make_video(root / "src" / "b" / "two.mp4", frames=60)
    make_unencodable_video(root / "src" / "a" / "strip.mkv")
    (root / "src" / "b" / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not a video" * 8)
    out = root / "shards"
    args = ("--transcode", "kinetics-sounds", "--num-proc", "2", "--shard-samples", "1")
    return out, console("avbert-prepare", "shards", str(root / "src"), str(out), *args)


def test_prepare_transcodes_in_parallel_and_lists_the_files_that_fail(prepared) -> None:
    out, completed = prepared
    assert completed.returncode == 0, completed.stderr
    assert "transcoding: 100%" in completed.stderr and "3/3" in completed.stderr  # the progress bar (3 probed good)
    assert "strip.mkv: transcode failed: ffmpeg:" in completed.stderr and "broken.mp4" in completed.stderr
    manifest = load_manifests(str(out))
    assert manifest.num_samples == 2 and manifest.class_names == ["a", "b"]
    reasons = {item["path"]: item["reason"] for item in manifest.skipped}
    assert set(reasons) == {"a/strip.mkv", "b/broken.mp4"}
    assert reasons["a/strip.mkv"].startswith("transcode failed: ffmpeg:") and "too large" in reasons["a/strip.mkv"]
    assert manifest.transcode == {**KS_SETTINGS.to_dict()}
    assert manifest.transcode["short_side"] == 160 and manifest.transcode["fps"] == 15.0
    assert manifest.transcode["ffmpeg"].startswith("ffmpeg version")
    samples = []
    for shard in manifest.shards:
        with tarfile.open(shard.url) as tar:
            members = {Path(m.name).suffix: tar.extractfile(m).read() for m in tar.getmembers()}
        samples.append(json.loads(members[".json"])["source"])
        assert probe(members[".mp4"]).video.height == 160
    assert samples == ["a/one.mp4", "b/two.mp4"]  # the sources' names, not the scratch files'
    assert not [p for p in out.iterdir() if p.name.startswith(".transcoding")]


def test_prepare_fails_when_no_file_transcodes(tmp_path: Path) -> None:
    make_unencodable_video(tmp_path / "src" / "a" / "strip.mkv")
    completed = console(
        "avbert-prepare", "shards", str(tmp_path / "src"), str(tmp_path / "out"), "--transcode", "ucf101"
    )
    assert completed.returncode == 1
    assert "error: none of the 1 files" in completed.stderr and "strip.mkv: transcode failed" in completed.stderr
    assert not (tmp_path / "out" / "manifest.json").exists()
    clash = console("avbert-prepare", "shards", "x", "y", "--transcode", "ucf101", "--recipe", "esc50")
    assert clash.returncode == 1 and "different recipes" in clash.stderr


def test_transcoded_shards_decode_for_the_recipe_they_were_made_for(prepared, tmp_path: Path) -> None:
    out, _ = prepared
    transform = MediaTransform(AVBertProcessor(), "audio-visual", train=True, defer_normalization=True)
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=1, report_to="none")
    dataset = shard_dataset(str(out), transform, args, shuffle_buffer=0)
    items = list(dataset)
    assert len(items) == 2 and [item["error"] for item in items] == [None, None]
    assert items[0]["pixel_values"].shape[-2:] == (112, 112) and items[0]["pixel_values"].dtype == torch.uint8


@pytest.mark.parametrize(
    ("processor", "modality", "field", "message"),
    [
        (AVBertProcessor(video_processor=AVBertVideoProcessor(train_jitter_scales=[128, 256])), "audio-visual",
         "short_side 160", "train_jitter_scales short side 256: frames would be upscaled"),
        (AVBertProcessor(video_processor=AVBertVideoProcessor(frame_sampling_rate=1)), "audio-visual",
         "fps 15", "the 30 fps the processor's sampling keeps"),
        (AVBertProcessor(feature_extractor=AVBertFeatureExtractor(sampling_rate=16000)), "audio-visual",
         "sound_rate 44100", "sampling_rate 16000"),
        (AVBertFeatureExtractor(), "audio", "sound_rate", ""),
    ],
)  # fmt: skip
def test_training_refuses_shards_transcoded_for_another_geometry(
    prepared, tmp_path: Path, processor, modality: str, field: str, message: str
) -> None:
    out, _ = prepared
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=1, report_to="none")
    transform = MediaTransform(processor, modality, train=True)
    if modality == "audio":  # a Kinetics-Sounds transcode has the sound esc50 reads, at its rate: it fits
        assert shard_dataset(str(out), transform, args).manifest.transcode["recipe"] == "kinetics-sounds"
        return
    with pytest.raises(ValueError, match="transcode settings") as caught:
        shard_dataset(str(out), transform, args)
    text = str(caught.value)
    assert str(out) in text and field in text and message in text and "--transcode" in text
    with pytest.raises(ValueError, match="transcode settings"):  # the dataset itself checks, however it is built
        ShardedVideoDataset(load_manifests(str(out)), transform)


def test_sound_or_picture_missing_from_the_transcode_is_refused(tmp_path: Path) -> None:
    visual = TranscodeSettings.for_recipe("ucf101", "visual", *default_processors("visual")).to_dict()
    audio = TranscodeSettings.for_recipe("esc50", "audio", *default_processors("audio")).to_dict()
    with pytest.raises(ValueError, match=r"hold no sound \(sound_rate null\)"):
        check_transcode(visual, MediaTransform(AVBertProcessor(), "audio-visual", train=True), "here/manifest.json")
    with pytest.raises(ValueError, match=r"hold no video \(short_side null\)"):
        check_transcode(audio, MediaTransform(AVBertProcessor(), "visual", train=True), "here/manifest.json")
    check_transcode(visual, MediaTransform(AVBertProcessor(), "visual", train=False), "here")  # eval: size 128 fits
    check_transcode(None, MediaTransform(AVBertProcessor(), "visual", train=True), "here")  # files as they were


def test_truncated_transcoded_shard_stops_the_reader_naming_it(prepared, tmp_path: Path) -> None:
    out, _ = prepared
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in out.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    shard = copy / "shard-000001.tar"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    dataset = ShardedVideoDataset(load_manifests(str(copy)), transform=None, shuffle_buffer=0)
    with pytest.raises(ShardReadError, match=r"shard-000001\.tar"):
        list(dataset)


def test_manifests_of_different_transcodes_are_not_mixed(prepared, tmp_path: Path) -> None:
    out, _ = prepared
    plain = tmp_path / "plain"
    write_shards([make_video(tmp_path / "x.mp4", frames=30)], [0], plain, class_names=["a", "b"])
    with pytest.raises(ValueError, match="re-encoded with different settings"):
        load_manifests([str(out), str(plain)])


def test_avbert_train_stops_on_shards_transcoded_for_another_frame_rate(prepared, tmp_path: Path) -> None:
    """The whole command: a model whose processor samples every frame at 30 fps (frame_sampling_rate 1) is refused
    the 15 fps Kinetics-Sounds transcodes before any step, with the manifest, the field and the fix (exit 1)."""
    from test_pretraining_cli import TINY
    from test_training_data import make_tiny_processor

    from avbert import AVBertConfig, AVBertForVideoClassification

    out, _ = prepared
    model_dir = tmp_path / "model"
    AVBertForVideoClassification(AVBertConfig(**TINY, num_clips=2, num_labels=2)).save_pretrained(model_dir)
    processor = make_tiny_processor()
    processor.video_processor.frame_sampling_rate = 1
    processor.save_pretrained(model_dir)
    completed = console(
        "avbert-train",
        *("--recipe", "kinetics-sounds", "--model", str(model_dir), "--output_dir", str(tmp_path / "run")),
        *("--train_shards", str(out), "--eval_shards", str(out), "--max_steps", "1", "--use_cpu"),
        *("--report_to", "none", "--dataloader_num_workers", "0"),
    )
    assert completed.returncode == 1, completed.stderr[-2000:]
    error = completed.stderr.strip().splitlines()[-1]
    assert error.startswith("avbert-train: error:") and str(out) in error
    assert "fps 15 is below the 30 fps" in error and "--transcode" in error
    assert not (tmp_path / "run" / "checkpoint-1").exists()
