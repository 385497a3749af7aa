"""AVBertFeatureExtractor: parity with the original pipeline's log-mels (../shared/fixtures), resampling, channels,
masking, input validation and save/load.

Parity with the stored log-mels is exact only on the FFT build that wrote them: the rounding of torch's CPU FFT differs
between CPUs, which moves near-silent bins by up to ~4e-3. The fixture README recommends atol 5e-3 in that case;
bins above -5 must still agree within 2e-4.
"""

import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch
import torchaudio
from safetensors.torch import load_file
from transformers import AutoFeatureExtractor
from transformers.testing_utils import CaptureLogger

import avbert  # noqa: F401  (registers the Auto classes)
from avbert.clip_sampling import uniform_starts
from avbert.feature_extraction_avbert import (
    AVBertFeatureExtractor,
    log_mel_spectrogram,
    logger,
)

SHARED = Path(os.environ.get("AVBERT_SHARED_DIR", Path(__file__).resolve().parents[2] / "shared"))
PREPROCESSING = SHARED / "fixtures" / "original" / "preprocessing"
DATA = SHARED / "data"
ESC50_AUDIO = DATA / "esc50" / "audio"
KS_VIDEO = DATA / "videos" / "kinetics400" / "R6llTwEh07w.mp4"

needs_fixtures = pytest.mark.skipif(
    not (PREPROCESSING.is_dir() and ESC50_AUDIO.is_dir() and KS_VIDEO.is_file()),
    reason=f"preprocessing fixtures or shared data not found under {SHARED}",
)
needs_esc50 = pytest.mark.skipif(not ESC50_AUDIO.is_dir(), reason=f"ESC-50 audio not found at {ESC50_AUDIO}")

LOGMEL_ATOL = 5e-3
LOUD_BIN_ATOL = 2e-4
SILENCE = torch.log(torch.tensor(0.0) + 1e-6).item()


def assert_logmel_close(actual: torch.Tensor, expected: torch.Tensor, name: str) -> None:
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    difference = (actual - expected).abs()
    worst, worst_loud = difference.max().item(), difference[expected > -5].max().item()
    message = f"{name}: max abs diff {worst:.3g} (bins above -5: {worst_loud:.3g})"
    assert worst <= LOGMEL_ATOL and worst_loud <= LOUD_BIN_ATOL, message


def decode_audio(path: Path) -> np.ndarray:
    """Decode a mono audio stream with PyAV to float32, int16 PCM as int16 / 32768 (what the fixtures used)."""
    with av.open(str(path)) as container:
        samples = np.concatenate([frame.to_ndarray() for frame in container.decode(audio=0)], axis=1)
    assert samples.shape[0] == 1, f"{path.name}: expected a mono stream"
    if samples.dtype == np.int16:
        return samples[0].astype(np.float32) / 32768
    assert samples.dtype == np.float32, f"{path.name}: unexpected sample format {samples.dtype}"
    return samples[0]


def noise(num_samples: int, seed: int = 0, channels: int | None = None) -> np.ndarray:
    shape = (num_samples,) if channels is None else (channels, num_samples)
    return (0.1 * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)


def sine(sampling_rate: int, frequency: float = 1000.0, seconds: float = 3.0) -> np.ndarray:
    time = np.arange(int(sampling_rate * seconds)) / sampling_rate
    return (0.5 * np.sin(2 * np.pi * frequency * time)).astype(np.float32)


def features(extractor: AVBertFeatureExtractor, audio, **kwargs) -> torch.Tensor:
    kwargs.setdefault("sampling_rate", extractor.sampling_rate)
    return extractor(audio, return_tensors="pt", **kwargs)["input_features"]


@pytest.fixture(scope="module")
def fixtures() -> dict[str, torch.Tensor]:
    return load_file(PREPROCESSING / "preprocessing.safetensors")


@pytest.fixture(scope="module")
def meta() -> dict:
    return json.loads((PREPROCESSING / "preprocessing_meta.json").read_text())


# --- parity with the original pipeline ----------------------------------------------------------------------------


@needs_fixtures
def test_flac_decode_is_int16_pcm_scaled():
    soundfile = pytest.importorskip("soundfile")
    path = ESC50_AUDIO / "4-185575-A-20.flac"
    pcm, rate = soundfile.read(path, dtype="int16")
    assert rate == 44100
    np.testing.assert_array_equal(decode_audio(path), pcm.astype(np.float32) / 32768)


