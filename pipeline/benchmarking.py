"""Inference cost of a model, measured the same way for every model so the numbers compare.

Method: the same fixed batch of random token ids (seeded, [batch, seq_len]) for every model;
`warmup` untimed forwards (kernel selection, caches, lazy init); then `repeats` timed forwards
under `torch.inference_mode()` and the device's autocast, with a CUDA synchronize around each
one; the **median** latency is reported (robust to a noisy neighbour on a shared machine) and
tokens/s = batch × seq_len / median latency. Size is the unique parameter count and the bytes
of `model.safetensors` on disk.
"""

import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.device import autocast
from pipeline.models import count_parameters


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
def measure_latency(model: torch.nn.Module, batch: torch.Tensor, device: torch.device,
                    warmup: int, repeats: int) -> list[float]:
    """Seconds per forward of `batch`, one value per timed repeat."""
    model.eval()
    with autocast(device):
        for _ in range(warmup):
            model(batch)
        _sync(device)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model(batch)
            _sync(device)
            times.append(time.perf_counter() - start)
    return times


def measure_cost(model: torch.nn.Module, weights: Path, vocab_size: int, settings: BenchSettings,
                 device: torch.device) -> dict:
    """Parameter count, checkpoint bytes, median latency per batch (ms) and tokens/s."""
    batch = bench_batch(vocab_size, settings, device)
    times = measure_latency(model, batch, device, settings.warmup, max(settings.repeats, 1))
    median = statistics.median(times)
    return {"parameters": count_parameters(model),
            "checkpoint_bytes": Path(weights).stat().st_size,
            "latency_ms": median * 1000.0,
            "tokens_per_s": batch.numel() / median if median > 0 else float("inf"),
            "bench": {"device": str(device), "batch_size": settings.batch_size,
                      "seq_len": settings.seq_len, "warmup": settings.warmup,
                      "repeats": settings.repeats}}
