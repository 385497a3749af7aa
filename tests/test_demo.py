"""The demo (the README's main job): synthetic audio-visual media -> Trainer fine-tuning -> Auto reload -> pipeline."""

import json

from avbert.training.demo import run_demo


def test_demo_reaches_90_percent_on_held_out_clips(tmp_path):
    metrics = run_demo(tmp_path, videos_per_class=12, epochs=8, seed=0, multi_view=False)
    assert metrics["eval_accuracy"] >= 0.9
    model_dir = tmp_path / "model"
    saved = json.loads((model_dir / "eval_results.json").read_text())
    assert saved["eval_accuracy"] == metrics["eval_accuracy"]
    for name in ("config.json", "model.safetensors", "processor_config.json", "training_curves.png"):
        assert (model_dir / name).is_file(), name
    assert any((model_dir / "runs").rglob("events.out.tfevents.*")), "TensorBoard logs"
