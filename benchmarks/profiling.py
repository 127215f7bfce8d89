"""Profiles for the Notes of a missed goal: where the time went, in one line.

cProfile for Python-level overhead (planning, Parquet, hashing: the main thread), the torch
profiler for operator time inside a model step. Both return a short "name s, name s" summary
that a figure pastes into its note, so the explanation is measured, not guessed.
"""

import cProfile
import pstats
from collections.abc import Callable

import torch

SKIP = ("<module>", "<lambda>")


def cprofile_self(fn: Callable[[], object]) -> dict[str, float]:
    """Self seconds per function in one call of fn (main thread only).

    Self time, not cumulative: the stages are deep call chains, and cumulative time would list
    the chain's wrappers instead of where the seconds are spent."""
    prof = cProfile.Profile()
    prof.enable()
    try:
        fn()
    finally:
        prof.disable()
    out: dict[str, float] = {}
    for (file, _line, name), (_, _, self_s, _, _) in pstats.Stats(prof).stats.items():  # type: ignore
        if name in SKIP or "disable" in name:
            continue
        where = file.split("/")[-1] if file != "~" else ""
        label = f"{where}:{name}" if where else name
        out[label] = out.get(label, 0.0) + self_s
    return out


def _shown(rows: list[tuple[float, str]], n: int) -> str:
    rows = sorted(rows, reverse=True)[:n]
    return ", ".join(f"`{label}` {s:.2f} s" for s, label in rows)


def cprofile_top(fn: Callable[[], object], n: int = 8) -> str:
    """The n functions with the most self time in one call of fn, and the total."""
    stats = cprofile_self(fn)
    return f"total {sum(stats.values()):.2f} s: " + _shown([(v, k) for k, v in stats.items()], n)


def cprofile_extra(fn: Callable[[], object], baseline: Callable[[], object], n: int = 8) -> str:
    """Where fn spends more self time than baseline: the overhead, function by function."""
    a, b = cprofile_self(fn), cprofile_self(baseline)
    extra = [(a[k] - b.get(k, 0.0), k) for k in a if a[k] - b.get(k, 0.0) > 0.0]
    total = sum(a.values()) - sum(b.values())
    return f"{total:.2f} s more in all: " + _shown(extra, n)


def torch_profile_top(fn: Callable[[], object], n: int = 6) -> str:
    """The n torch operators with the most self CPU time in one call of fn."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        fn()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    return ", ".join(f"`{e.key}` {100.0 * e.self_cpu_time_total / total:.0f} %"
                     for e in events[:n])
