"""Inference cost of a model, measured the same way for every model so the numbers compare.

Method: the same fixed batch of random token ids (seeded, [batch, seq_len]) for every model;
`warmup` untimed forwards per model (kernel selection, caches, lazy init); then `repeats` rounds
in which every model runs one timed forward under `torch.inference_mode()` and the device's
autocast (its head applied one chunk of positions at a time, pipeline/models/head.py), with a
CUDA synchronize after each; the **median** latency is reported (robust to a
noisy neighbour on a shared machine) and tokens/s = batch × seq_len / median latency.
Size is the unique parameter count and the bytes of `model.safetensors` on disk.
"""

import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.models import count_parameters
from pipeline.models.head import logit_chunks


@dataclass
class BenchSettings:
    batch_size: int = 8
    seq_len: int = 256
    warmup: int = 2
    repeats: int = 5
    seed: int = 0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_batch(vocab_size: int, settings: BenchSettings, device: torch.device) -> torch.Tensor:
    """The one input every model is timed on (same seed → same tokens)."""
    gen = torch.Generator().manual_seed(settings.seed)
    ids = torch.randint(0, vocab_size, (settings.batch_size, settings.seq_len), generator=gen)
    return ids.to(device)


@torch.inference_mode()
def interleaved_latencies(models: list[torch.nn.Module], batch: torch.Tensor,
                          device: torch.device, warmup: int, repeats: int) -> list[list[float]]:
    """Seconds per forward of `batch` for each model, `repeats` values each.

    Timed in rounds (model 1, 2, …, then again) rather than model after model, so a load
    spike on a shared machine hits every model alike instead of skewing one of them.
    """
    for m in models:
        m.eval()
    times: list[list[float]] = [[] for _ in models]
    for m in models:
        for _ in range(warmup):
            _forward(m, batch)
    _sync(device)
    for _ in range(max(repeats, 1)):
        for i, m in enumerate(models):
            start = time.perf_counter()
            _forward(m, batch)
            _sync(device)
            times[i].append(time.perf_counter() - start)
    return times


def _forward(model: torch.nn.Module, batch: torch.Tensor) -> None:
    """The whole forward, logits included, one chunk of positions at a time (as evaluate runs
    it): a wide vocabulary's [batch, seq, vocab] logits would cost GBs for nothing."""
    for _ in logit_chunks(model, batch):
        pass


def measure_costs(models: list[tuple[torch.nn.Module, Path | int]], vocab_size: int,
                  settings: BenchSettings, device: torch.device) -> list[dict]:
    """Per (model, weights file or its size in bytes): parameters, checkpoint bytes, median
    latency per batch (ms) and tokens/s — all models timed on the same batch, in interleaved
    rounds."""
    batch = bench_batch(vocab_size, settings, device)
    all_times = interleaved_latencies([m for m, _ in models], batch, device, settings.warmup,
                                      settings.repeats)
    out = []
    for (model, weights), times in zip(models, all_times, strict=True):
        median = statistics.median(times)
        out.append({"parameters": count_parameters(model),
                    "checkpoint_bytes": weights if isinstance(weights, int)
                    else Path(weights).stat().st_size,
                    "latency_ms": median * 1000.0,
                    "tokens_per_s": batch.numel() / median if median > 0 else float("inf")})
    return out