@needs_fixtures
@pytest.mark.parametrize("window", [8000, 23520, 94080])
def test_log_mel_spectrogram_parity(window, fixtures, meta):
    entry = next(item for item in meta["logmel_direct"] if item["tensor"] == f"logmel_direct_w{window}")
    waveform = torch.from_numpy(decode_audio(SHARED / "data" / entry["source_file"]))
    log_mel = log_mel_spectrogram(waveform[10000 : 10000 + window])
    assert log_mel.shape == (1, 80, 128) and log_mel.dtype == torch.float32
    assert_logmel_close(log_mel, fixtures[entry["tensor"]], entry["tensor"])
    if entry["zero_padded_columns"]:
        assert (log_mel[..., -entry["zero_padded_columns"] :] == 0.0).all()


@needs_fixtures
def test_esc50_parity(fixtures, meta):
    files = [SHARED / "data" / name for name in meta["esc50"]["source_files (order of dim 0)"]]
    waveforms = [decode_audio(path) for path in files]
    extractor = AVBertFeatureExtractor(clip_samples=88200, num_clips=10)
    indices = meta["esc50"]["temporal_index (dim 1)"]
    assert [int(uniform_starts(w.size, 88200, 10)[i]) for w in waveforms for i in indices] == (
        fixtures["esc50_start_sample"].flatten().tolist()
    )
    assert_logmel_close(features(extractor, waveforms)[:, indices], fixtures["esc50_logmel"], "esc50_logmel")


@needs_fixtures
@pytest.mark.parametrize(("setting", "clip_samples"), [("tiny", 23520), ("full", 94080)])
def test_kinetics_sounds_parity(setting, clip_samples, fixtures, meta):
    waveform = decode_audio(KS_VIDEO)
    digest = hashlib.sha256(waveform.tobytes()).hexdigest()
    assert digest == meta["ks_video"]["decoded_waveform_sha256 (float32 bytes)"]
    starts = fixtures[f"ks_{setting}_audio_start"].tolist()
    seconds = [start / 44100 for start in starts]
    assert [round(t * 44100) for t in seconds] == starts  # what the extractor does: nearest sample
    extractor = AVBertFeatureExtractor(clip_samples=clip_samples)
    actual = features(extractor, waveform, clip_starts=seconds)
    assert actual.shape == (1, 10, 1, 80, 128)
    assert_logmel_close(actual[0], fixtures[f"ks_{setting}_audio_seq"], f"ks_{setting}_audio_seq")
    # The uniform default spacing lands on the same samples as the original's proportional alignment here.
    assert torch.equal(features(extractor, waveform), actual)


# --- waveform handling --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sampling_rate", [8000, 16000, 22050, 48000, 96000])
def test_resampling_keeps_the_dominant_mel_bin(sampling_rate):
    extractor = AVBertFeatureExtractor(num_clips=1)
    reference = features(extractor, sine(44100))[0, 0, 0].mean(dim=-1)
    resampled = features(extractor, sine(sampling_rate), sampling_rate=sampling_rate)[0, 0, 0].mean(dim=-1)
    assert resampled.argmax() == reference.argmax()
    assert abs(resampled.max() - reference.max()) < 0.01


def test_stereo_is_averaged_to_mono():
    extractor = AVBertFeatureExtractor(num_clips=3)
    stereo = noise(120000, channels=2)
    expected = features(extractor, (stereo[0] + stereo[1]) / 2)
    assert torch.equal(features(extractor, stereo), expected)
    assert torch.equal(features(extractor, torch.from_numpy(stereo)), expected)


def test_input_types_give_identical_features():
    extractor = AVBertFeatureExtractor(num_clips=3)
    mono = noise(120000)
    expected = features(extractor, mono)
    reversed_twice = mono[::-1].copy()[::-1]  # negative strides
    variants = (mono[None], torch.from_numpy(mono), mono.astype(np.float64), mono.astype(">f4"), reversed_twice)
    for variant in (*variants, mono.tolist()):
        assert torch.equal(features(extractor, variant), expected)


@pytest.mark.parametrize(("dtype", "scale"), [(np.int16, 2**15), (np.int32, 2**31)])
def test_integer_pcm_is_scaled(dtype, scale):
    extractor = AVBertFeatureExtractor(num_clips=2)
    pcm = (noise(100000) * scale).astype(dtype)
    expected = features(extractor, pcm.astype(np.float32) / scale)
    assert torch.equal(features(extractor, pcm), expected)
    assert torch.equal(features(extractor, torch.from_numpy(pcm)), expected)


