"""The cost measurement: same input for every model, interleaved rounds, median, sizes."""

import pytest
import torch

from pipeline.evaluation.benchmarking import (
    BenchSettings,
    bench_batch,
    interleaved_latencies,
    measure_costs,
)
from pipeline.models import build_model, count_parameters
from pipeline.models.checkpoint import save_model_dir


class Recorder(torch.nn.Module):
    def __init__(self, name: str, log: list):
        super().__init__()
        self.name, self.log, self.inputs = name, log, []

    def forward(self, ids):
        self.log.append(self.name)
        self.inputs.append(ids.clone())
        return ids


def test_rounds_are_interleaved_on_one_fixed_batch():
    log: list[str] = []
    a, b = Recorder("a", log), Recorder("b", log)
    batch = bench_batch(50, BenchSettings(batch_size=2, seq_len=5, seed=3), torch.device("cpu"))
    times = interleaved_latencies([a, b], batch, torch.device("cpu"), warmup=2, repeats=3)
    assert log == ["a", "a", "b", "b"] + ["a", "b"] * 3
    assert [len(t) for t in times] == [3, 3] and all(x > 0 for t in times for x in t)
    assert all(torch.equal(x, batch) for x in a.inputs + b.inputs)
    again = bench_batch(50, BenchSettings(batch_size=2, seq_len=5, seed=3), torch.device("cpu"))
    assert torch.equal(again, batch)  # same seed → the same tokens for every evaluation


def test_measure_costs_sizes_and_rates(tmp_path, tiny_tokenizer):
    models = []
    for i, d in enumerate((16, 32)):
        m = build_model("gpt", {"vocab_size": 320, "n_layer": 1, "n_head": 2, "d_model": d,
                                "context": 16})
        models.append((m, save_model_dir(m, tiny_tokenizer, tmp_path / f"m{i}") /
                       "model.safetensors"))
    settings = BenchSettings(batch_size=2, seq_len=16, warmup=1, repeats=3)
    costs = measure_costs(models, 320, settings, torch.device("cpu"))
    for (model, weights), c in zip(models, costs, strict=True):
        assert c["parameters"] == count_parameters(model)
        assert c["checkpoint_bytes"] == weights.stat().st_size
        assert c["tokens_per_s"] == pytest.approx(2 * 16 / (c["latency_ms"] / 1000.0))
    assert costs[0]["parameters"] < costs[1]["parameters"]
