"""AVBertProcessor (one decode for frames and sound), the converter's processor, and the two pipelines on real media."""

import csv
import fractions
import io
import os
import shutil
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoFeatureExtractor, AutoProcessor, AutoVideoProcessor, pipeline

from avbert import AVBertFeatureExtractor, AVBertProcessor, AVBertVideoProcessor, MediaDecodeError
from avbert.convert_original_checkpoint import convert_checkpoint
from avbert.data.synthetic import write_long_video
from avbert.media_decoding import probe, read_audio, read_frames

SHARED = Path(os.environ.get("AVBERT_SHARED_DIR", Path(__file__).resolve().parents[2] / "shared"))
FIXTURES = SHARED / "fixtures" / "original"
VIDEOS = SHARED / "data" / "videos"
ESC50 = SHARED / "data" / "esc50" / "audio"
KS_VIDEO = VIDEOS / "kinetics400" / "R6llTwEh07w.mp4"
SILENT_VIDEO = VIDEOS / "hmdb51" / "RATRACE_wave_f_nm_np1_fr_goo_37.avi"

needs_fixtures = pytest.mark.skipif(not FIXTURES.is_dir() or not KS_VIDEO.is_file(), reason="shared data absent")
needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="the audio pipeline decodes with ffmpeg")


def videos_with_audio() -> list[Path]:
    with open(VIDEOS / "manifest.csv") as handle:
        rows = list(csv.DictReader(handle))
    return [
        VIDEOS / row["path"] for row in rows if row["has_audio"] == "True" and row["path"].endswith((".mp4", ".mkv"))
    ]


def small_processor(audio_alignment: str = "timestamp") -> AVBertProcessor:
    video = {"num_clips": 3, "num_frames": 8, "size": {"shortest_edge": 32}, "crop_size": {"height": 32, "width": 32}}
    return AVBertProcessor(
        feature_extractor=AVBertFeatureExtractor(num_clips=3, clip_samples=23520, audio_alignment=audio_alignment),
        video_processor=AVBertVideoProcessor(**video),
    )


@needs_fixtures
def test_kinetics_sounds_item_matches_the_original():
    """The original's KS test item (center crop, 10 clips) from one processor call, with its proportional alignment."""
    expected = load_file(FIXTURES / "preprocessing" / "preprocessing.safetensors")
    processor = AVBertProcessor(
        feature_extractor=AVBertFeatureExtractor(audio_alignment="fraction"), video_processor=AVBertVideoProcessor()
    )
    out = processor(videos=str(KS_VIDEO), return_tensors="pt")
    assert out["pixel_values"].shape == (1, 10, 3, 32, 128, 128)
    assert out["input_features"].shape == (1, 10, 1, 80, 128)
    clips = out["pixel_values"][0]
    for clip_id, stored in zip(
        expected["ks_full_visual_seq_uint8_clip_ids"].tolist(), expected["ks_full_visual_seq_uint8_clips"], strict=True
    ):
        reference = (stored.float() / 255 - 0.45) / 0.225
        torch.testing.assert_close(clips[clip_id], reference, rtol=0, atol=1e-6)
    # Log-mel: the fixture README's tolerance for another FFT build (bins above -5 agree much closer).
    difference = (out["input_features"][0] - expected["ks_full_audio_seq"]).abs()
    assert difference.max() <= 5e-3
    assert difference[expected["ks_full_audio_seq"] > -5].max() <= 2e-4


@needs_fixtures
def test_timestamp_alignment_follows_the_clip_times():
    processor = small_processor()
    video_processor = processor.video_processor
    stamped = processor(videos=str(KS_VIDEO), return_tensors="pt")["input_features"][0]
    # The same windows, computed by hand from the clip start times and the decoded sound track.
    with av.open(str(KS_VIDEO)) as container:
        stream = container.streams.video[0]
        total, fps = stream.frames, float(stream.average_rate)
        audio = np.concatenate([frame.to_ndarray() for frame in container.decode(audio=0)], axis=1)
    starts = video_processor.clip_sampling().start_times(total, fps)
    by_hand = processor.feature_extractor(audio, sampling_rate=44100, clip_starts=[starts], return_tensors="pt")
    torch.testing.assert_close(stamped, by_hand["input_features"][0], rtol=0, atol=0)