def test_output_shape_dtype_and_tensor_types():
    extractor = AVBertFeatureExtractor()
    batch = [noise(220500, seed=0), noise(100000, seed=1), noise(300000, seed=2)]
    as_torch = extractor(batch, sampling_rate=44100, return_tensors="pt")["input_features"]
    assert as_torch.shape == (3, 10, 1, 80, 128) and as_torch.dtype == torch.float32
    as_numpy = extractor(batch, sampling_rate=44100, return_tensors="np")["input_features"]
    assert isinstance(as_numpy, np.ndarray) and as_numpy.dtype == np.float32
    as_lists = extractor(batch, sampling_rate=44100)["input_features"]
    assert [item.shape for item in as_lists] == [(10, 1, 80, 128)] * 3
    np.testing.assert_array_equal(as_numpy, as_torch.numpy())
    np.testing.assert_array_equal(np.stack(as_lists), as_numpy)
    assert features(extractor, batch[0]).shape == (1, 10, 1, 80, 128)


def test_uniform_windows_follow_the_original_formula():
    extractor = AVBertFeatureExtractor(clip_samples=20000, num_clips=4)
    mono = noise(110000)
    starts = [int(90000 * i / 3) for i in range(4)]
    expected = log_mel_spectrogram(torch.stack([torch.from_numpy(mono[s : s + 20000]) for s in starts]))
    assert torch.equal(features(extractor, mono)[0], expected)
    centered = log_mel_spectrogram(torch.from_numpy(mono[45000:65000]))
    assert torch.equal(features(extractor, mono, num_clips=1)[0, 0], centered)


def test_clip_starts_are_seconds_at_the_target_rate():
    extractor = AVBertFeatureExtractor(clip_samples=20000)
    first, second = noise(100000, seed=0), noise(100000, seed=1)
    actual = features(extractor, [first, second], clip_starts=[[0.0, 1.0], [0.5, 2.0]])
    window = torch.from_numpy(second[88200:])
    expected = log_mel_spectrogram(torch.cat([window, window.new_zeros(20000 - window.numel())]))
    assert actual.shape == (2, 2, 1, 80, 128)
    assert torch.equal(actual[0, 1], log_mel_spectrogram(torch.from_numpy(first[44100:64100])))
    assert torch.equal(actual[1, 1], expected)
    # A single waveform takes a flat sequence; the start refers to the resampled audio.
    at_16k = features(extractor, sine(16000), sampling_rate=16000, clip_starts=[1.0])
    resampled = torchaudio.functional.resample(torch.from_numpy(sine(16000)), 16000, 44100)
    assert torch.equal(at_16k[0, 0], log_mel_spectrogram(resampled[44100:64100]))


def test_short_audio_is_padded_with_silence():
    extractor = AVBertFeatureExtractor()
    short = noise(50000)
    padded = torch.cat([torch.from_numpy(short), torch.zeros(94080 - 50000)])
    actual = features(extractor, short)[0]
    assert torch.equal(actual, log_mel_spectrogram(padded).expand(10, -1, -1, -1))
    beyond_the_end = features(extractor, short, clip_starts=[10.0, 1e30])
    assert (beyond_the_end == SILENCE).all()


# --- SpecAugment masking ------------------------------------------------------------------------------------------


def test_masking_is_off_by_default():
    extractor = AVBertFeatureExtractor(num_clips=3)
    mono = noise(200000)
    plain = features(extractor, mono)
    assert torch.equal(features(extractor, mono, apply_masking=False), plain)
    assert (plain != 0.0).all()
    assert (extractor.frequency_mask_param, extractor.time_mask_param) == (4, 6)


def test_masks_are_shared_by_the_clips_of_an_item():
    extractor = AVBertFeatureExtractor(num_clips=3)
    batch = [noise(200000, seed=0), noise(150000, seed=1)]
    plain = features(extractor, batch)
    widths: set[tuple[int, int]] = set()
    for seed in range(10):
        torch.manual_seed(seed)
        masked = features(extractor, batch, apply_masking=True)
        changed = masked != plain
        assert (masked[changed] == 0.0).all()
        for item in changed:
            assert (item == item[:1]).all(), "every clip of an item must get the same mask"
            region = item[0, 0]
            rows, columns = region.all(dim=1), region.all(dim=0)
            assert torch.equal(region, rows[:, None] | columns[None, :]), "masks must be full bands"
            for band, limit in ((rows, extractor.frequency_mask_param), (columns, extractor.time_mask_param)):
                positions = band.nonzero().flatten()
                assert positions.numel() <= limit
                if positions.numel():
                    assert positions[-1] - positions[0] + 1 == positions.numel(), "a mask is one contiguous band"
            widths.add((int(rows.sum()), int(columns.sum())))
    assert any(rows for rows, _ in widths) and any(columns for _, columns in widths), "no mask was ever drawn"


