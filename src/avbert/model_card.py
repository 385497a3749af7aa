"""The model card (`README.md`) written with every saved or converted AVBERT folder.

Kept free of package-level imports: `save_pretrained` copies this file next to the model code, so a folder loaded with
`trust_remote_code=True` imports it without the avbert package.
"""

import importlib.metadata
from pathlib import Path

import transformers

# Marks a card this module wrote: it may be rewritten (e.g. by the converter with provenance); any other README.md in
# the folder is the user's and is left alone.
GENERATED_MARKER = "<!-- model card written by avbert; rewritten on save -->"

_TASKS = {
    "AVBertForVideoClassification": ("video-classification", "AutoModelForVideoClassification"),
    "AVBertForAudioClassification": ("audio-classification", "AutoModelForAudioClassification"),
    "AVBertForPreTraining": ("feature-extraction", "AutoModelForPreTraining"),
    "AVBertModel": ("feature-extraction", "AutoModel"),
}
_MAX_LISTED_LABELS = 400


def _package_version() -> str:
    try:
        return importlib.metadata.version("avbert")
    except importlib.metadata.PackageNotFoundError:  # remote code: only the folder's files
        return "unknown"


def _inputs(config) -> list[str]:
    inputs = []
    if config.use_visual:
        inputs.append(
            f"- `pixel_values`: `(batch, num_clips, {config.num_channels}, {config.num_frames}, height, width)` "
            "normalized RGB clips (the processor samples the clips uniformly over the video)."
        )
    if config.use_audio:
        inputs.append(
            f"- `input_features`: `(batch, num_clips, 1, {config.num_mel_bins}, {config.audio_num_frames})` "
            "log-mel spectrogram of the sound under each clip."
        )
    inputs.append(f"- The processor produces `num_clips={config.num_clips}` clips per video by default.")
    return inputs


def _labels(config) -> list[str]:
    labels = [config.id2label[index] for index in sorted(config.id2label)]
    listed = ", ".join(f"`{label}`" for label in labels[:_MAX_LISTED_LABELS])
    more = f" and {len(labels) - _MAX_LISTED_LABELS} more" if len(labels) > _MAX_LISTED_LABELS else ""
    return [f"{len(labels)} labels: {listed}{more}."]


def render_model_card(
    model, license: str = "apache-2.0", provenance: list[str] | None = None, parity: dict[str, float] | None = None
) -> str:
    """The card's text: task, labels, inputs, how to use, provenance (and parity figures when converted), licence."""
    config = model.config
    class_name = type(model).__name__
    pipeline_tag, auto_class = _TASKS.get(class_name, ("feature-extraction", "AutoModel"))
    modalities = [name for name, used in (("video", config.use_visual), ("audio", config.use_audio)) if used]
    lines = [
        "---",
        "library_name: transformers",
        f"license: {license}",
        f"pipeline_tag: {pipeline_tag}",
        "tags:",
        *(f"- {tag}" for tag in ("avbert", *modalities)),
        "---",
        GENERATED_MARKER,
        "",
        f"# AVBERT: {class_name}",
        "",
        'AVBERT (Lee et al., "Parameter Efficient Multimodal Transformers for Video Representation Learning", ICLR '
        "2021): per-clip 3D / 2D ResNet encoders of the frames and the log-mel of the sound, under one "
        "parameter-shared, low-rank factorized transformer.",
        "",
        "## Task",
        "",
        f"`{pipeline_tag}` with `{class_name}` (modalities: {', '.join(modalities)}; fusion: `{config.fusion}`; "
        f"transformer: {'yes' if config.use_transformer else 'no (CNN only)'}).",
    ]
    if class_name in ("AVBertForVideoClassification", "AVBertForAudioClassification"):
        lines += ["", "## Labels", "", *_labels(config)]
    lines += ["", "## Inputs", "", *_inputs(config)]
    lines += [
        "",
        "## How to use",
        "",
        "```python",
        "import avbert  # registers AVBERT with the Auto classes (or pass trust_remote_code=True without it)",
        f"from transformers import AutoProcessor, {auto_class}",
        "",
        f'model = {auto_class}.from_pretrained("path/to/this/folder").eval()',
        'processor = AutoProcessor.from_pretrained("path/to/this/folder")',
    ]
    if pipeline_tag == "video-classification":
        lines += [
            'inputs = processor(videos="clip.mp4", return_tensors="pt")  # frames and the sound under each clip',
            "predicted = model(**inputs).logits.argmax(-1).item()",
            "print(model.config.id2label[predicted])",
            "",
            "from transformers import pipeline",
            'pipeline("video-classification", model="path/to/this/folder")("clip.mp4")',
        ]
    elif pipeline_tag == "audio-classification":
        lines += [
            "from transformers import pipeline",
            'pipeline("audio-classification", model="path/to/this/folder")("sound.wav")',
        ]
    else:
        lines += [
            'inputs = processor(videos="clip.mp4", return_tensors="pt")',
            'video_embedding = model.get_video_features(inputs["pixel_values"]).pooler_output',
        ]
    lines += [
        "```",
        "",
        "Without the avbert package, `trust_remote_code=True` runs this folder's code, which imports torch, "
        "transformers, numpy, torchvision (the video processor), torchaudio (the log-mels) and av (PyAV, decoding): "
        "`pip install torch torchvision torchaudio transformers av`.",
        "",
        "## Provenance",
        "",
    ]
    lines += provenance or ["Saved by `save_pretrained` (trained or fine-tuned with this code, not converted)."]
    if parity:
        lines += ["", "Parity with the original checkpoint:", ""]
        lines += [f"- {name}: {value:.3g}" for name, value in parity.items()]
    lines += [
        "",
        f"Written with avbert {_package_version()} and transformers {transformers.__version__}.",
        "",
        "## Licence",
        "",
        f"`{license}` (the `license` field above).",
        "",
    ]
    return "\n".join(lines)


def converted_provenance(checkpoint_path: str | Path, task: str, pretrained_layout: bool) -> list[str]:
    """Provenance lines of a folder converted by `avbert-convert`."""
    layout = "pretrained `{'state_dict'}`" if pretrained_layout else "fine-tuned `{'model_state_dict'}`"
    return [
        f"Converted by `avbert-convert --task {task}` from the original AVBERT checkpoint "
        f"`{Path(checkpoint_path).name}` ({layout} layout).",
        "",
        "The conversion is tested against outputs of the original code on its checkpoints (avbert's docs/model.md, "
        '"Parity with the original": every logit within 5e-5, probabilities within 5e-6, CPU, fp32).',
        "",
        "Licence: the original repository states none for its weights (`license: unknown`); check before "
        "redistributing.",
    ]


def write_model_card(save_directory: str | Path, model, **card_options) -> Path | None:
    """Write `README.md` into `save_directory`, unless the folder holds a README.md that this module did not write."""
    path = Path(save_directory) / "README.md"
    if path.exists() and GENERATED_MARKER not in path.read_text(encoding="utf-8", errors="replace"):
        return None
    path.write_text(render_model_card(model, **card_options), encoding="utf-8")
    return path


__all__ = ["converted_provenance", "render_model_card", "write_model_card"]