@needs_fixtures
def test_decoded_inputs_and_audio_only():
    processor = small_processor()
    frames = np.random.default_rng(0).integers(0, 256, (90, 48, 64, 3), dtype=np.uint8)
    waveform = np.random.default_rng(1).normal(0, 0.1, 48000 * 3).astype(np.float32)
    both = processor(videos=frames, audio=waveform, sampling_rate=48000, return_tensors="pt")
    assert both["pixel_values"].shape == (1, 3, 3, 8, 32, 32)
    assert both["input_features"].shape == (1, 3, 1, 80, 128)
    frames_only = processor(videos=frames, return_tensors="pt")  # arrays carry no sound: frames alone
    assert set(frames_only) == {"pixel_values"}
    audio_only = processor(audio=waveform, sampling_rate=48000, return_tensors="pt")
    assert set(audio_only) == {"input_features"} and audio_only["input_features"].shape[1] == 3
    with pytest.raises(ValueError, match="needs `videos`, `audio`, or both"):
        processor()


@needs_fixtures
def test_all_views_repeat_the_sound_per_crop():
    out = small_processor()(videos=str(KS_VIDEO), all_views=True, return_tensors="pt")
    assert out["pixel_values"].shape[0] == 3 and out["input_features"].shape[0] == 3
    assert torch.equal(out["input_features"][0], out["input_features"][2])
    assert not torch.equal(out["pixel_values"][0], out["pixel_values"][2])


@pytest.mark.skipif(not SILENT_VIDEO.is_file(), reason="shared data absent")
def test_video_without_audio_is_refused_or_read_without_sound():
    processor = small_processor()
    with pytest.raises(MediaDecodeError, match=r"RATRACE.*no audio stream"):
        processor(videos=str(SILENT_VIDEO))
    out = processor(videos=str(SILENT_VIDEO), load_audio_in_video=False, return_tensors="pt")
    assert set(out) == {"pixel_values"}


def test_default_components_are_the_original_setting():
    processor = AVBertProcessor()
    assert isinstance(processor.video_processor, AVBertVideoProcessor) and processor.video_processor.num_clips == 10
    assert isinstance(processor.feature_extractor, AVBertFeatureExtractor)
    assert processor.feature_extractor.clip_samples == 94080


def test_nested_per_modality_kwargs_are_routed_like_flat_ones():
    processor = small_processor()
    frames = np.random.default_rng(0).integers(0, 256, (60, 40, 48, 3), dtype=np.uint8)
    waveform = np.random.default_rng(1).normal(0, 0.1, 44100 * 2).astype(np.float32)
    flat = processor(videos=frames, audio=waveform, sampling_rate=44100, num_clips=2, spatial_crop=0)
    nested = processor(
        videos=frames,
        audio=waveform,
        videos_kwargs={"num_clips": 2, "spatial_crop": 0},
        audio_kwargs={"sampling_rate": 44100},
    )
    assert flat["pixel_values"].shape[1] == 2 and flat["input_features"].shape[1] == 2
    for key in ("pixel_values", "input_features"):
        torch.testing.assert_close(flat[key], nested[key], rtol=0, atol=0)
    with pytest.raises(ValueError, match="passed two times"):
        processor(videos=frames, num_clips=2, videos_kwargs={"num_clips": 3})


def test_save_and_load(tmp_path):
    processor = small_processor(audio_alignment="fraction")
    processor.save_pretrained(tmp_path)
    loaded = AutoProcessor.from_pretrained(tmp_path)
    assert isinstance(loaded, AVBertProcessor)
    assert loaded.feature_extractor.audio_alignment == "fraction" and loaded.video_processor.num_clips == 3
    assert loaded.feature_extractor.clip_samples == 23520
    assert isinstance(AutoVideoProcessor.from_pretrained(tmp_path), AVBertVideoProcessor)
    assert isinstance(AutoFeatureExtractor.from_pretrained(tmp_path), AVBertFeatureExtractor)


