"""AVBERT feature extractor: a waveform becomes one log-mel spectrogram per video clip, computed as the original did.

The original data pipeline (``data/transform.py``, ``data/esc50.py``, ``data/kinetics_sounds.py``) makes the audio
mono, resamples it to 44.1 kHz, cuts one window per clip (2.133 s under a 32-frame Kinetics-Sounds clip, 2 s for
ESC-50), and turns each window into an 80 x 128 natural-log mel spectrogram whose STFT size is chosen so that the
window yields exactly 128 frames. Training adds SpecAugment-style frequency and time masks, the same for every clip
of a sequence. This module reproduces that with torchaudio so that converted checkpoints see the inputs they were
trained on.

Deliberate differences from the original (all documented where they happen):

- a window that runs past the end of the audio is zero-padded to the full window length before the log-mel (the
  original computed a smaller STFT of the shorter slice, whose frames then span less time than the video clip);
- clip windows can be placed at explicit start times (seconds) so the processor can align them with the video clips
  by timestamp; the original aligned by fraction of duration;
- ``num_clips=1`` takes the centered window (the original's start formula divides by ``num_clips - 1``);
- the masks use ``torchaudio.functional.mask_along_axis`` (integer mask bounds) for every task, where the original's
  Kinetics-Sounds loader used its own variant with float bounds.

This file is copied next to saved checkpoints as remote code (with the clip-timing module it imports).
"""

import functools
import math
import numbers
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torchaudio
from transformers.feature_extraction_sequence_utils import SequenceFeatureExtractor
from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import AudioKwargs
from transformers.utils import TensorType, logging

from .clip_sampling import AUDIO_ALIGNMENTS, uniform_starts
from .media_decoding import AudioTrack, MediaDecodeError

logger = logging.get_logger(__name__)

AudioInput = np.ndarray | torch.Tensor | Sequence[float]
"""One waveform: ``(samples,)`` or ``(channels, samples)``, float samples or int16/int32 PCM."""

# int16 / int32 PCM is scaled by 2 ** (bits - 1) into [-1, 1), as audio loaders (and torchaudio 0.6, which the
# original used) do, so integer and float inputs of the same sound give the same features.
_PCM_SCALES = {torch.int16: 2.0**15, torch.int32: 2.0**31}

# torchaudio's sinc resampler builds a (new, old + 2 * width) kernel over the *reduced* rate ratio. For nearly coprime
# rates (44099 Hz -> 44100 Hz) that is ~2e9 float64 values, so such rates are refused with a clear error instead of
# exhausting memory. 2 ** 27 still admits every common rate and odd ones such as 44056 Hz (about 10 s per call).
_MAX_RESAMPLE_KERNEL_SIZE = 2**27

# Windows are transformed in chunks: a batched STFT amortizes per-call overhead, but one over hundreds of windows builds
# a complex spectrogram of several hundred MB and runs 1.5-2x slower per window than chunks of a few dozen.
_WINDOWS_PER_STFT = 32


# What a file without sound gets when the sound was asked for, and what to do about it.
NO_SOUND_PROBLEM = (
    "no audio stream, but the sound track was asked for (an audio-visual model needs it). For videos without sound "
    "use a visual-only model (use_audio=False), or pass load_audio_in_video=False for the frames alone"
)


@functools.lru_cache(maxsize=32)
def _mel_spectrogram_transform(
    sampling_rate: int, n_fft: int, num_mel_bins: int, device: torch.device
) -> torchaudio.transforms.MelSpectrogram:
    """Build (once per STFT size and device) the mel transform the original used, with every default spelled out.

    The original relied on torchaudio 0.6 defaults, which torchaudio 2.x keeps: periodic Hann window of n_fft samples,
    hop n_fft // 2, centered reflect-padded STFT, power 2, HTK mel scale from 0 Hz to Nyquist, no filter-bank
    normalization. Building the filter bank costs more than a short STFT, hence the cache.
    """
    with warnings.catch_warnings():
        # Short windows (e.g. the 23520-sample tiny setting) have fewer FFT bins than the low mel filters need, so some
        # filters are empty. The original had the same empty filters; the warning would only be noise here.
        warnings.filterwarnings("ignore", message="At least one mel filterbank has all zero values")
        transform = torchaudio.transforms.MelSpectrogram(
            sample_rate=sampling_rate,
            n_fft=n_fft,
            win_length=n_fft,
            hop_length=n_fft // 2,
            f_min=0.0,
            f_max=sampling_rate / 2,
            n_mels=num_mel_bins,
            window_fn=torch.hann_window,
            power=2.0,
            normalized=False,
            center=True,
            pad_mode="reflect",
            norm=None,
            mel_scale="htk",
        )
    return transform.to(device)


