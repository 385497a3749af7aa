"""AVBertVideoProcessor: exact parity with the original pipeline (../shared/fixtures), every shared video, odd inputs,
training augmentation, save/load, the Auto class and the video-classification pipeline's call."""

import hashlib
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from test_media_decoding import write_video
from transformers import AutoVideoProcessor

import avbert  # noqa: F401  (registers the Auto classes)
from avbert import MediaDecodeError
from avbert.media_decoding import read_frames, read_video
from avbert.video_processing_avbert import AVBertVideoProcessor, nearest_source_indices, short_side_size

SHARED = Path(os.environ.get("AVBERT_SHARED_DIR", Path(__file__).resolve().parents[2] / "shared"))
VIDEOS = SHARED / "data" / "videos"
PREPROCESSING = SHARED / "fixtures" / "original" / "preprocessing"
KS_VIDEO = VIDEOS / "kinetics400" / "R6llTwEh07w.mp4"

needs_fixtures = pytest.mark.skipif(
    not (PREPROCESSING.is_dir() and KS_VIDEO.is_file()), reason="shared fixtures or videos not available"
)
needs_videos = pytest.mark.skipif(not VIDEOS.is_dir(), reason="shared videos not available (../shared/data/videos)")

TINY = {"num_frames": 8, "size": {"shortest_edge": 32}, "crop_size": 32}  # the fixture's tiny data settings


@pytest.fixture(scope="module")
def fixture_tensors():
    from safetensors.torch import load_file

    return load_file(PREPROCESSING / "preprocessing.safetensors")


@pytest.fixture(scope="module")
def fixture_meta():
    return json.loads((PREPROCESSING / "preprocessing_meta.json").read_text())["ks"]


@pytest.fixture(scope="module")
def ks_pixel_values():
    if not KS_VIDEO.is_file():
        pytest.skip("shared videos not available")
    return AVBertVideoProcessor()(KS_VIDEO)["pixel_values"]


def sha256(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.contiguous().numpy().tobytes()).hexdigest()


# ---------------------------------------------------------------------------------------------------------------------
# Parity with the original pipeline


@needs_fixtures
@pytest.mark.parametrize("setting", ["tiny", "full"])
def test_frame_indices_and_resize_indices_are_exact(fixture_tensors, setting):
    processor = AVBertVideoProcessor(**(TINY if setting == "tiny" else {}))
    indices = processor.clip_sampling().frame_indices(303, 30.0)
    assert np.array_equal(indices, fixture_tensors[f"ks_{setting}_frame_indices"].numpy())
    starts = processor.clip_sampling().start_positions(303, 30.0)
    assert np.allclose(starts, fixture_tensors[f"ks_{setting}_visual_start"].numpy(), rtol=0, atol=1e-12)
    height, width = short_side_size(256, 340, 32 if setting == "tiny" else 128)
    assert torch.equal(nearest_source_indices(256, height), fixture_tensors[f"ks_{setting}_resize_src_rows"])
    assert torch.equal(nearest_source_indices(340, width), fixture_tensors[f"ks_{setting}_resize_src_cols"])


@needs_fixtures
def test_tiny_visual_seq_is_exact(fixture_tensors, fixture_meta):
    pixel_values = AVBertVideoProcessor(**TINY)(str(KS_VIDEO), return_tensors="pt")["pixel_values"]
    assert pixel_values.shape == (1, 10, 3, 8, 32, 32)
    assert torch.equal(pixel_values[0], fixture_tensors["ks_tiny_visual_seq"])
    hashes = fixture_meta["tiny"]["visual_seq_float32_sha256_per_clip"]
    assert [sha256(clip) for clip in pixel_values[0]] == hashes


@needs_fixtures
def test_full_clips_are_exact(fixture_tensors, fixture_meta, ks_pixel_values):
    assert ks_pixel_values.shape == (1, 10, 3, 32, 128, 128)
    clips = fixture_tensors["ks_full_visual_seq_uint8_clips"]
    expected = (clips.float() / 255.0 - 0.45) / 0.225
    for row, clip_id in enumerate(fixture_tensors["ks_full_visual_seq_uint8_clip_ids"].tolist()):
        assert torch.equal(ks_pixel_values[0, clip_id], expected[row])
    assert [sha256(clip) for clip in ks_pixel_values[0]] == fixture_meta["full"]["visual_seq_float32_sha256_per_clip"]


