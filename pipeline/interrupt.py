"""Stopping on SIGINT/SIGTERM without losing work, within a scheduler's grace period.

Schedulers stop jobs with SIGTERM (preemption, time limits) and allow about 30 s before SIGKILL;
people press Ctrl-C. The CLI wraps every command in `handling()`:

- Outside a `deferred()` block the first signal raises `Interrupted` wherever the main thread is,
  as Ctrl-C raises KeyboardInterrupt: planning, reading and checking leave nothing a rerun cannot
  redo, and every file is written atomically.
- Inside `deferred()` (the training loop, in-process labeling) the signal is only recorded; the
  loop polls `requested()` at its safe points (a step boundary, a teacher batch), keeps what it
  has (a checkpoint; the shards already labeled) and raises `Interrupted` itself.
- A second signal exits at once, and so does a stop that is still running after the grace
  period (SOFTLABELS_STOP_GRACE_S, default 25 s, inside the usual 30 s): both are safe because
  every write is atomic (tmp → fsync → rename; a checkpoint commits with latest.json), so the
  previous checkpoint or shard stays the valid one. A repeat within DUPLICATE_S of the first is
  the same request delivered twice (to the process group, and again by a launcher such as
  torchrun that forwards it), not a second one.

Every stop exits with EXIT_INTERRUPTED = 75 (EX_TEMPFAIL, "try again later" in sysexits.h), one
code an orchestrator can requeue on; the rerun (train: with --resume) continues.
"""

import contextlib
import os
import signal
import sys
import threading
import time

EXIT_INTERRUPTED = 75
SIGNALS = (signal.SIGINT, signal.SIGTERM)
DUPLICATE_S = 1.0
GRACE_ENV, DEFAULT_GRACE_S = "SOFTLABELS_STOP_GRACE_S", 25.0


class Interrupted(BaseException):
    """A stop asked for by SIGINT/SIGTERM. A BaseException, like KeyboardInterrupt, so that no
    `except Exception` on the way up mistakes it for a failure; the CLI prints one line and
    exits with EXIT_INTERRUPTED. `what` says what was kept; `stage` is set by `pipeline run`."""

    def __init__(self, signum: int | None, what: str = ""):
        super().__init__(what)
        self.signum, self.what = signum, what
        self.stage: str | None = None

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else "a signal to another rank"


class _State:
    def __init__(self):
        self.signum: int | None = None
        self.at = 0.0
        self.deferred = 0
        self.owner: int | None = None  # the pid whose handlers these are
        self.timer: threading.Timer | None = None


_state = _State()


def requested() -> int | None:
    """The signal that asked this process to stop, or None."""
    return _state.signum


def check() -> None:
    """Raise Interrupted at a safe point if a stop was asked for."""
    if _state.signum is not None:
        raise Interrupted(_state.signum)


@contextlib.contextmanager
def deferred():
    """Within: a signal only sets the flag, for the caller to poll at its safe points."""
    _state.deferred += 1
    try:
        yield
    finally:
        _state.deferred -= 1


def grace_s() -> float:
    try:
        return float(os.environ.get(GRACE_ENV, DEFAULT_GRACE_S))
    except ValueError:
        return DEFAULT_GRACE_S


def _exit_now(reason: str) -> None:
    sys.stderr.write(f"interrupted: {reason}; exiting now (exit {EXIT_INTERRUPTED}): the last "
                     "checkpoint or shard on disk stays the valid one and a rerun resumes\n")
    sys.stderr.flush()
    os._exit(EXIT_INTERRUPTED)


def _handler(signum: int, frame) -> None:
    if os.getpid() != _state.owner:
        return  # a forked child (a DataLoader worker): the parent stops it
    now = time.monotonic()
    if _state.signum is not None:
        if now - _state.at >= DUPLICATE_S:
            _exit_now(f"second {signal.Signals(signum).name}")
        return
    _state.signum, _state.at = signum, now
    grace = grace_s()
    _state.timer = threading.Timer(grace, _exit_now, [f"no safe stop within {grace:g} s of "
                                                      f"{signal.Signals(signum).name}"])
    _state.timer.daemon = True
    _state.timer.start()
    if not _state.deferred:
        raise Interrupted(signum)


@contextlib.contextmanager
def handling():
    """Install the handlers for one command and restore the previous ones afterwards (an
    in-process caller such as a test keeps its own). Signals reach only the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    global _state
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    _state = _State()
    _state.owner = os.getpid()
    for s in SIGNALS:
        signal.signal(s, _handler)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if _state.timer is not None:
            _state.timer.cancel()
        _state = _State()