def log_mel_spectrogram(
    window: torch.Tensor,
    sampling_rate: int = 44100,
    num_mel_bins: int = 80,
    num_time_frames: int = 128,
    log_offset: float = 1e-6,
) -> torch.Tensor:
    """Natural-log mel spectrogram of an audio window, with the original's window-dependent STFT size.

    The STFT size is n_fft = 2 * (samples // num_time_frames + 1) with hop n_fft // 2 (the original's rule, with its
    fixed 128 frames generalized to `num_time_frames`). A centered STFT has 1 + samples // hop frames, and since
    hop > samples / num_time_frames that is never more than `num_time_frames` (the original's truncation can never
    trigger); the usual window lengths (88200, 94080, 23520) give exactly that many. The result is
    ``log(mel + log_offset)`` (no mean/std normalization). A window that yields fewer frames (e.g. 8000 samples: 127)
    is padded on the right with 0.0 *in the log domain*, as the original does (not ``log(log_offset)``, the value of
    silence).

    Computed in float32, the original's precision. It matches the original's stored tensors up to FFT rounding, which
    differs between CPU builds: up to ~4e-3 in near-silent bins (values below -10), under 1e-4 for values above -5.

    Args:
        window (`torch.Tensor` of shape `(..., samples)`): mono waveform(s), float, at `sampling_rate`.
        sampling_rate (`int`): sample rate of `window` in Hz; the mel scale spans 0 Hz to sampling_rate / 2.
        num_mel_bins (`int`): number of mel filters.
        num_time_frames (`int`): number of time frames; sets the STFT size, missing frames are zero-padded.
        log_offset (`float`): added to the mel power before the log, so silence maps to log(log_offset).

    Returns:
        `torch.Tensor` of shape `(..., 1, num_mel_bins, num_time_frames)`: the leading dimensions of `window` are kept
        and a channel axis of size 1 (the audio CNN's input channel) is inserted, so a 1-D window gives (1, 80, 128).
    """
    n_fft = 2 * (window.shape[-1] // num_time_frames + 1)
    transform = _mel_spectrogram_transform(sampling_rate, n_fft, num_mel_bins, window.device)
    log_mel = torch.log(transform(window.to(torch.float32)) + log_offset)
    log_mel = torch.nn.functional.pad(log_mel, (0, num_time_frames - log_mel.shape[-1]), value=0.0)
    return log_mel.unsqueeze(-3)


def _check_positive_int(name: str, value: Any) -> int:
    """Reject bools, floats and non-positive values early, with the argument's name, instead of deep in torch."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    return int(value)


def _clip_windows(waveform: torch.Tensor, starts: Sequence[int], clip_samples: int) -> torch.Tensor:
    """Cut `(len(starts), clip_samples)` windows, zero-filling whatever lies past the end of the waveform.

    The original computed the log-mel of the shorter slice instead, with a smaller STFT whose frames then span less
    time than the video clip (it happens only for audio shorter than one window). Padding with silence keeps every
    clip's frames at the same time scale; a start past the end gives an all-silent window.
    """
    windows = waveform.new_zeros(len(starts), clip_samples)
    for row, start in zip(windows, starts, strict=True):
        segment = waveform[start : start + clip_samples]
        row[: segment.numel()] = segment
    return windows


def _is_batch(raw_audio: Any) -> bool:
    """A list or tuple of arrays, tensors or lists is a batch; an array, tensor or list of numbers is one waveform."""
    return (
        isinstance(raw_audio, list | tuple)
        and len(raw_audio) > 0
        and all(isinstance(item, np.ndarray | torch.Tensor | list | tuple) for item in raw_audio)
    )


def _to_mono_float32(audio: AudioInput, index: int) -> torch.Tensor:
    """Validate one waveform and return it as a 1-D float32 CPU tensor; several channels are averaged (the original)."""
    if not isinstance(audio, torch.Tensor):
        array = np.asarray(audio)
        if array.dtype.kind not in "fi":
            raise ValueError(f"Waveform {index} has non-numeric dtype {array.dtype}; expected float samples or PCM.")
        # torch.from_numpy rejects non-native byte orders and negative strides and warns on read-only buffers (e.g.
        # audio decoded by the pipeline's ffmpeg), so those become a native, C-ordered, writable copy.
        audio = torch.from_numpy(np.require(array, dtype=array.dtype.newbyteorder("="), requirements=["C", "W"]))
    audio = audio.detach().cpu()
    if audio.dtype.is_floating_point:
        waveform = audio.to(torch.float32)
    elif audio.dtype in _PCM_SCALES:
        waveform = audio.to(torch.float32) / _PCM_SCALES[audio.dtype]
    else:
        raise ValueError(
            f"Waveform {index} has dtype {audio.dtype}; expected floating point samples or int16/int32 PCM."
        )
    if waveform.numel() == 0:
        raise ValueError(f"Waveform {index} is empty.")
    if waveform.dim() not in (1, 2):
        raise ValueError(
            f"Waveform {index} has shape {tuple(waveform.shape)}; expected (samples,) or (channels, samples). "
            "Pass a batch as a list of waveforms."
        )
    if waveform.dim() == 2:
        if waveform.shape[0] > waveform.shape[1]:
            raise ValueError(
                f"Waveform {index} has shape {tuple(waveform.shape)}: expected (channels, samples), it looks like "
                "(samples, channels). Transpose it."
            )
        waveform = waveform.mean(dim=0)
    if not torch.isfinite(waveform).all():
        raise ValueError(f"Waveform {index} contains NaN or infinite samples.")
    return waveform


class AVBertAudioKwargs(AudioKwargs, total=False):
    """Arguments of the sound on top of transformers' ``AudioKwargs``.

    clip_starts: start time in seconds of every window (default: under each clip, or spread uniformly for audio alone).
    num_clips: windows per waveform; with frames it is the video's clip count.
    audio_alignment: ``"timestamp"`` (a clip's window starts at the clip's time) or ``"fraction"`` (the original: the
        same fraction of the sound as of the video); default: the feature extractor's ``audio_alignment``.
    apply_masking: training-time frequency and time masks (default for a file: ``do_train_augmentation``).
    clip_gain_jitter_db: training-time per-window gain, uniform in +-this many dB.
    """

    clip_starts: Any
    num_clips: int | None
    audio_alignment: str | None
    apply_masking: bool | None
    clip_gain_jitter_db: int | float | None


class AVBertFeatureExtractor(SequenceFeatureExtractor):
    r"""Turns waveforms into per-clip log-mel spectrograms for AVBERT, following the original data pipeline.

    Each waveform is made mono (mean over channels), resampled to `sampling_rate` with
    `torchaudio.functional.resample` if needed, cut into `num_clips` windows of `clip_samples` samples and turned into
    `(1, feature_size, num_time_frames)` log-mel spectrograms by [`log_mel_spectrogram`]. The defaults are the original
    Kinetics-Sounds setting; ESC-50 used `clip_samples=88200` (2 s).

    Args:
        feature_size (`int`, defaults to 80): number of mel bins.
        sampling_rate (`int`, defaults to 44100): rate in Hz the audio is resampled to before the log-mel.
        num_clips (`int`, defaults to 10): windows per waveform when `__call__` gets no `clip_starts`.
        clip_samples (`int`, defaults to 94080): window length in samples, int(44100 * 32 * 2 / 30): the 2.133 s under
            one 32-frame video clip sampled every 2nd frame at 30 fps.
        num_time_frames (`int`, defaults to 128): STFT frames per window (sets the STFT size, see
            [`log_mel_spectrogram`]).
        log_offset (`float`, defaults to 1e-6): added to the mel power before the natural log.
        frequency_mask_ratio (`float`, defaults to 0.05): training-time frequency mask parameter as a fraction of
            `feature_size` (int(80 * 0.05) = 4 bins).
        time_mask_ratio (`float`, defaults to 0.05): training-time time mask parameter as a fraction of
            `num_time_frames` (int(128 * 0.05) = 6 frames).
        padding_value (`float`, defaults to 0.0): the [`SequenceFeatureExtractor`] padding value, used by its `pad`.
            Missing STFT frames are padded with 0.0 in the log domain regardless, as in the original.
        audio_alignment (`str`, defaults to `"timestamp"`): where [`AVBertProcessor`] places the window under each
            video clip: at the clip's presentation time, or `"fraction"` (the original) at the same fraction of the
            sound as of the video.
    """

    model_input_names = ["input_features"]

    def __init__(
        self,
        feature_size: int = 80,
        sampling_rate: int = 44100,
        num_clips: int = 10,
        clip_samples: int = 94080,
        num_time_frames: int = 128,
        log_offset: float = 1e-6,
        frequency_mask_ratio: float = 0.05,
        time_mask_ratio: float = 0.05,
        padding_value: float = 0.0,
        audio_alignment: str = "timestamp",
        **kwargs: Any,
    ) -> None:
        super().__init__(
            feature_size=_check_positive_int("feature_size", feature_size),
            sampling_rate=_check_positive_int("sampling_rate", sampling_rate),
            padding_value=padding_value,
            **kwargs,
        )
        self.num_clips = _check_positive_int("num_clips", num_clips)
        self.clip_samples = _check_positive_int("clip_samples", clip_samples)
        self.num_time_frames = _check_positive_int("num_time_frames", num_time_frames)
        if not log_offset > 0:
            raise ValueError(f"log_offset must be positive (it keeps log() finite on silence), got {log_offset!r}.")
        for name, ratio in (("frequency_mask_ratio", frequency_mask_ratio), ("time_mask_ratio", time_mask_ratio)):
            if not 0.0 <= ratio <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {ratio!r}.")
        if audio_alignment not in AUDIO_ALIGNMENTS:
            raise ValueError(f"audio_alignment must be one of {AUDIO_ALIGNMENTS}, got {audio_alignment!r}.")
        self.log_offset = log_offset
        self.audio_alignment = audio_alignment
        self.frequency_mask_ratio = frequency_mask_ratio
        self.time_mask_ratio = time_mask_ratio

    @property
    def frequency_mask_param(self) -> int:
        """Largest frequency mask torchaudio may draw, in mel bins (4 by default, as the original)."""
        return int(self.feature_size * self.frequency_mask_ratio)

    @property
    def time_mask_param(self) -> int:
        """Largest time mask torchaudio may draw, in frames (6 by default, as the original)."""
        return int(self.num_time_frames * self.time_mask_ratio)

    def __call__(
        self,
        raw_audio: AudioInput | Sequence[AudioInput],
        sampling_rate: int | None = None,
        clip_starts: Sequence[float] | Sequence[Sequence[float]] | np.ndarray | torch.Tensor | None = None,
        num_clips: int | None = None,
        apply_masking: bool = False,
        clip_gain_jitter_db: float = 0.0,
        return_tensors: str | TensorType | None = None,
        **kwargs: Any,
    ) -> BatchFeature:
        """Compute the per-clip log-mel spectrograms of one waveform or a batch of them.

        Args:
            raw_audio: one waveform or a list of them. A waveform is a numpy array or torch tensor (or a list of
                numbers) of shape `(samples,)` or `(channels, samples)`, float samples in [-1, 1] or int16/int32 PCM
                (scaled by 2 ** 15 / 2 ** 31). Channels are averaged to mono.
            sampling_rate (`int`, *optional*): the rate of `raw_audio` in Hz. Audio at another rate than
                `self.sampling_rate` is resampled (torchaudio's sinc interpolation, as the original). If omitted, a
                warning is logged and the audio is assumed to be at `self.sampling_rate`.
            clip_starts (*optional*): start time in **seconds** of every window, one sequence of the same length per
                waveform (a flat sequence is accepted for a single waveform), e.g. the timestamps of the video clips.
                Each time becomes the sample int(round(t * self.sampling_rate)) of the resampled audio: the nearest
                sample, ties to even; a start at or past the end gives a silent window. If omitted, `num_clips` windows
                are spread uniformly over the audio as the original did (first window at the start, last one ending at
                the end; centered for a single clip).
            num_clips (`int`, *optional*): overrides `self.num_clips`; must equal the length of `clip_starts` if both
                are given.
            apply_masking (`bool`, defaults to `False`): training-time SpecAugment: one frequency mask and then one time
                mask (masked values 0.0), drawn from torch's global RNG (seed it with `torch.manual_seed`). All clips of
                one waveform get the same masks, as in the original Kinetics-Sounds loader; waveforms of a batch get
                independent ones.
            clip_gain_jitter_db (`float`, defaults to 0.0): training-time gain augmentation (not in the original; used
                for pretraining): every window is scaled by its own gain, uniform in +-`clip_gain_jitter_db` dB and
                drawn from torch's global RNG, before its log-mel. Independent per clip, so that loudness cannot tell
                the clips of one recording from another's.
            return_tensors (`str` or [`~utils.TensorType`], *optional*): `"pt"` or `"np"` for one stacked tensor;
                by default a list with one numpy array per waveform.

        Returns:
            [`BatchFeature`] with `input_features` of shape `(batch, num_clips, 1, feature_size, num_time_frames)`,
            float32. A single waveform gets a batch dimension of 1.

        Windows that run past the end of the audio are zero-padded with silence to `clip_samples` before the log-mel;
        the original computed a shorter STFT there instead.
        """
        if kwargs:
            logger.warning(f"{type(self).__name__} ignores the unsupported keyword arguments {sorted(kwargs)}.")
        if sampling_rate is None:
            logger.warning(
                f"It is strongly recommended to pass the `sampling_rate` argument to `{type(self).__name__}()`. "
                f"Failing to do so can result in silent errors that might be hard to debug. Assuming the audio is "
                f"at {self.sampling_rate} Hz."
            )
            sampling_rate = self.sampling_rate
        sampling_rate = _check_positive_int("sampling_rate", sampling_rate)
        if not (math.isfinite(clip_gain_jitter_db) and clip_gain_jitter_db >= 0):
            raise ValueError(f"clip_gain_jitter_db must be a finite number >= 0, got {clip_gain_jitter_db!r}.")

        batched = _is_batch(raw_audio)
        items = raw_audio if batched else [raw_audio]
        waveforms = [self._resample(_to_mono_float32(audio, index), sampling_rate) for index, audio in enumerate(items)]
        starts = self._clip_start_samples([waveform.numel() for waveform in waveforms], clip_starts, num_clips, batched)

        windows = torch.cat(
            [
                _clip_windows(waveform, item_starts, self.clip_samples)
                for waveform, item_starts in zip(waveforms, starts, strict=True)
            ]
        )
        if clip_gain_jitter_db > 0:
            gains_db = (2 * torch.rand(len(windows)) - 1) * clip_gain_jitter_db
            windows = windows * torch.pow(10.0, gains_db / 20)[:, None]  # torchaudio.functional.gain, one per window
        features = torch.cat(
            [
                log_mel_spectrogram(chunk, self.sampling_rate, self.feature_size, self.num_time_frames, self.log_offset)
                for chunk in windows.split(_WINDOWS_PER_STFT)
            ]
        ).unflatten(0, (len(waveforms), -1))
        if apply_masking:
            features = torch.stack([self._mask(item_features) for item_features in features])
        return BatchFeature({"input_features": list(features.numpy())}, tensor_type=return_tensors)

    def log_mels_of_windows(
        self,
        read_windows: Callable[[list[tuple[int, int]]], list[np.ndarray]],
        sampling_rate: int,
        clip_starts: np.ndarray,
        apply_masking: bool = False,
        clip_gain_jitter_db: float = 0.0,
    ) -> torch.Tensor:
        """The features of ``__call__(waveform, sampling_rate, clip_starts=[clip_starts])`` for one waveform that is
        read only around its windows: ``read_windows([(start, stop), ...])`` returns those samples of it (zero past
        its end), so memory and resampling are bounded by the clips, not by the length of the sound.

        Each window is read with a margin and resampled on its own, starting on a sample where the rate ratio's period
        begins, so its samples fall on the grid of a resampling of the whole waveform (the same values away from the
        waveform's ends). Returns ``(1, clips, 1, feature_size, num_time_frames)``.
        """
        sampling_rate = _check_positive_int("sampling_rate", sampling_rate)
        wanted = np.rint(np.asarray(clip_starts, dtype=np.float64) * self.sampling_rate).astype(np.int64)
        divisor = math.gcd(sampling_rate, self.sampling_rate)
        period_in, period_out = sampling_rate // divisor, self.sampling_rate // divisor
        margin = 0 if sampling_rate == self.sampling_rate else period_in * max(1, -(-4096 // period_in))
        starts = np.maximum((wanted // period_out) * period_in - margin, 0)
        stops = -(-(wanted + self.clip_samples) * period_in // period_out) + margin
        segments = read_windows([(int(a), int(b)) for a, b in zip(starts, stops, strict=True)])
        offsets = wanted - starts // period_in * period_out  # starts are whole periods: exact
        features = self(
            list(segments),
            sampling_rate=sampling_rate,
            clip_starts=(offsets[:, None] / self.sampling_rate).tolist(),
            clip_gain_jitter_db=clip_gain_jitter_db,
            return_tensors="pt",
        )["input_features"][:, 0]
        return (self._mask(features) if apply_masking else features)[None]

    def log_mels_under_clips(
        self,
        source: Any,
        metadata: Any,
        sampling: Any,
        alignment: str | None = None,
        train: bool = False,
        clip_starts: Any = None,
        apply_masking: bool | None = None,
        clip_gain_jitter_db: float | None = None,
    ) -> torch.Tensor:
        """Log-mels ``(1, clips, 1, mel, time)`` of the sound under each sampled clip of a media file, from the video's
        ``metadata`` and ``sampling`` (a ``ClipSampling``); only the windows are read and resampled, so memory follows
        the clips, not the length of the file. ``train`` turns on masking and the gain jitter unless they are given."""
        try:
            track = AudioTrack(source)
        except MediaDecodeError as error:
            if error.problem != "no audio stream":
                raise
            raise MediaDecodeError(error.source_name, NO_SOUND_PROBLEM) from error
        alignment = alignment or self.audio_alignment
        if clip_starts is not None:
            seconds = np.asarray(clip_starts, dtype=np.float64).reshape(-1)
        else:
            seconds = self.window_starts(
                sampling,
                metadata,
                alignment,
                # The original's rule needs the whole track's length: one more decoding pass, no waveform kept.
                audio_duration=track.num_samples / track.sample_rate if alignment == "fraction" else 0.0,
                audio_start_time=track.start_time,
                frame_times=metadata.frame_times,
                video_start_time=metadata.start_time,
            )
        return self.log_mels_of_windows(
            track.read_windows,
            track.sample_rate,
            seconds,
            apply_masking=train if apply_masking is None else bool(apply_masking),
            clip_gain_jitter_db=float(clip_gain_jitter_db or 0.0) if train else 0.0,
        )

    def window_starts(self, sampling: Any, metadata: Any, alignment: str, **timing: Any) -> np.ndarray:
        """Start of the sound window under each sampled clip of a video (``ClipSampling.audio_window_starts``), for
        windows of this extractor's length."""
        return sampling.audio_window_starts(
            metadata.total_num_frames,
            metadata.fps,
            alignment=alignment,
            window_seconds=self.clip_samples / self.sampling_rate,
            **timing,
        )

    def _resample(self, waveform: torch.Tensor, sampling_rate: int) -> torch.Tensor:
        """Resample to `self.sampling_rate` with torchaudio's windowed-sinc resampler, the original's own method.

        The original used torchaudio 0.6's Kaldi-style resampler (lowpass width 6); torchaudio 2.x has the same design
        and defaults, but its output was not compared with 0.6's (no fixture exercises resampling).
        """
        if sampling_rate == self.sampling_rate:
            return waveform
        divisor = math.gcd(sampling_rate, self.sampling_rate)
        if (sampling_rate // divisor) * (self.sampling_rate // divisor) > _MAX_RESAMPLE_KERNEL_SIZE:
            raise ValueError(
                f"Resampling {sampling_rate} Hz to {self.sampling_rate} Hz needs a sinc kernel of "
                f"{sampling_rate // divisor} x {self.sampling_rate // divisor} taps, too large to build. Resample the "
                "audio to a common rate (e.g. 48000 or 44100 Hz) first."
            )
        return torchaudio.functional.resample(waveform, sampling_rate, self.sampling_rate)

    def _clip_start_samples(
        self,
        num_samples: list[int],
        clip_starts: Sequence[float] | Sequence[Sequence[float]] | np.ndarray | torch.Tensor | None,
        num_clips: int | None,
        batched: bool,
    ) -> list[list[int]]:
        """First sample of every window of every waveform: uniform by default, else from `clip_starts` in seconds."""
        if clip_starts is None:
            count = self.num_clips if num_clips is None else _check_positive_int("num_clips", num_clips)
            return [
                [int(start) for start in uniform_starts(length, self.clip_samples, count)] for length in num_samples
            ]
        try:
            seconds = np.asarray(clip_starts, dtype=np.float64)
        except (TypeError, ValueError) as error:
            raise ValueError(
                "clip_starts must hold the same number of start times (seconds) for every waveform."
            ) from error
        if not batched and seconds.ndim == 1:
            seconds = seconds[None]
        if seconds.ndim != 2 or seconds.shape[0] != len(num_samples) or seconds.shape[1] == 0:
            raise ValueError(
                f"clip_starts must hold one non-empty sequence of start times per waveform ({len(num_samples)} "
                f"waveform(s)), got an array of shape {seconds.shape}."
            )
        if num_clips is not None and num_clips != seconds.shape[1]:
            raise ValueError(f"num_clips={num_clips} but clip_starts has {seconds.shape[1]} start times per waveform.")
        if not np.isfinite(seconds).all() or (seconds < 0).any():
            raise ValueError("clip_starts must be finite, non-negative times in seconds.")
        # Clamped to the audio length (a later start is just as silent) so that huge times cannot overflow int64.
        samples = np.minimum(np.rint(seconds * self.sampling_rate), np.asarray(num_samples)[:, None])
        return samples.astype(np.int64).tolist()

    def _mask(self, features: torch.Tensor) -> torch.Tensor:
        """SpecAugment one waveform's `(clips, 1, freq, time)` features with one mask shared by all its clips.

        `mask_along_axis` draws a single (width, start) per call for the whole tensor it is given (unlike
        `mask_along_axis_iid`), so masking the clip stack at once gives every clip the same band, as the original's
        `mask_along_axis_consistent` did. With v ~ U(0, param), the width is floor(v) (so at most param - 1) and the
        start floor(U(0, size - v)).
        """
        features = torchaudio.functional.mask_along_axis(features, self.frequency_mask_param, 0.0, axis=2)
        return torchaudio.functional.mask_along_axis(features, self.time_mask_param, 0.0, axis=3)


__all__ = ["AVBertAudioKwargs", "AVBertFeatureExtractor", "log_mel_spectrogram"]