# ---------------------------------------------------------------------------------------------------------------------
# Pipelines on converted original checkpoints


@pytest.fixture(scope="module")
def kinetics_sounds_folder(tmp_path_factory):
    if not FIXTURES.is_dir():
        pytest.skip("parity fixtures absent")
    folder = tmp_path_factory.mktemp("ks")
    tiny = FIXTURES / "tiny_ks"
    convert_checkpoint(tiny / "finetuned_checkpoint.pyth", folder, "kinetics-sounds", tiny / "config.yaml")
    return folder


def replace_audio_with_silence(source: Path, target: Path) -> None:
    """The same video packets (stream copy, so the frames decode identically) with a silent AAC sound track."""
    with av.open(str(source)) as inp, av.open(str(target), "w") as out:
        video_in = inp.streams.video[0]
        audio_in = inp.streams.audio[0]
        video_out = out.add_stream_from_template(video_in)
        audio_out = out.add_stream("aac", rate=audio_in.rate, layout="mono")
        for packet in inp.demux(video_in):
            if packet.dts is not None:
                packet.stream = video_out
                out.mux(packet)
        samples = int(float(inp.duration / av.time_base) * audio_in.rate)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, samples), dtype=np.float32), format="fltp", layout="mono")
        frame.sample_rate = audio_in.rate
        for chunk in audio_out.encode(frame):
            out.mux(chunk)
        for chunk in audio_out.encode(None):
            out.mux(chunk)


@needs_fixtures
def test_video_classification_pipeline_uses_the_sound(kinetics_sounds_folder, tmp_path):
    classifier = pipeline("video-classification", model=str(kinetics_sounds_folder))
    predictions = classifier(str(KS_VIDEO), top_k=3)
    assert len(predictions) == 3 and all(set(p) == {"label", "score"} for p in predictions)
    assert predictions[0]["score"] >= predictions[1]["score"] >= predictions[2]["score"]
    all_labels = classifier(str(KS_VIDEO), top_k=10)
    assert len(all_labels) == 5 and abs(sum(p["score"] for p in all_labels) - 1) < 1e-5

    silent = tmp_path / "silent.mp4"
    replace_audio_with_silence(KS_VIDEO, silent)
    scores = {p["label"]: p["score"] for p in all_labels}
    silent_scores = {p["label"]: p["score"] for p in classifier(str(silent), top_k=10)}
    assert max(abs(scores[label] - silent_scores[label]) for label in scores) > 1e-3


@needs_fixtures
def test_video_classification_pipeline_on_every_real_video_with_sound(kinetics_sounds_folder):
    classifier = pipeline("video-classification", model=str(kinetics_sounds_folder))
    for path in videos_with_audio():
        predictions = classifier(str(path), top_k=1)
        assert 0 < predictions[0]["score"] <= 1, path


@needs_fixtures
def test_video_classification_pipeline_batches_with_the_feature_extractor(kinetics_sounds_folder):
    """transformers batches a pipeline only with a tokenizer or feature extractor to pad with; given AVBERT's (its
    inputs have one shape per processor, so transformers' collate stacks them), `batch_size` gives the unbatched
    results."""
    videos = [str(path) for path in videos_with_audio()[:3]]
    single = pipeline("video-classification", model=str(kinetics_sounds_folder))(videos, top_k=5)
    batched = pipeline(
        "video-classification",
        model=str(kinetics_sounds_folder),
        feature_extractor=AutoFeatureExtractor.from_pretrained(kinetics_sounds_folder),
        batch_size=2,
    )(videos, top_k=5)
    for one, other in zip(single, batched, strict=True):
        assert [p["label"] for p in one] == [p["label"] for p in other]
        assert max(abs(a["score"] - b["score"]) for a, b in zip(one, other, strict=True)) < 1e-5
    with pytest.raises(ValueError, match="cannot do batching"):  # without it, transformers' refusal
        pipeline("video-classification", model=str(kinetics_sounds_folder), batch_size=2)(videos)


