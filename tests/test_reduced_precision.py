"""bf16 inference through the usual switches: `from_pretrained(..., dtype=torch.bfloat16)`, the pipeline's `dtype`, and
float inputs of any precision (the model casts them to its weights' dtype). Figures: benchmarks/bench_precision.py."""

import os
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForVideoClassification, pipeline

from avbert import AVBertForVideoClassification, AVBertProcessor
from avbert.convert_original_checkpoint import convert_checkpoint

SHARED = Path(os.environ.get("AVBERT_SHARED_DIR", Path(__file__).resolve().parents[2] / "shared"))
FIXTURES = SHARED / "fixtures" / "original"
KS_VIDEO = SHARED / "data" / "videos" / "kinetics400" / "R6llTwEh07w.mp4"
needs_shared = pytest.mark.skipif(not FIXTURES.is_dir() or not KS_VIDEO.is_file(), reason="shared data absent")
# bf16 keeps 8 significant bits: logits of scale ~4 through two CNNs and the transformer move by ~1e-2 (measured
# 1.1e-2 on this fixture, BENCHMARKS.md); probabilities by less.
LOGIT_ATOL, PROBABILITY_ATOL = 0.1, 0.02


@pytest.fixture(scope="module")
def kinetics_sounds_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("ks")
    tiny = FIXTURES / "tiny_ks"
    convert_checkpoint(tiny / "finetuned_checkpoint.pyth", folder, "kinetics-sounds", tiny / "config.yaml")
    return folder


@needs_shared
def test_bf16_loaded_model_takes_the_processor_output(kinetics_sounds_folder: Path) -> None:
    """The processor returns float32; a model loaded in bf16 casts it and scores a real video as the fp32 model."""
    inputs = AVBertProcessor.from_pretrained(kinetics_sounds_folder)(videos=str(KS_VIDEO), return_tensors="pt")
    assert inputs["pixel_values"].dtype == inputs["input_features"].dtype == torch.float32
    fp32 = AutoModelForVideoClassification.from_pretrained(kinetics_sounds_folder).eval()
    bf16 = AutoModelForVideoClassification.from_pretrained(kinetics_sounds_folder, dtype=torch.bfloat16).eval()
    assert bf16.dtype == torch.bfloat16
    with torch.inference_mode():
        expected, actual = fp32(**inputs).logits, bf16(**inputs).logits
    assert actual.dtype == torch.bfloat16
    torch.testing.assert_close(actual.float(), expected, rtol=0, atol=LOGIT_ATOL)
    assert actual.float().softmax(-1).argmax(-1).tolist() == expected.softmax(-1).argmax(-1).tolist()


@needs_shared
def test_pipeline_with_bf16_dtype_on_a_real_video(kinetics_sounds_folder: Path) -> None:
    """`pipeline(..., dtype=torch.bfloat16)`: the pipeline casts the processor's float tensors to the model's dtype
    (`BatchFeature.to(dtype)` in `VideoClassificationPipeline.preprocess`); the scores are the fp32 pipeline's."""
    fp32 = pipeline("video-classification", model=str(kinetics_sounds_folder))(str(KS_VIDEO), top_k=5)
    classifier = pipeline("video-classification", model=str(kinetics_sounds_folder), dtype=torch.bfloat16)
    assert classifier.model.dtype == torch.bfloat16
    bf16 = classifier(str(KS_VIDEO), top_k=5)
    assert bf16[0]["label"] == fp32[0]["label"]
    expected = {p["label"]: p["score"] for p in fp32}
    assert max(abs(p["score"] - expected[p["label"]]) for p in bf16) < PROBABILITY_ATOL


@pytest.mark.parametrize("input_dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_float_inputs_are_cast_to_the_weights_dtype(make_config, make_inputs, input_dtype: torch.dtype) -> None:
    """Inputs of another float dtype give what the model computes on the same values in its own dtype."""
    torch.manual_seed(0)
    model = AVBertForVideoClassification(make_config()).eval()
    inputs = {key: value.to(input_dtype) for key, value in make_inputs().items()}
    with torch.inference_mode():
        expected = model(**{key: value.float() for key, value in inputs.items()}).logits
        actual = model(**inputs).logits
    assert actual.dtype == torch.float32
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)


def test_bf16_autocast_and_bf16_weights_stay_close_to_fp32(make_config, make_inputs) -> None:
    """Both bf16 switches, from float32 inputs: autocast (fp32 weights, float32 logits out of the final
    log-mean-softmax) and bf16 weights (bf16 logits); a bf16 autocast train step gives finite loss and gradients."""
    torch.manual_seed(0)
    model = AVBertForVideoClassification(make_config()).eval()
    loaded = AVBertForVideoClassification(make_config()).eval()
    loaded.load_state_dict(model.state_dict())
    loaded.to(torch.bfloat16)
    inputs = make_inputs()
    with torch.inference_mode():
        expected = model(**inputs).logits
        with torch.autocast("cpu", dtype=torch.bfloat16):
            autocast = model(**inputs).logits
        bf16 = loaded(**inputs).logits
    assert bf16.dtype == torch.bfloat16
    scale = expected.abs().max().item()
    for actual in (autocast, bf16):
        assert 0 < (actual.float() - expected).abs().max().item() <= 0.05 * scale

    # 8 frames, not the fixture's 4: at 4 the temporal-kernel stage sees 2 frames, where torch 2.14's CPU bf16 conv3d
    # weight gradient is garbage (docs/performance.md, "Reduced precision").
    torch.manual_seed(0)
    model = AVBertForVideoClassification(make_config(num_frames=8)).train()
    inputs["pixel_values"] = torch.randn(2, 3, 3, 8, 16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(**inputs, labels=torch.tensor([0, 1])).loss
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
