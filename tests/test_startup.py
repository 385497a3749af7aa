"""`import avbert` is light, and the Auto classes still find the family in a fresh interpreter after it alone.

Each check runs in a subprocess: what an interpreter has imported, and in which order, is the point.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from avbert import (
    AVBertConfig,
    AVBertFeatureExtractor,
    AVBertForVideoClassification,
    AVBertProcessor,
    AVBertVideoProcessor,
)

REPO = Path(__file__).resolve().parents[1]

# What `import avbert` must leave for later: the model code (`transformers.modeling_utils` alone takes seconds) and
# the processing code.
HEAVY_MODULES = (
    "transformers.modeling_utils",
    "transformers.processing_utils",
    "transformers.video_processing_utils",
    "transformers.models.auto.modeling_auto",
    "transformers.models.auto.processing_auto",
    "avbert.modeling_avbert",
    "avbert.processing_avbert",
    "avbert.video_processing_avbert",
)


def run_python(code: str) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))}
    completed = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env, timeout=300
    )
    assert completed.returncode == 0, completed.stderr
    return completed.stdout


def test_import_avbert_leaves_the_heavy_modules_unimported():
    code = f"""
        import json, sys
        import avbert
        print(json.dumps([name for name in {HEAVY_MODULES!r} if name in sys.modules]))
    """
    assert json.loads(run_python(code).splitlines()[-1]) == []


@pytest.fixture(scope="module")
def saved_folder(tmp_path_factory) -> Path:
    """A tiny visual-only classifier with its processor, as `save_pretrained` writes it (with an `auto_map`)."""
    folder = tmp_path_factory.mktemp("tiny-avbert")
    config = AVBertConfig(
        use_audio=False,
        num_clips=2,
        num_frames=4,
        num_labels=3,
        visual_base_width=4,
        visual_depths=[1, 1],
        visual_temporal_kernel_sizes=[1, 3],
        hidden_size=32,
        num_attention_heads=4,
        intermediate_size=64,
        num_hidden_layers=1,
        orthogonal_size=8,
        max_position_embeddings=4,
    )
    AVBertForVideoClassification(config).save_pretrained(folder)
    video_processor = AVBertVideoProcessor(
        num_clips=2, num_frames=4, size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}
    )
    AVBertProcessor(
        feature_extractor=AVBertFeatureExtractor(num_clips=2, clip_samples=8000), video_processor=video_processor
    ).save_pretrained(folder)
    assert "AutoModelForVideoClassification" in json.loads((folder / "config.json").read_text())["auto_map"]
    return folder


# Each script starts from `import avbert` alone and touches no avbert attribute; the first Auto call differs, since
# the registrations happen on first import of the Auto module (or of the avbert module defining the classes).
AUTO_SCRIPTS = {
    "processors_first": """
        from transformers import AutoFeatureExtractor, AutoModel, AutoProcessor, AutoVideoProcessor
        print(type(AutoProcessor.from_pretrained(folder)).__name__)
        print(type(AutoVideoProcessor.from_pretrained(folder)).__name__)
        print(type(AutoFeatureExtractor.from_pretrained(folder)).__name__)
        print(type(AutoModel.from_pretrained(folder)).__name__)
    """,
    "models_first": """
        from transformers import (
            AutoConfig, AutoModel, AutoModelForAudioClassification, AutoModelForPreTraining,
            AutoModelForVideoClassification, AutoProcessor,
        )
        print(type(AutoConfig.from_pretrained(folder)).__name__)
        print(type(AutoModel.from_pretrained(folder)).__name__)
        print(type(AutoModelForVideoClassification.from_pretrained(folder)).__name__)
        config = AutoConfig.from_pretrained(folder, use_audio=True, num_mel_bins=16, audio_num_frames=16)
        print(type(AutoModelForAudioClassification.from_config(config)).__name__)
        print(type(AutoModelForPreTraining.from_config(config)).__name__)
        print(type(AutoProcessor.from_pretrained(folder)).__name__)
    """,
    "pipeline": """
        from transformers import pipeline
        classifier = pipeline("video-classification", model=folder)
        print(type(classifier.model).__name__)
        print(type(classifier.video_processor).__name__)
    """,
    "submodule_first": """
        from avbert.modeling_avbert import AVBertModel
        from avbert.processing_avbert import AVBertProcessor
        from transformers.models.auto.modeling_auto import MODEL_MAPPING
        from transformers.models.auto.processing_auto import PROCESSOR_MAPPING
        print(MODEL_MAPPING[avbert.AVBertConfig].__name__, AVBertModel._auto_class)
        print(PROCESSOR_MAPPING[avbert.AVBertConfig].__name__, AVBertProcessor._auto_class)
    """,
}

EXPECTED = {
    "processors_first": ["AVBertProcessor", "AVBertVideoProcessor", "AVBertFeatureExtractor", "AVBertModel"],
    "models_first": [
        "AVBertConfig",
        "AVBertModel",
        "AVBertForVideoClassification",
        "AVBertForAudioClassification",
        "AVBertForPreTraining",
        "AVBertProcessor",
    ],
    "pipeline": ["AVBertForVideoClassification", "AVBertVideoProcessor"],
    "submodule_first": ["AVBertModel AutoModel", "AVBertProcessor AutoProcessor"],
}


@pytest.mark.parametrize("name", sorted(AUTO_SCRIPTS))
def test_auto_classes_find_the_family_after_import_avbert_alone(saved_folder, name):
    code = f"import avbert\nfolder = {str(saved_folder)!r}\n" + textwrap.dedent(AUTO_SCRIPTS[name])
    assert run_python(code).splitlines()[-len(EXPECTED[name]) :] == EXPECTED[name]


def test_lazy_attributes_and_dir():
    import avbert

    assert set(avbert.__all__) <= set(dir(avbert))
    for name in avbert.__all__:
        assert getattr(avbert, name).__name__ == name
    with pytest.raises(AttributeError, match="no attribute 'missing'"):
        avbert.missing  # noqa: B018


# What no `--help` needs: the model code, `Trainer`, and the data libraries (`datasets`, `evaluate`, `webdataset`).
NOT_FOR_HELP = (
    "transformers.modeling_utils",
    "transformers.trainer",
    "datasets",
    "evaluate",
    "webdataset",
    "avbert.modeling_avbert",
)


@pytest.mark.parametrize(
    "module",
    [
        "avbert.training.train",
        "avbert.training.evaluate",
        "avbert.training.pretrain",
        "avbert.data.prepare",
        "avbert.training.demo",
        "avbert.convert_original_checkpoint",
        "avbert.parameter_counts",
    ],
)
def test_help_leaves_the_heavy_modules_unimported(module):
    code = f"""
        import contextlib, io, json, runpy, sys
        sys.argv = [{module!r}, "--help"]
        with contextlib.redirect_stdout(io.StringIO()) as help_text, contextlib.suppress(SystemExit):
            runpy.run_module({module!r}, run_name="__main__")
        assert "usage:" in help_text.getvalue()
        print(json.dumps([name for name in {NOT_FOR_HELP!r} if name in sys.modules]))
    """
    assert json.loads(run_python(code).splitlines()[-1]) == []