@needs_fixtures
def test_visual_only_model_classifies_a_silent_video(tmp_path):
    tiny = FIXTURES / "tiny_visual"
    convert_checkpoint(tiny / "finetuned_checkpoint.pyth", tmp_path, "ucf101", tiny / "config.yaml")
    predictions = pipeline("video-classification", model=str(tmp_path))(str(SILENT_VIDEO), top_k=2)
    assert len(predictions) == 2


@needs_fixtures
@needs_ffmpeg
def test_audio_classification_pipeline(tmp_path):
    tiny = FIXTURES / "tiny_audio"
    convert_checkpoint(tiny / "finetuned_checkpoint.pyth", tmp_path, "esc50", tiny / "config.yaml")
    classifier = pipeline("audio-classification", model=str(tmp_path))
    clip = ESC50 / "4-182395-A-0.flac"
    from_path = classifier(str(clip), top_k=5)
    assert len(from_path) == 5 and abs(sum(p["score"] for p in from_path) - 1) < 1e-5
    with av.open(str(clip)) as container:
        waveform = np.concatenate([frame.to_ndarray() for frame in container.decode(audio=0)], axis=1)[0]
    waveform = waveform.astype(np.float32) / 32768 if waveform.dtype == np.int16 else waveform
    from_array = classifier(waveform, top_k=5)
    assert [p["label"] for p in from_array] == [p["label"] for p in from_path]
    for a, b in zip(from_array, from_path, strict=True):
        assert abs(a["score"] - b["score"]) < 1e-3  # ffmpeg's float decode vs PyAV's int16 / 32768


# ---------------------------------------------------------------------------------------------------------------------
# Real-media correctness: variable frame rates, truncated containers, non-media files

TONES_HZ = (500, 1000, 1500, 2000, 2500, 3000)  # one tone per second


def write_vfr_video_with_tones(path: Path) -> list[float]:
    """Six seconds: 10 fps for the first three, 40 fps for the last three; the sound is TONES_HZ[k] in second k.

    Returns every frame's presentation time in seconds.
    """
    times_ms = [100 * i for i in range(30)] + [3000 + 25 * i for i in range(120)]
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=40)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        video.codec_context.time_base = video.time_base = fractions.Fraction(1, 1000)
        audio = container.add_stream("aac", rate=44100, layout="mono")
        for index, pts in enumerate(times_ms):
            image = np.full((48, 64, 3), (index * 5) % 256, np.uint8)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = pts, fractions.Fraction(1, 1000)
            container.mux(video.encode(frame))
        container.mux(video.encode())
        seconds = np.arange(44100 * len(TONES_HZ)) / 44100
        tones = np.asarray(TONES_HZ)[np.minimum(seconds.astype(int), len(TONES_HZ) - 1)]
        samples = (0.3 * np.sin(2 * np.pi * tones * seconds)).astype(np.float32)[None]
        frame = av.AudioFrame.from_ndarray(samples, format="flt", layout="mono")
        frame.sample_rate, frame.pts = 44100, 0
        container.mux(audio.encode(frame))
        container.mux(audio.encode())
    return [ms / 1000 for ms in times_ms]


def test_variable_frame_rate_clips_hear_their_own_second(tmp_path):
    path = tmp_path / "vfr.mp4"
    frame_times = write_vfr_video_with_tones(path)
    window = 4410  # 0.1 s
    extractor = AVBertFeatureExtractor(num_clips=8, clip_samples=window, feature_size=64, num_time_frames=16)
    processor = AVBertProcessor(
        feature_extractor=extractor,
        video_processor=AVBertVideoProcessor(
            num_clips=8, num_frames=4, size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
        ),
    )
    features = processor(videos=str(path), return_tensors="pt")["input_features"][0]
    # The mel bin each tone peaks in, from the extractor itself.
    seconds = np.arange(window) / 44100
    references = extractor([np.sin(2 * np.pi * hz * seconds) for hz in TONES_HZ], sampling_rate=44100)
    tone_bins = [int(np.argmax(item[0, 0].mean(-1))) for item in references["input_features"]]
    assert len(set(tone_bins)) == len(TONES_HZ)
    heard = [tone_bins.index(int(torch.argmax(clip[0].mean(-1)))) for clip in features]

    starts = processor.video_processor.clip_sampling().start_positions(len(frame_times), probe(path).video.fps)
    true_times = np.interp(starts, np.arange(len(frame_times)), frame_times)
    inside = (true_times % 1) < 1 - window / 44100  # windows that do not straddle a change of tone
    assert inside.sum() >= 6
    assert np.array_equal(np.asarray(heard)[inside], np.floor(true_times[inside]).astype(int))
    # The average-rate estimate (index / fps) would put some clips in another second.
    naive = np.floor(starts / probe(path).video.fps).astype(int)
    assert (naive[inside] != np.asarray(heard)[inside]).any()


