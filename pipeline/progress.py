"""Progress on stderr: rich bars for a person at a terminal, plain lines for a log.

A scheduled job's stderr is a file or a pipe (cron, an orchestrator, `> log 2>&1`), where a rich
bar shows nothing until its last frame. There each task prints one plain line every
SOFTLABELS_PROGRESS_INTERVAL seconds (default 30) and a last one when it ends: stage, task,
done/total, rate, ETA and what the caller adds (a student's latest loss, tokens/s); never a
carriage return. `--log-format json` (SOFTLABELS_LOG_FORMAT) prints the same records as JSON
lines for log collectors, and `plain` prints lines on a terminal too.
"""

import contextlib
import json
import math
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

LOG_FORMATS = ("auto", "plain", "json")
FORMAT_ENV, INTERVAL_ENV, DEFAULT_INTERVAL_S = ("SOFTLABELS_LOG_FORMAT",
                                                "SOFTLABELS_PROGRESS_INTERVAL", 30.0)

console = Console(stderr=True)
_log_format = os.environ.get(FORMAT_ENV, "auto")


def set_log_format(name: str) -> None:
    """auto: bars on a terminal, plain lines otherwise; plain; json."""
    global _log_format
    if name not in LOG_FORMATS:
        raise ValueError(f"log format {name!r}: valid are {', '.join(LOG_FORMATS)}")
    _log_format = name


def interval_s() -> float:
    try:
        value = float(os.environ.get(INTERVAL_ENV, DEFAULT_INTERVAL_S))
    except ValueError:
        return DEFAULT_INTERVAL_S
    return value if math.isfinite(value) and value > 0 else DEFAULT_INTERVAL_S


def positions_progress(disable: bool = False, stage: str = ""):
    """A context manager with rich Progress's add_task/update/advance/tasks: rich bars on a
    terminal (or nothing when disabled), a LineProgress otherwise."""
    if disable or (_log_format == "auto" and console.is_terminal):
        return Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), TaskProgressColumn(),
            MofNCompleteColumn(), TextColumn("{task.fields[rate]}"), TimeElapsedColumn(),
            TimeRemainingColumn(), console=console, disable=disable, transient=False)
    return LineProgress(stage, as_json=_log_format == "json")


def rate_text(done: float, elapsed: float | None, unit: str = "pos") -> str:
    if not elapsed:
        return f"- {unit}/s"
    return f"{done / elapsed:,.0f} {unit}/s"


@dataclass
class _Task:
    description: str
    total: float | None
    completed: float
    fields: dict
    start: float = field(default_factory=time.monotonic)
    start_completed: float = 0.0
    final_printed: bool = False

    @property
    def finished(self) -> bool:
        return self.total is not None and self.completed >= self.total


class LineProgress:
    """Prints each task's state from a timer thread every `interval` seconds, a task's last
    line as soon as it completes, and every other task's last line on exit (status `stopped`
    when it did not complete, e.g. after an interruption)."""

    def __init__(self, stage: str, as_json: bool = False, interval: float | None = None):
        self.stage, self.as_json = stage, as_json
        self.interval = interval or interval_s()
        self._tasks: list[_Task] = []
        self._lock, self._stop = threading.Lock(), threading.Event()
        self._thread = threading.Thread(target=self._tick, daemon=True)

    @property
    def tasks(self) -> list[_Task]:
        return self._tasks

    def __enter__(self) -> "LineProgress":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        for t in self._tasks:
            if not t.final_printed:
                self._emit(t, final=True)

    def add_task(self, description: str, total: float | None = None, completed: float = 0,
                 **fields) -> int:
        self._tasks.append(_Task(description, total, completed, fields,
                                 start_completed=completed))
        return len(self._tasks) - 1

    def update(self, task_id: int, completed: float | None = None, advance: float = 0,
               **fields) -> None:
        t = self._tasks[task_id]
        t.completed = (t.completed if completed is None else completed) + advance
        t.fields.update(fields)
        if t.finished and not t.final_printed:
            self._emit(t, final=True)

    def advance(self, task_id: int, n: float = 1) -> None:
        self.update(task_id, advance=n)

    def _tick(self) -> None:
        while not self._stop.wait(self.interval):
            for t in list(self._tasks):
                if not t.final_printed:
                    self._emit(t, final=False)

    def _emit(self, t: _Task, final: bool) -> None:
        rec = self.record(t, final)
        text = json.dumps(rec) if self.as_json else plain_line(rec)
        with self._lock:
            if final:
                t.final_printed = True
            sys.stderr.write(text + "\n")
            sys.stderr.flush()

    def record(self, t: _Task, final: bool) -> dict:
        """One progress record: what both the plain line and the JSON line say."""
        elapsed = time.monotonic() - t.start
        done_here = t.completed - t.start_completed
        rate = done_here / elapsed if elapsed > 0 and done_here > 0 else None
        eta = (t.total - t.completed) / rate if rate and t.total is not None else None
        status = "done" if t.finished else "stopped" if final else "running"
        rec = {"event": "progress", "time": datetime.now(UTC).isoformat(timespec="seconds"),
               "stage": self.stage, "task": t.description, "status": status,
               "done": t.completed, "total": t.total, "unit": t.fields.get("unit", "pos"),
               "rate": rate, "eta_s": None if final else eta, "elapsed_s": round(elapsed, 3)}
        for key, value in t.fields.items():
            with contextlib.suppress(TypeError, ValueError):  # rich's `rate` text is not a number
                rec[key] = float(value)  # a student's loss may be a tensor: read it only here
        return rec


def plain_line(rec: dict) -> str:
    """`label: 61,440/131,072 pos (47%), 2,048 pos/s, eta 34s` and the like."""
    unit, done, total = rec["unit"], rec["done"], rec["total"]
    name = rec["stage"] if rec["task"] in ("", rec["stage"]) else \
        f"{rec['stage']} {rec['task']}".strip()
    parts = [f"{done:,.0f}/{total:,.0f} {unit} ({100 * done / total:.0f}%)" if total
             else f"{done:,.0f} {unit}"]
    if rec["rate"]:
        parts.append(f"{rec['rate']:,.{1 if rec['rate'] < 10 else 0}f} {unit}/s")
    if "tokens_per_s" in rec:
        parts.append(f"{rec['tokens_per_s']:,.0f} tok/s")
    if rec["status"] == "running":
        parts.append(f"eta {duration(rec['eta_s'])}")
    else:
        parts.append(f"{rec['status']} after {duration(rec['elapsed_s'])}")
    if "loss" in rec:
        parts.append(f"loss {rec['loss']:.4f}")
    return f"{rec['time'][11:19]} {name}: " + ", ".join(parts)


def duration(seconds: float | None) -> str:
    """`-`, `42s`, `3m05s`, `2h07m`."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"
