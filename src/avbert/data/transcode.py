"""Training-geometry transcodes: every file re-encoded once, by ``ffmpeg``, at the size and rate a recipe trains on.

``avbert-prepare shards SOURCE OUT --transcode RECIPE`` writes these instead of the files as they are. A Kinetics-Sounds
video at 340x256, 30 fps and 44.1 kHz stereo is decoded in every epoch at full size, half of its frames thrown away by
the clip stride and every kept frame shrunk to a short side of at most 160; the transcode stores it at that short side
and at the rate the stride keeps (15 fps), its sound mono at the feature extractor's rate, so a training worker decodes
a quarter of the pixels and no sample it does not use.

The geometry (``TranscodeSettings.for_recipe``) comes from the recipe's processor (or a saved one): short side =
``max(train_jitter_scales)``, frame rate = ``target_fps / frame_sampling_rate``, sound at the feature extractor's
``sampling_rate``, one channel (the extractor averages the channels anyway). A smaller source is never upscaled and a
lower frame rate never raised. A visual recipe drops the sound, an audio recipe keeps only the sound.

Clip timing needs nothing new: a clip spans ``num_frames * frame_sampling_rate / target_fps`` seconds at any frame rate
(``avbert.clip_sampling``), so at 15 fps it takes every frame of the same stretch of time, and the sound windows start
at the clips' times. The settings are stored in the manifest (``ShardManifest.transcode``) and checked against the
processor that trains on the shards (``check_transcode``): a processor that would upscale the frames, sample a higher
frame rate than was kept, read a stream that was dropped or another sound rate stops with the field to fix.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..media_decoding import MediaDecodeError, probe

__all__ = ["TranscodeSettings", "check_transcode", "transcode_file", "transcode_files"]

# Chosen by measuring a Kinetics-Sounds worker on the transcodes of three real videos (docs/training.md,
# "Training-geometry shards"): MPEG-4 part 2 at q 5 (no B-frames, a keyframe every 30 frames: a seek lands at most
# 2 s before a clip) gave 11.7 samples per CPU second against 9.7 for H.264 `-tune fastdecode` at CRF 20 and 10.2 at
# CRF 23 without B-frames, at the same file size and the same parity with the source (VP9
# decoded slower still). AAC sound decodes as fast as FLAC at a fifth of its bytes, and its loss under a
# log-mel (0.003 mean on a tone) is far below the tolerance the parity test states.
VIDEO_CODEC = ("mpeg4", "-q:v", "5", "-g", "30", "-bf", "0", "-pix_fmt", "yuv420p")
SOUND_CODEC = ("aac", "-b:a", "128k")
# MP4: exact timestamps (Matroska rounds them to milliseconds), and the AAC encoder's delay is an edit list that the
# decoder honours, so picture and sound keep their times.
CONTAINER = "mp4"
# Sound alone (an audio recipe): FLAC, lossless, whose 4096-sample frames decode faster per sample than AAC's 1024:
# ESC-50's sources are FLAC already, and the size of the picture that AAC saves next to does not exist here.
SOUND_ONLY_CODEC = ("flac",)
AUDIO_CONTAINER = "flac"
# A rate within this of the wanted one is taken as it is (29.97 for 30): resampling it would only drop frames.
_RATE_TOLERANCE = 0.01
_STDERR_LINES = 3


@dataclass(frozen=True)
class TranscodeSettings:
    """How the files of a manifest were re-encoded; stored as the manifest's ``transcode`` entry.

    ``short_side`` and ``fps`` are ceilings (a smaller or slower source keeps its own); ``None`` for a stream that was
    dropped: no video (``short_side``/``fps``/``video_codec``) for an audio recipe, no sound for a visual one.
    """

    recipe: str
    modality: str
    short_side: int | None
    fps: float | None
    sound_rate: int | None
    sound_channels: int | None
    video_codec: str | None
    sound_codec: str | None
    container: str
    ffmpeg: str

    @classmethod
    def for_recipe(cls, recipe: str, modality: str, video_processor: Any, feature_extractor: Any) -> TranscodeSettings:
        """The training geometry of ``recipe`` (of ``modality``) under these processors (the recipe's defaults or a
        saved model's)."""
        video = modality != "audio"
        sound = modality != "visual"
        return cls(
            recipe=recipe,
            modality=modality,
            short_side=max(int(scale) for scale in video_processor.train_jitter_scales) if video else None,
            fps=float(video_processor.target_fps) / int(video_processor.frame_sampling_rate) if video else None,
            sound_rate=int(feature_extractor.sampling_rate) if sound else None,
            sound_channels=1 if sound else None,
            video_codec=" ".join(VIDEO_CODEC) if video else None,
            sound_codec=" ".join(SOUND_CODEC if video else SOUND_ONLY_CODEC) if sound else None,
            container=CONTAINER if video else AUDIO_CONTAINER,
            ffmpeg=ffmpeg_version(),
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TranscodeSettings:
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def ffmpeg_arguments(
        self, source: Path, source_fps: float | None, source_channels: int | None, output: Path
    ) -> list[str]:
        """The ``ffmpeg`` command that re-encodes ``source`` (of frame rate ``source_fps`` and ``source_channels``
        sound channels) to ``output``."""
        command = ["ffmpeg", "-nostdin", "-v", "error", "-y", "-threads", "1", "-i", str(source), "-map_metadata", "-1"]
        command += ["-sn", "-dn"]
        if self.short_side is None:
            command += ["-vn"]
        else:
            side = self.short_side
            # Short side to `side` (never up), long side by the aspect, both even (4:2:0 needs it); after autorotate.
            filters = [
                f"scale=w='if(lte(iw,ih),trunc(min(iw,{side})/2)*2,-2)':h='if(lte(iw,ih),-2,trunc(min(ih,{side})/2)*2)'"
                ":flags=bicubic"
            ]
            if source_fps is not None and self.fps is not None and source_fps > self.fps + _RATE_TOLERANCE:
                filters.append(f"fps={self.fps:g}")
            command += ["-map", "0:v:0", "-vf", ",".join(filters), "-c:v", *self.video_codec.split()]
        if self.sound_rate is None:
            command += ["-an"]
        else:
            command += ["-map", "0:a:0"]
            if source_channels and source_channels > 1 and self.sound_channels == 1:
                # The mean of the channels, as the feature extractor takes it: ffmpeg's own downmix (-ac 1) is 3 dB
                # louder for stereo and weighs the channels of other layouts unequally.
                mean = "+".join(f"{1 / source_channels:.10g}*c{channel}" for channel in range(source_channels))
                command += ["-af", f"pan=mono|c0={mean}"]
            command += ["-ac", str(self.sound_channels), "-ar", str(self.sound_rate)]
            command += ["-c:a", *self.sound_codec.split()]
        return [*command, "-threads", "1", str(output)]


@functools.cache
def ffmpeg_version() -> str:
    """``ffmpeg -version``'s first line (what the manifest records); an error saying how to get it when absent."""
    try:
        result = subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError) as error:
        raise ValueError(f"--transcode needs the ffmpeg program on PATH ({error}); install ffmpeg") from error
    return result.stdout.splitlines()[0].strip()


def transcode_file(source: Path, output: Path, settings: TranscodeSettings) -> str | None:
    """Re-encode ``source`` to ``output``; ``None`` when it worked, else why not (ffmpeg's last error lines)."""
    try:
        info = probe(source)
    except MediaDecodeError as error:
        return str(error).removeprefix(f"{source}: ")
    if settings.short_side is not None and info.video is None:
        return "no video stream to transcode"
    if settings.sound_rate is not None and info.audio is None:
        return "no audio stream to transcode"
    fps = info.video.fps if info.video is not None else None
    channels = info.audio.channels if info.audio is not None else None
    command = settings.ffmpeg_arguments(source, fps, channels, output)
    result = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if result.returncode != 0 or not output.is_file() or output.stat().st_size == 0:
        output.unlink(missing_ok=True)
        lines = [line.strip() for line in result.stderr.splitlines() if line.strip()]
        problem = "; ".join(lines[-_STDERR_LINES:]) or f"exit status {result.returncode}, no output"
        return f"transcode failed: ffmpeg: {problem}"
    return None


def transcode_files(
    files: Sequence[Path], settings: TranscodeSettings, folder: Path, num_proc: int = 1
) -> tuple[list[Path | None], list[tuple[Path, str]]]:
    """Re-encode ``files`` into ``folder`` (one ``ffmpeg`` process each, ``num_proc`` at a time, a progress bar on
    stderr): the output of each file (``None`` where it failed) and the failed files with the reason."""
    from tqdm.auto import tqdm

    folder.mkdir(parents=True, exist_ok=True)
    outputs = [folder / f"{index:09d}.{settings.container}" for index in range(len(files))]
    problems: dict[int, str] = {}
    with (
        ThreadPoolExecutor(max_workers=max(1, num_proc)) as pool,
        tqdm(total=len(files), desc="transcoding", unit="file", file=sys.stderr) as bar,
    ):
        futures = {
            pool.submit(transcode_file, file, output, settings): index
            for index, (file, output) in enumerate(zip(files, outputs, strict=True))
        }
        for future in as_completed(futures):
            problem = future.result()
            if problem is not None:
                problems[futures[future]] = problem
            bar.update()
    failed = [(files[index], problems[index]) for index in sorted(problems)]
    return [None if index in problems else output for index, output in enumerate(outputs)], failed


def default_processors(modality: str, model_dir: str | os.PathLike[str] | None = None) -> tuple[Any, Any]:
    """(video processor, feature extractor) whose geometry a transcode takes: a saved model's, else the defaults."""
    from ..feature_extraction_avbert import AVBertFeatureExtractor
    from ..video_processing_avbert import AVBertVideoProcessor

    if model_dir is None:
        return AVBertVideoProcessor(), AVBertFeatureExtractor()
    video = AVBertVideoProcessor.from_pretrained(model_dir) if modality != "audio" else AVBertVideoProcessor()
    return video, AVBertFeatureExtractor.from_pretrained(model_dir)


def check_transcode(transcode: dict[str, Any] | None, transform: Any, location: str) -> None:
    """Refuse shards transcoded for another geometry than the one ``transform`` (a ``MediaTransform``) reads.

    Raises ``ValueError`` naming the manifest, the field and the fix when the processor would upscale the stored
    frames, sample a higher frame rate than was kept, read a stream that was dropped or expect another sound rate.
    Shards of files as they are (no ``transcode`` entry) pass.
    """
    if transcode is None:
        return
    modality, processor = transform.modality, transform.processor
    video = getattr(processor, "video_processor", processor if modality != "audio" else None)
    extractor = getattr(processor, "feature_extractor", processor if modality == "audio" else None)
    fix = (
        "re-run `avbert-prepare shards SOURCE OUT --transcode RECIPE` with the recipe (and --processor MODEL_DIR) "
        "this training uses, or train on shards of the files as they are (no --transcode)"
    )
    name = f"{location}: transcode settings (for recipe {transcode.get('recipe')!r})"
    problems = []
    if modality != "audio":
        short_side, fps = transcode.get("short_side"), transcode.get("fps")
        if short_side is None:
            problems.append(f"hold no video (short_side null) but the {modality} training reads frames")
        else:
            needed = (
                max(int(scale) for scale in video.train_jitter_scales)
                if transform.train
                else int((video.size or {}).get("shortest_edge") or max(video.size.values()))
            )
            if needed > short_side:
                what = "train_jitter_scales" if transform.train else "size"
                problems.append(
                    f"short_side {short_side} is below the processor's {what} short side {needed}: frames would be "
                    "upscaled"
                )
            wanted_fps = float(video.target_fps) / int(video.frame_sampling_rate)
            if fps is not None and wanted_fps > fps + _RATE_TOLERANCE:
                problems.append(
                    f"fps {fps:g} is below the {wanted_fps:g} fps the processor's sampling keeps "
                    f"(target_fps {video.target_fps} / frame_sampling_rate {video.frame_sampling_rate})"
                )
    reads_sound = modality == "audio" or (modality == "audio-visual" and extractor is not None)
    if reads_sound:
        rate = transcode.get("sound_rate")
        if rate is None:
            problems.append(f"hold no sound (sound_rate null) but the {modality} training reads it")
        elif int(rate) != int(extractor.sampling_rate):
            problems.append(f"sound_rate {rate} is not the feature extractor's sampling_rate {extractor.sampling_rate}")
    if problems:
        raise ValueError(f"{name} do not fit this training: {'; '.join(problems)}. To fix: {fix}")