def test_masking_is_torchaudio_frequency_then_time_and_seeded():
    extractor = AVBertFeatureExtractor(num_clips=3)
    mono = noise(200000)
    plain = features(extractor, mono)[0]
    torch.manual_seed(7)
    masked = features(extractor, mono, apply_masking=True)[0]
    torch.manual_seed(7)
    again = features(extractor, mono, apply_masking=True)[0]
    torch.manual_seed(7)
    expected = torchaudio.functional.mask_along_axis(plain, 4, 0.0, axis=2)
    expected = torchaudio.functional.mask_along_axis(expected, 6, 0.0, axis=3)
    assert torch.equal(masked, again)
    assert torch.equal(masked, expected)


def test_gain_jitter_scales_each_window_before_the_log_mel():
    extractor = AVBertFeatureExtractor(num_clips=4)
    mono = noise(200000)
    plain = features(extractor, mono)[0]
    torch.manual_seed(3)
    jittered = features(extractor, mono, clip_gain_jitter_db=6.0)[0]
    torch.manual_seed(3)
    gains_db = (2 * torch.rand(4) - 1) * 6.0
    # Noise at 0.1 rms sits far above the log offset, so a gain g shifts every log-mel value by 2 ln g.
    expected = plain + (gains_db * math.log(10) / 10)[:, None, None, None]
    torch.testing.assert_close(jittered, expected, atol=1e-3, rtol=0)
    assert len(set(gains_db.tolist())) == 4
    assert torch.equal(features(extractor, mono, clip_gain_jitter_db=0.0)[0], plain)
    for bad in (-1.0, float("nan")):
        with pytest.raises(ValueError, match="clip_gain_jitter_db"):
            features(extractor, mono, clip_gain_jitter_db=bad)


# --- validation ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("audio", "message"),
    [
        (np.zeros(0, dtype=np.float32), "empty"),
        (np.zeros((2, 0), dtype=np.float32), "empty"),
        (np.zeros((1, 2, 1000), dtype=np.float32), r"expected \(samples,\) or \(channels, samples\)"),
        (np.array(["a", "b"]), "non-numeric"),
        (np.array([1 + 2j, 3j]), "non-numeric"),
        (torch.ones(1000, dtype=torch.bool), "expected floating point samples or int16/int32 PCM"),
        (np.zeros(1000, dtype=np.int64), "expected floating point samples or int16/int32 PCM"),
        (np.array([0.0, np.nan, 0.1], dtype=np.float32), "NaN or infinite"),
        (np.array([0.0, np.inf, 0.1], dtype=np.float32), "NaN or infinite"),
        (np.zeros((1000, 2), dtype=np.float32), r"expected \(channels, samples\)"),
    ],
)
def test_invalid_waveforms_are_rejected(audio, message):
    with pytest.raises(ValueError, match=message):
        AVBertFeatureExtractor()(audio, sampling_rate=44100)


@pytest.mark.parametrize("sampling_rate", [0, -16000, 16000.5, "44100", True])
def test_invalid_sampling_rates_are_rejected(sampling_rate):
    with pytest.raises(ValueError, match="sampling_rate must be a positive integer"):
        AVBertFeatureExtractor()(noise(1000), sampling_rate=sampling_rate)


def test_unbuildable_resampling_ratio_is_rejected():
    with pytest.raises(ValueError, match="Resample the audio to a common rate"):
        AVBertFeatureExtractor()(noise(1000), sampling_rate=44099)


@pytest.mark.parametrize(
    ("clip_starts", "num_clips", "message"),
    [
        ([[0.0, 1.0], [0.0]], None, "same number of start times"),
        ([[0.0, 1.0]], None, "one non-empty sequence of start times per waveform"),
        ([[], []], None, "one non-empty sequence"),
        ([[0.0, 1.0], [0.0, 1.0]], 3, "num_clips=3 but clip_starts has 2"),
        ([[0.0, -1.0], [0.0, 1.0]], None, "finite, non-negative"),
        ([[0.0, math.nan], [0.0, 1.0]], None, "finite, non-negative"),
    ],
)
def test_invalid_clip_starts_are_rejected(clip_starts, num_clips, message):
    with pytest.raises(ValueError, match=message):
        AVBertFeatureExtractor()(
            [noise(1000), noise(2000)], sampling_rate=44100, clip_starts=clip_starts, num_clips=num_clips
        )