@pytest.mark.parametrize("suffix", [".mkv", ".webm"])
def test_truncated_matroska_and_webm_are_refused(tmp_path, suffix):
    codecs = {".mkv": ("libx264", "aac"), ".webm": ("libvpx", "libopus")}[suffix]
    path = tmp_path / f"clip{suffix}"
    with av.open(str(path), "w") as container:
        video = container.add_stream(codecs[0], rate=30)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        for index in range(150):
            image = np.random.default_rng(index).integers(0, 256, (48, 64, 3), dtype=np.uint8)
            container.mux(video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(video.encode())
    processor = small_processor()
    assert processor(videos=str(path), load_audio_in_video=False)["pixel_values"].shape[1] == 3  # whole: fine
    truncated = tmp_path / f"truncated{suffix}"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(MediaDecodeError, match=rf"truncated{suffix}: truncated or corrupt"):
        processor(videos=str(truncated), load_audio_in_video=False)


def test_a_text_file_has_no_video_stream(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("FFmpeg's tty demuxer opens any text as video.\n" * 40)
    with pytest.raises(MediaDecodeError, match=r"notes\.txt: no video stream"):
        small_processor()(videos=str(text))


@needs_fixtures
@pytest.mark.parametrize("alignment", ["timestamp", "fraction"])
@pytest.mark.parametrize("name", ["R6llTwEh07w.mp4", "WUzgd7C1pWA.mp4", "flipping_a_pancake.mkv"])  # 44.1, 48, 48 kHz
def test_frames_and_waveform_give_what_the_file_gives(alignment, name):
    """Decoded arrays honour `audio_alignment` as the file does, so both give the same inputs, bit for bit: the file's
    sound is read and resampled only around its windows, the arrays' as a whole."""
    path = VIDEOS / "kinetics400" / name
    processor = small_processor(audio_alignment=alignment)
    from_file = processor(videos=str(path), return_tensors="pt")
    info = probe(path).video
    frames = read_frames(path, np.arange(info.num_frames))
    waveform, rate = read_audio(path)
    from_arrays = processor(
        videos=frames, audio=waveform, sampling_rate=rate, video_metadata={"fps": info.fps}, return_tensors="pt"
    )
    torch.testing.assert_close(from_arrays["pixel_values"], from_file["pixel_values"], rtol=0, atol=0)
    torch.testing.assert_close(from_arrays["input_features"], from_file["input_features"], rtol=0, atol=0)


@pytest.mark.parametrize("alignment", ["timestamp", "fraction"])
def test_memory_follows_the_clips_not_the_file(tmp_path, alignment):
    """Two minutes at 48 kHz: the whole sound track alone would be 23 MB of float32 (46 MB while concatenated)."""
    import tracemalloc

    path = tmp_path / "long.mp4"
    write_long_video(path, seconds=120)
    processor = small_processor(audio_alignment=alignment)
    tracemalloc.start()
    try:
        out = processor(videos=str(path), return_tensors="pt")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out["input_features"].shape == (1, 3, 1, 80, 128)
    assert peak < 8 * 2**20, f"peak {peak / 2**20:.1f} MiB"


class _Pipe(io.RawIOBase):
    """A file object that cannot seek, as a pipe or socket reads."""

    def __init__(self, data: bytes) -> None:
        super().__init__()
        self._data, self.name = io.BytesIO(data), "pipe.mp4"

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        chunk = self._data.read(len(buffer))
        buffer[: len(chunk)] = chunk
        return len(chunk)


@needs_fixtures
def test_an_unseekable_file_object_gives_what_the_path_gives():
    """Frames and sound are read one after the other: a stream that cannot seek is read into memory once."""
    processor = small_processor()
    from_path = processor(videos=str(KS_VIDEO), return_tensors="pt")
    from_pipe = processor(videos=_Pipe(KS_VIDEO.read_bytes()), return_tensors="pt")
    for key in ("pixel_values", "input_features"):
        torch.testing.assert_close(from_pipe[key], from_path[key], rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------------------------------
# The video processor alone (the video-classification pipeline's call) and folders saved by earlier versions


def test_the_video_processor_alone_answers_with_the_processor_it_was_saved_with(tmp_path):
    from avbert.data.synthetic import write_av_file

    frames = np.random.default_rng(0).integers(0, 256, (60, 40, 48, 3), dtype=np.uint8)
    tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(32000) / 16000)).astype(np.float32)
    path = write_av_file(tmp_path / "tone.mp4", frames, 30, tone, 16000)
    video = {"num_clips": 2, "num_frames": 4, "size": {"shortest_edge": 16}, "crop_size": 16}
    processor = AVBertProcessor(
        feature_extractor=AVBertFeatureExtractor(num_clips=2, clip_samples=4000, feature_size=16, num_time_frames=16),
        video_processor=AVBertVideoProcessor(load_audio_in_video=True, **video),
    )
    processor.save_pretrained(tmp_path / "folder")
    expected = processor(videos=str(path), return_tensors="pt")
    assert expected["input_features"].shape == (1, 2, 1, 16, 16)
    # Held by its processor, loaded alone from the folder (what the pipeline does), or built alone (a default extractor
    # whose window is one clip): the video processor returns both modalities for files, frames alone for arrays.
    assert processor.video_processor.sound_feature_extractor() is processor.feature_extractor
    alone = AutoVideoProcessor.from_pretrained(tmp_path / "folder")
    for video_processor in (processor.video_processor, alone):
        out = video_processor(str(path), num_frames=4, do_sample_frames=True, return_tensors="pt")
        for key in ("pixel_values", "input_features"):
            torch.testing.assert_close(out[key], expected[key], rtol=0, atol=0)
    assert set(alone(frames)) == {"pixel_values"}
    built = AVBertVideoProcessor(load_audio_in_video=True, **video)
    assert built.sound_feature_extractor().clip_samples == int(44100 * 4 * 2 / 30)
    assert built(str(path))["input_features"].shape == (1, 2, 1, 80, 128)


def test_folders_saved_by_earlier_versions_still_load(tmp_path):
    """Earlier versions kept the sound settings on the video processor; they load, with a warning for the ones that
    changed something, and frames come out as before."""
    import json

    from transformers.testing_utils import CaptureLogger

    from avbert.video_processing_avbert import logger

    small_processor().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "processor_config.json").read_text())
    config["video_processor"].update(
        audio_alignment="fraction",
        audio_sampling_rate=44100,
        audio_time_frames=128,
        num_mel_bins=80,
        clip_gain_jitter_db=0.0,
        load_audio_in_video=True,
    )
    (tmp_path / "processor_config.json").write_text(json.dumps(config))
    with CaptureLogger(logger) as captured:
        loaded = AutoProcessor.from_pretrained(tmp_path)
    assert "audio_alignment='fraction'" in captured.out and "AVBertFeatureExtractor(audio_alignment" in captured.out
    assert "num_mel_bins" not in captured.out  # default values changed nothing: no warning
    frames = np.random.default_rng(0).integers(0, 256, (60, 40, 48, 3), dtype=np.uint8)
    torch.testing.assert_close(loaded(videos=frames)["pixel_values"], small_processor()(videos=frames)["pixel_values"])
