"""Kill tests wait for a state, never for a moment.

A test that polls for "N shards done" and then sends SIGKILL races the process it watches: on a
loaded machine the process can run far past that point, or finish, between the check and the
signal. So the process under test stops at a named point and stays there until it is killed
(or, on dask, released):

- `cli_shim(extra)` is a `python -c` program that runs the real CLI with the holds of
  `hold_env(...)` installed: at the n-th call of a function (whose arguments satisfy `where`) it
  writes a marker file and sleeps, before or after the real call. `wait_for_marker` returns
  once the marker exists, so the kill lands in the hold: the state is known, the process real.
- `WorkerGate` does the same on dask workers: a matching call reports its worker through a dask
  Queue and waits on a dask Event until the test has killed what it wanted and releases it.
"""

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

SHIM_HEAD = '''
import importlib, json, os, sys, threading, time
from pathlib import Path
from pipeline.threads import pin_threads
pin_threads()  # as the CLI does at start, before the holds below import torch

def _hold(spec):
    module, attr = spec["target"].split(":")
    mod = importlib.import_module(module)
    real, seen, lock = getattr(mod, attr), [0], threading.Lock()
    def pause():
        Path(spec["marker"]).write_text(spec["target"])
        time.sleep(300)  # killed here
    def wrapper(*args, **kwargs):
        hit = False
        if eval(spec.get("where", "True"), {"Path": Path, "args": args, "kwargs": kwargs}):
            with lock:
                seen[0] += 1
                hit = seen[0] == spec.get("nth", 1)
        if hit and spec.get("when", "before") == "before":
            pause()
        result = real(*args, **kwargs)
        if hit and spec.get("when") == "after":
            pause()
        return result
    setattr(mod, attr, wrapper)

for _spec in json.loads(os.environ.get("HOLD_AT", "[]")):
    _hold(_spec)
'''

SHIM_TAIL = '''
from pipeline.cli import main
sys.argv = ["pipeline", *sys.argv[1:]]
main()
'''


def cli_shim(extra: str = "") -> str:
    """The program for `python -c`: holds from HOLD_AT, then `extra`, then the real CLI."""
    return SHIM_HEAD + extra + SHIM_TAIL


def hold_env(target: str, marker: Path, nth: int = 1, when: str = "before",
             where: str = "True") -> dict:
    """Environment for `cli_shim`: hold at the `nth` call of `target` ("module:function") whose
    positional `args` satisfy the expression `where`, `when` = before or after the real call."""
    spec = {"target": target, "marker": str(marker), "nth": nth, "when": when, "where": where}
    return {"HOLD_AT": json.dumps([spec])}


def wait_for_marker(proc: subprocess.Popen, marker: Path, timeout: float = 300) -> None:
    """Return once `proc` holds at its marker; fail if it exits or never gets there."""
    deadline = time.monotonic() + timeout
    while not marker.exists():
        assert proc.poll() is None, f"exited ({proc.returncode}) before reaching its hold point"
        assert time.monotonic() < deadline, f"no hold at {marker} within {timeout:g}s"
        time.sleep(0.02)


def kill_in_hold(args: list[str], hold: dict, marker: Path, env: dict | None = None,
                 program: str | None = None) -> subprocess.CompletedProcess:
    """Run the real CLI (`cli_shim()`, or `program` for `python -c`) with `args` and the holds
    of `hold` (hold_env), wait until it holds at `marker`, SIGKILL it there; returns how it
    ended (returncode, stderr text)."""
    proc = subprocess.Popen([sys.executable, "-c", program or cli_shim(), *map(str, args)],
                            cwd=REPO, env={**(os.environ if env is None else env), **hold},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_marker(proc, marker)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, None, err.decode())


class WorkerGate:
    """Holds calls of `target` ("module:function") on the current dask workers after the real
    call whenever `hold_if(args, result)` is true, until `release()`. Workers started later
    (a nanny's restart) run unpatched."""

    def __init__(self, client, target: str, hold_if):
        from distributed import Event, Queue

        name = uuid.uuid4().hex[:8]
        self._held = Queue(f"held-{name}", client=client)
        self._go = Event(f"go-{name}", client=client)

        def install():  # runs in each worker process (pickled by value)
            import importlib

            module, attr = target.split(":")
            mod = importlib.import_module(module)
            real = getattr(mod, attr)

            def gated(*args, **kwargs):
                from distributed import Event, Queue, get_worker

                result = real(*args, **kwargs)
                go = Event(f"go-{name}")
                if hold_if(args, result) and not go.is_set():
                    Queue(f"held-{name}").put(get_worker().address)
                    go.wait(timeout=300)
                return result

            setattr(mod, attr, gated)

        client.run(install)

    def held_worker(self, timeout: float = 120) -> str:
        """The address of a worker that holds a call now (waits for one)."""
        return self._held.get(timeout=timeout)

    def release(self) -> None:
        self._go.set()