@pytest.mark.parametrize(
    "kwargs", [{"num_clips": 0}, {"clip_samples": 2.5}, {"time_mask_ratio": 1.5}, {"log_offset": 0.0}]
)
def test_invalid_settings_are_rejected(kwargs):
    with pytest.raises(ValueError):
        AVBertFeatureExtractor(**kwargs)


def test_missing_sampling_rate_and_unknown_arguments_warn():
    extractor = AVBertFeatureExtractor(num_clips=1)
    with CaptureLogger(logger) as captured:
        extractor(noise(1000))
    assert "strongly recommended to pass the `sampling_rate`" in captured.out
    with CaptureLogger(logger) as captured:
        extractor(noise(1000), sampling_rate=44100, padding="longest")
    assert "ignores the unsupported keyword arguments ['padding']" in captured.out


# --- saving and loading -------------------------------------------------------------------------------------------

CUSTOM_SETTINGS = {
    "feature_size": 64,
    "sampling_rate": 16000,
    "num_clips": 4,
    "clip_samples": 32000,
    "num_time_frames": 96,
    "log_offset": 1e-5,
    "frequency_mask_ratio": 0.1,
    "time_mask_ratio": 0.2,
    "padding_value": -1.0,
}


def test_defaults_are_the_original_kinetics_sounds_setting():
    settings = AVBertFeatureExtractor().to_dict()
    assert {name: settings[name] for name in CUSTOM_SETTINGS} == {
        "feature_size": 80,
        "sampling_rate": 44100,
        "num_clips": 10,
        "clip_samples": int(44100 * 32 * 2 / 30),
        "num_time_frames": 128,
        "log_offset": 1e-6,
        "frequency_mask_ratio": 0.05,
        "time_mask_ratio": 0.05,
        "padding_value": 0.0,
    }


def test_save_and_load_round_trip(tmp_path):
    extractor = AVBertFeatureExtractor(**CUSTOM_SETTINGS)
    extractor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved["auto_map"] == {"AutoFeatureExtractor": "feature_extraction_avbert.AVBertFeatureExtractor"}
    assert (tmp_path / "feature_extraction_avbert.py").is_file()
    for loaded in (AVBertFeatureExtractor.from_pretrained(tmp_path), AutoFeatureExtractor.from_pretrained(tmp_path)):
        assert type(loaded) is AVBertFeatureExtractor
        assert {name: getattr(loaded, name) for name in CUSTOM_SETTINGS} == CUSTOM_SETTINGS
        assert loaded.to_dict() == extractor.to_dict()
    output = features(AutoFeatureExtractor.from_pretrained(tmp_path), noise(40000))
    assert output.shape == (1, 4, 1, 64, 96)


def test_saved_folder_loads_as_remote_code(tmp_path):
    AVBertFeatureExtractor(num_clips=3).save_pretrained(tmp_path / "saved")
    script = (
        "import sys, numpy as np\n"
        "from transformers import AutoFeatureExtractor\n"
        "extractor = AutoFeatureExtractor.from_pretrained(sys.argv[1], trust_remote_code=True)\n"
        "assert type(extractor).__module__.startswith('transformers_modules'), type(extractor).__module__\n"
        "output = extractor(np.full(50000, 0.1, np.float32), sampling_rate=44100, return_tensors='pt')\n"
        "print(tuple(output['input_features'].shape))\n"
    )
    environment = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "saved")],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "(1, 3, 1, 80, 128)"


# --- real data ----------------------------------------------------------------------------------------------------


@needs_esc50
def test_all_esc50_clips_go_through():
    paths = sorted(ESC50_AUDIO.glob("*.flac"))
    assert len(paths) == 414
    extractor = AVBertFeatureExtractor()
    outputs = [
        features(extractor, [decode_audio(path) for path in paths[start : start + 64]], num_clips=1)
        for start in range(0, len(paths), 64)
    ]
    stacked = torch.cat(outputs)
    assert stacked.shape == (414, 1, 1, 80, 128)
    assert torch.isfinite(stacked).all()