# ---------------------------------------------------------------------------------------------------------------------
# Every shared video, and inputs other than a path


@needs_videos
@pytest.mark.parametrize(
    "path",
    sorted(path for path in VIDEOS.rglob("*") if path.suffix in (".mp4", ".avi", ".mkv")) if VIDEOS.is_dir() else [],
    ids=lambda path: path.name,
)
def test_every_shared_video(path):
    processor = AVBertVideoProcessor(num_clips=3)
    pixel_values = processor(path, return_tensors="pt")["pixel_values"]
    assert pixel_values.shape == (1, 3, 3, 32, 128, 128) and pixel_values.dtype == torch.float32
    assert torch.isfinite(pixel_values).all()


@needs_videos
def test_arrays_bytes_and_file_objects_match_the_path(ks_pixel_values):
    processor = AVBertVideoProcessor()
    frames = read_frames(KS_VIDEO, np.arange(303))
    assert torch.equal(processor(frames, video_metadata={"fps": 30.0})["pixel_values"], ks_pixel_values)
    channels_first = torch.from_numpy(frames).permute(0, 3, 1, 2)  # (T, C, H, W); no fps: 30 is assumed
    assert torch.equal(processor(channels_first)["pixel_values"], ks_pixel_values)
    assert torch.equal(processor(KS_VIDEO.read_bytes())["pixel_values"], ks_pixel_values)
    with open(KS_VIDEO, "rb") as handle:
        assert torch.equal(processor(handle)["pixel_values"], ks_pixel_values)


@needs_videos
def test_pre_sampled_frames_from_one_decode(ks_pixel_values):
    """Frames sampled by one decode of the file, then given without sampling them again."""
    processor = AVBertVideoProcessor()
    sampling = processor.clip_sampling()
    decoded = read_video(KS_VIDEO, lambda info: sampling.frame_indices(info.num_frames, info.fps).ravel())
    pixel_values = processor(decoded.frames, do_sample_frames=False)["pixel_values"]
    assert torch.equal(pixel_values, ks_pixel_values)
    with pytest.raises(ValueError, match="do_sample_frames=False"):
        processor(decoded.frames[:-1], do_sample_frames=False)
    two = processor(decoded.frames[:64], do_sample_frames=False, num_clips=2)["pixel_values"]  # the call's clip count
    assert torch.equal(two, ks_pixel_values[:, :2])
    video, metadata = processor.fetch_videos(str(KS_VIDEO), sample_indices_fn=processor.sample_frames)  # HF's hook
    assert np.array_equal(video.frames[video.positions.ravel()], decoded.frames)  # each frame decoded once
    assert len(video.frames) == len(np.unique(decoded.indices)) and metadata.fps == 30.0
    assert metadata.total_num_frames == 303 and np.array_equal(metadata.frames_indices, decoded.indices.reshape(10, 32))


@pytest.fixture(scope="module")
def high_resolution_video(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("hd") / "hd.mp4", num_frames=60, width=1280, height=720)


@pytest.mark.parametrize(
    "settings",
    [
        {},
        {"size": {"height": 90, "width": 160}, "do_center_crop": False},
        {"do_train_augmentation": True, "clip_brightness_jitter": 0.2},
    ],
    ids=["eval", "eval-height-width", "train"],
)
def test_files_are_resized_while_they_are_decoded(high_resolution_video, monkeypatch, settings):
    """A 1280x720 file: the decoder hands over only the part of the resized frames that the crop takes (the training
    draw's crop, flipped, in training), and the result is bit for bit the frame-array path's, which resizes, crops and
    flips after decoding (the order before)."""
    from avbert import video_processing_avbert

    decoded_shapes = []

    def spy(*args, **kwargs):
        decoded = read_video(*args, **kwargs)
        decoded_shapes.append(decoded.frames.shape)
        return decoded

    processor = AVBertVideoProcessor(num_clips=3, num_frames=8)
    frames = read_video(high_resolution_video, lambda info: np.arange(info.num_frames)).frames
    assert frames.shape == (60, 720, 1280, 3)
    from_arrays = processor([frames, frames], seed=7, **settings)["pixel_values"]
    monkeypatch.setattr(video_processing_avbert, "read_video", spy)
    from_files = processor([high_resolution_video] * 2, seed=7, **settings)["pixel_values"]
    assert torch.equal(from_files, from_arrays)
    if settings.get("do_train_augmentation"):
        assert not torch.equal(from_files[0], from_files[1])  # two draws, in the frame-array path's order
        expected = (112, 112)
    else:
        expected = (90, 160) if "size" in settings else (128, 128)
    assert [shape[1:3] for shape in decoded_shapes] == [expected, expected]


