"""Every ```python block of docs/*.md runs as written, read from the page itself so that it cannot drift: the
placeholders it names (model folders, clip.mp4, dog.wav, data/mine) are tiny generated files in the working folder."""

import re
import subprocess
from pathlib import Path

import pytest
from test_newcomer_paths import ffmpeg_clip, needs_ffmpeg
from test_processing_datasets import tiny_processor
from test_training_recipes import TINY

from avbert import AVBertConfig, AVBertFeatureExtractor, AVBertForAudioClassification, AVBertForVideoClassification

DOCS = Path(__file__).resolve().parents[1] / "docs"
# Blocks that cannot run on tiny data as written, with the test that runs the same calls instead.
NOT_RUN = {
    ("training.md", 2): "the full recipes (20 and 300 epochs); tests/test_training_datasets.py runs these calls",
}


def python_blocks(page: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", page.read_text(), re.S | re.M)


SNIPPETS = [
    (page.name, number) for page in sorted(DOCS.glob("*.md")) for number in range(1, len(python_blocks(page)) + 1)
]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """The files the snippets name: an audio-visual and an audio model folder, videos with sound, a sound file and a
    two-class video folder (data/mine/train/<class>/)."""
    root = tmp_path_factory.mktemp("docs")
    labels = {"id2label": {0: "high", 1: "low"}, "label2id": {"high": 0, "low": 1}}
    video_model = root / "path" / "to" / "avbert-kinetics-sounds"
    AVBertForVideoClassification(AVBertConfig(**{**TINY, **labels})).save_pretrained(video_model)
    tiny_processor().save_pretrained(video_model)
    audio_model = root / "path" / "to" / "avbert-esc50"
    AVBertForAudioClassification(AVBertConfig(**{**TINY, **labels})).save_pretrained(audio_model)
    AVBertFeatureExtractor(feature_size=16, num_time_frames=16, num_clips=3, clip_samples=44100).save_pretrained(
        audio_model
    )
    for name in ("clip", "a", "b", "c"):
        ffmpeg_clip(root / f"{name}.mp4")
    tone = ["-f", "lavfi", "-i", "sine=frequency=880:duration=1.5"]
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", *tone, str(root / "dog.wav")], check=True)
    for label in ("high", "low"):
        (root / "data" / "mine" / "train" / label).mkdir(parents=True)
        for index in range(2):
            ffmpeg_clip(root / "data" / "mine" / "train" / label / f"{label}_{index}.mp4", seconds=1)
    return root


@needs_ffmpeg
@pytest.mark.parametrize(("page", "number"), SNIPPETS, ids=[f"{page}-{number}" for page, number in SNIPPETS])
def test_snippet_runs_as_written(page, number, workspace, monkeypatch):
    if (page, number) in NOT_RUN:
        pytest.skip(NOT_RUN[page, number])
    snippet = python_blocks(DOCS / page)[number - 1]
    monkeypatch.chdir(workspace)
    namespace: dict = {}
    exec(compile(snippet, f"{page} block {number}", "exec"), namespace)
    if "trainer" in namespace:  # a training snippet: it trained, and its checkpoints carry the processor
        trainer = namespace["trainer"]
        assert trainer.state.global_step > 0 and trainer.state.log_history[-1]["train_loss"] > 0
        checkpoints = sorted(Path(trainer.args.output_dir).glob("checkpoint-*"))
        assert checkpoints and all((folder / "processor_config.json").is_file() for folder in checkpoints)
    if "inputs" in namespace:
        assert set(namespace["inputs"]) == {"pixel_values", "input_features"}


def test_every_page_with_python_has_its_snippets_run():
    """A block added to a page is run (or listed in NOT_RUN with the test that covers it)."""
    assert {page for page, _ in SNIPPETS} >= {"processing.md", "training.md"}
    assert set(NOT_RUN) <= set(SNIPPETS)
