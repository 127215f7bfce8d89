"""pipeline/training/layout.py: the order in which a copy of a run folder must be written."""

import json

from pipeline.training import layout


def test_write_order_is_checkpoint_latest_files_weights_complete(tmp_path):
    run = tmp_path / "run"
    for old in ("step-00000002", "step-00000004"):
        (run / layout.STATE / old).mkdir(parents=True)
        for name in ("model.safetensors", layout.OPTIMIZER, layout.TRAINER, "config.json"):
            (run / layout.STATE / old / name).write_text(old)
    (run / layout.LATEST_REL).write_text(json.dumps({"checkpoint": "step-00000004", "step": 4}))
    for name in (layout.COMPLETE, "model.safetensors", "tokenizer.json", layout.CONFIG,
                 layout.METRICS, "config.json", "model.safetensors.tmp"):
        (run / name).write_text("x")
    assert layout.write_order(run) == [
        "state/step-00000004/config.json", "state/step-00000004/model.safetensors",
        "state/step-00000004/optimizer.safetensors", "state/step-00000004/trainer.json",
        "state/latest.json",
        "config.json", "config.toml", "metrics.jsonl", "tokenizer.json",
        "model.safetensors", "complete.json"]
    assert layout.checkpoint_model_files(run / layout.STATE / "step-00000004") == \
        ["config.json", "model.safetensors"]


def test_write_order_before_the_first_checkpoint(tmp_path):
    (tmp_path / layout.CONFIG).write_text("x")
    assert layout.latest_checkpoint(tmp_path) is None
    assert layout.write_order(tmp_path) == ["config.toml"]