@needs_videos
def test_pipeline_style_call_batches_views_and_metadata(ks_pixel_values):
    processor = AVBertVideoProcessor()
    inputs = processor(str(KS_VIDEO), num_frames=32, do_sample_frames=True, return_tensors="pt")
    assert list(inputs.keys()) == ["pixel_values"] and torch.equal(inputs["pixel_values"], ks_pixel_values)
    batch = processor([KS_VIDEO, KS_VIDEO], return_metadata=True)
    assert batch["pixel_values"].shape == (2, 10, 3, 32, 128, 128)
    assert batch["video_metadata"][0].fps == 30.0 and batch["video_metadata"][0].total_num_frames == 303
    views = processor(KS_VIDEO, all_views=True)["pixel_values"]
    assert views.shape == (3, 10, 3, 32, 128, 128) and torch.equal(views[1:2], ks_pixel_values)
    assert not torch.equal(views[0], views[2])
    subset = processor(KS_VIDEO, temporal_index=[0, 4, 9])["pixel_values"]
    assert torch.equal(subset[0], ks_pixel_values[0, [0, 4, 9]])


# ---------------------------------------------------------------------------------------------------------------------
# Synthetic media: short, tiny, non-RGB, rotated


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("short.mp4", {"num_frames": 9}),
        ("tiny.mp4", {"width": 33, "height": 17, "pix_fmt": "yuv444p"}),
        ("gray.mkv", {"pix_fmt": "gray", "container_format": "matroska"}),
        ("ten_bit.mkv", {"pix_fmt": "yuv420p10le", "container_format": "matroska"}),
        ("rotated.mp4", {"rotation": 90}),
        ("pal.mp4", {"fps": 25, "num_frames": 80, "codec": "mpeg4"}),
    ],
)
def test_synthetic_media(tmp_path, name, options):
    path = write_video(tmp_path / name, **options)
    pixel_values = AVBertVideoProcessor()(path)["pixel_values"]
    assert pixel_values.shape == (1, 10, 3, 32, 128, 128) and torch.isfinite(pixel_values).all()
    if name == "short.mp4":  # 9 frames, one clip spans 64: every clip is the same, ending on the last frame repeated
        assert all(torch.equal(pixel_values[0, 0], clip) for clip in pixel_values[0])
        assert torch.equal(pixel_values[0, 0, :, -1], pixel_values[0, 0, :, 5])


def test_clip_sampling_edge_cases():
    sampling = AVBertVideoProcessor().clip_sampling()
    short = sampling.frame_indices(9, 30.0)  # shorter than a clip: every clip starts at 0, the end repeats
    assert (short == [0, 2, 4, 6] + [8] * 28).all()
    one = AVBertVideoProcessor().clip_sampling(num_clips=1).frame_indices(303, 30.0)
    assert one.shape == (1, 32) and one[0, 0] == 119  # centred: (303 - 64) / 2
    pal = sampling.frame_indices(250, 25.0)  # a clip spans 53.3 frames at 25 fps: 2.13 s as at 30 fps
    assert pal[0, -1] == 52 and pal[-1, -1] == 249
    assert np.array_equal(sampling.frame_indices(303, None), sampling.frame_indices(303, 30.0))
    assert np.allclose(sampling.start_times(303, 30.0)[[0, -1]], [0.0, 239 / 30])


# ---------------------------------------------------------------------------------------------------------------------
# Training augmentation


def static_video(num_frames: int = 40) -> np.ndarray:
    """The same frame throughout: any difference between clips or frames comes from the augmentation."""
    rng = np.random.default_rng(0)
    return np.repeat(rng.integers(0, 256, (1, 120, 160, 3), dtype=np.uint8), num_frames, axis=0)


def test_training_augmentation_is_shared_by_clips_and_seeded():
    processor = AVBertVideoProcessor(do_train_augmentation=True)
    video = static_video()
    first = processor(video, seed=3)["pixel_values"]
    assert first.shape == (1, 10, 3, 32, 112, 112)
    assert torch.equal(first, processor(video, seed=3)["pixel_values"])
    reference = first[0, 0, :, 0]
    assert all(torch.equal(frame, reference) for clip in first[0] for frame in clip.unbind(1))
    draws = {sha256(processor(video, seed=seed)["pixel_values"][0, 0, :, 0]) for seed in range(6)}
    assert len(draws) == 6  # scale, crop and flip vary between videos
    generator = torch.Generator().manual_seed(3)
    assert torch.equal(processor(video, generator=generator)["pixel_values"], first)


