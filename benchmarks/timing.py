"""Timing and statistics shared by every figure: interleaved repetitions, ratios per repetition.

Why this shape: the machine is shared, and a load spike during variant A's run but not B's would
fake a ratio. So variants run in rounds (A, B, A, B, A, B), and each figure is computed *per
round* from values measured seconds apart, then summarised as the median with min and max over
rounds. Absolute times are kept for the details table, never for the claim.
"""

import contextlib
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch


@dataclass
class Stat:
    """Median, min and max of a list of values (one per repetition)."""

    values: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def min(self) -> float:
        return min(self.values)

    @property
    def max(self) -> float:
        return max(self.values)

    def as_dict(self) -> dict:
        return {"median": self.median, "min": self.min, "max": self.max, "values": self.values}


def timed(fn: Callable[[], object]) -> float:
    """Wall-clock seconds of one call."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved(variants: dict[str, Callable[[], float]], reps: int,
                setup: Callable[[str, int], None] | None = None) -> dict[str, list[float]]:
    """Run every variant once per round, `reps` rounds; return {name: [value per round]}.

    A variant returns its own measured value (seconds, bytes, ...), so it can leave its
    untimed preparation out; `setup(name, round)`, if given, runs untimed before each call.
    """
    if reps < 1:
        raise ValueError(f"reps must be >= 1, got {reps}")
    out: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(reps):
        for name, fn in variants.items():
            if setup is not None:
                setup(name, r)
            out[name].append(float(fn()))
    return out


def ratio(num: list[float], den: list[float]) -> Stat:
    """Per-round ratios num[i] / den[i] (values measured side by side in round i)."""
    if len(num) != len(den):
        raise ValueError("ratio of series of different lengths")
    return Stat([a / b if b else float("inf") for a, b in zip(num, den)])


def per_round(fn: Callable[..., float], *series: list[float]) -> Stat:
    """Any per-round combination of several series, e.g. (a + b) / c."""
    return Stat([fn(*vals) for vals in zip(*series)])


@contextlib.contextmanager
def torch_threads(n: int):
    """Run a measured pair at n torch threads (pipeline/threads.py: what a CLI run uses)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(before)