def test_training_flip_and_crop_are_applied_after_the_scale():
    processor = AVBertVideoProcessor(do_train_augmentation=True, num_clips=1, num_frames=2)
    video = static_video(4)
    never = processor(video, seed=5, flip_prob=0.0)["pixel_values"]
    always = processor(video, seed=5, flip_prob=1.0)["pixel_values"]
    assert torch.equal(always, never.flip(-1))
    evaluation = AVBertVideoProcessor(num_clips=1, num_frames=2, do_center_crop=False, size={"shortest_edge": 128})
    resized = evaluation(video)["pixel_values"][0, 0, :, 0]  # (3, 128, 170): crops of the 128 scale are inside it
    fixed = processor(video, seed=5, train_jitter_scales=(128, 128), flip_prob=0.0)["pixel_values"][0, 0, :, 0]
    windows = resized.unfold(1, 112, 1).unfold(2, 112, 1)  # (3, 17, 59, 112, 112)
    assert (windows == fixed[:, None, None]).flatten(3).all(-1).all(0).any()
    assert processor(video, do_train_augmentation=False)["pixel_values"].shape[-1] == 128


def test_per_clip_brightness_and_contrast_jitter_are_torchvisions_and_leave_the_crops_unchanged():
    import torchvision.transforms.v2.functional as TF

    processor = AVBertVideoProcessor(do_train_augmentation=True, num_clips=4, num_frames=2)
    video = static_video(8)
    plain = processor(video, seed=1)["pixel_values"][0]
    jittered = processor(video, seed=1, clip_brightness_jitter=0.4, clip_contrast_jitter=0.3)["pixel_values"][0]
    assert jittered.shape == plain.shape
    # The factors are drawn after the crop and flip (so the same seed gives the same crop): 4 uniforms for scale, crop
    # and flip, then one uniform per clip for brightness, then for contrast, mapped to [1 - j, 1 + j].
    generator = torch.Generator().manual_seed(1)
    torch.rand(4, generator=generator, dtype=torch.float64)
    brightness = 0.6 + 0.8 * torch.rand(4, generator=generator, dtype=torch.float64)
    contrast = 0.7 + 0.6 * torch.rand(4, generator=generator, dtype=torch.float64)
    assert len(set(brightness.tolist())) == 4, "every clip gets its own factors"
    mean, std = 0.45, 0.225
    for index, (clip, reference) in enumerate(zip(jittered, plain, strict=True)):
        pixels = (reference * std + mean).transpose(0, 1)  # (T, C, H, W) in [0, 1]: torchvision's layout
        pixels = TF.adjust_contrast(TF.adjust_brightness(pixels, float(brightness[index])), float(contrast[index]))
        torch.testing.assert_close(clip, ((pixels - mean) / std).transpose(0, 1))
        assert not torch.allclose(clip, reference, atol=1e-3)
    # Evaluation ignores the jitter; the same seed gives the same jitter.
    assert torch.equal(
        processor(video, do_train_augmentation=False, clip_brightness_jitter=0.4)["pixel_values"],
        processor(video, do_train_augmentation=False)["pixel_values"],
    )
    again = processor(video, seed=1, clip_brightness_jitter=0.4, clip_contrast_jitter=0.3)["pixel_values"][0]
    assert torch.equal(again, jittered)


def test_per_clip_gain_jitter_reaches_the_sound_track(tmp_path):
    from avbert.data.synthetic import write_av_file

    frames = np.random.default_rng(0).integers(0, 256, (60, 64, 64, 3), dtype=np.uint8)
    tone = (0.3 * np.sin(2 * np.pi * 880 * np.arange(32000) / 16000)).astype(np.float32)
    path = write_av_file(tmp_path / "tone.mp4", frames, 30, tone, 16000)
    # The video processor alone routes files to the audio-visual processor (as the video-classification pipeline does).
    processor = AVBertVideoProcessor(num_clips=3, num_frames=4, load_audio_in_video=True, do_train_augmentation=True)
    torch.manual_seed(0)
    plain = processor(path, seed=0, flip_prob=0.0)["input_features"][0]
    torch.manual_seed(0)
    louder = processor(path, seed=0, flip_prob=0.0, clip_gain_jitter_db=6.0)["input_features"][0]
    # A gain g scales the mel power by g ** 2: where the sound is well above the log offset (and not a SpecAugment
    # zero), the log-mel moves by 2 ln g, one constant per clip, |2 ln g| <= 6 dB = 1.38.
    shifts = []
    for clip_plain, clip_louder in zip(plain, louder, strict=True):
        loud = (clip_plain > -5) & (clip_plain != 0) & (clip_louder != 0)
        shift = clip_louder[loud] - clip_plain[loud]
        assert shift.std() < 0.05 and shift.abs().max() <= 6.0 * math.log(10) / 10 + 0.05
        shifts.append(float(shift.mean()))
    assert len({round(value, 2) for value in shifts}) == 3, "every clip gets its own gain"


# ---------------------------------------------------------------------------------------------------------------------
# Errors, settings, save / load


def test_errors(tmp_path):
    processor = AVBertVideoProcessor()
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(os.urandom(4096))
    with pytest.raises(MediaDecodeError, match=r"garbage\.mp4"):
        processor(garbage)
    with pytest.raises(TypeError):
        processor(static_video(), not_a_setting=1)
    with pytest.raises(ValueError, match="target_fps"):
        processor(static_video(), fps=2)
    with pytest.raises(ValueError, match="spatial_crop"):
        processor(static_video(), spatial_crop=3)
    with pytest.raises(ValueError, match="all_views"):
        processor(static_video(), all_views=True, do_train_augmentation=True)
    with pytest.raises(ValueError, match="temporal_index"):
        processor(static_video(), temporal_index=10)
    with pytest.raises(ValueError, match="clip_brightness_jitter must be in"):
        processor(static_video(), clip_brightness_jitter=1.0)
    with pytest.raises(ValueError, match="clip_contrast_jitter works on pixels"):
        processor(static_video(), clip_contrast_jitter=0.2, do_rescale=False)
    with pytest.raises(TypeError):  # a sound setting: the processor's, not the video processor's
        processor(static_video(), clip_gain_jitter_db=1.0)
    with pytest.raises(ValueError, match="size must give") as error:  # refused before decoding: not a decode error
        processor(write_video(tmp_path / "small.mp4"), size={"longest_edge": 64})
    assert not isinstance(error.value, MediaDecodeError)


def test_save_load_and_auto_class(tmp_path):
    processor = AVBertVideoProcessor(num_clips=4, num_frames=8, spatial_crop=0, train_jitter_scales=(100, 140))
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "video_preprocessor_config.json").read_text())
    assert saved["frame_sampling_rate"] == 2 and saved["target_fps"] == 30 and saved["train_crop_size"] == 112
    assert saved["auto_map"] == {"AutoVideoProcessor": "video_processing_avbert.AVBertVideoProcessor"}
    assert (tmp_path / "media_decoding.py").is_file()  # copied along for trust_remote_code
    loaded = AutoVideoProcessor.from_pretrained(tmp_path)
    assert type(loaded) is AVBertVideoProcessor
    assert loaded.to_json_string() == processor.to_json_string()
    video = static_video()
    assert torch.equal(loaded(video)["pixel_values"], processor(video)["pixel_values"])


def test_video_classification_pipeline(tmp_path, make_config):
    """The stock pipeline loads the processor with AutoVideoProcessor and calls it with num_frames/do_sample_frames."""
    from transformers import pipeline

    from avbert import AVBertForVideoClassification

    config = make_config(use_audio=False)  # visual only: the stock pipeline gives pixel_values alone
    AVBertForVideoClassification(config).save_pretrained(tmp_path / "model")
    crop = {"height": 16, "width": 16}
    processor = AVBertVideoProcessor(num_clips=config.num_clips, size={"shortest_edge": 16}, crop_size=crop)
    processor.save_pretrained(tmp_path / "model")
    video = write_video(tmp_path / "clip.mp4", num_frames=20)
    classifier = pipeline("video-classification", model=str(tmp_path / "model"))
    assert type(classifier.video_processor) is AVBertVideoProcessor
    predictions = classifier(str(video), top_k=2)
    assert len(predictions) == 2 and all(0.0 <= item["score"] <= 1.0 for item in predictions)
