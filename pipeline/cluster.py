"""dask.distributed plumbing shared by the stages that scale out: clusters and clients.

Why dask and not a home-made pool: it already reschedules the tasks of a worker that dies, restarts
that worker (the nanny), streams results back as they complete, and runs unchanged on one laptop
(`--workers N` → LocalCluster) or on many machines (`--scheduler ADDR` → an existing cluster).

Worker layout: one process per worker and one thread each, because a torch model is not shared
between threads well and one process per GPU is the usual CUDA rule. When GPUs exist, each local
worker is pinned to one GPU with `CUDA_VISIBLE_DEVICES` (the dask-cuda convention), so inside the
worker the device is always `cuda:0`, and advertises a `GPU` resource.

The teacher cache is pipeline/models/loader.py's `cached_teacher`, i.e. once per worker process:
the first task on a worker loads the teacher, later tasks reuse it; `teacher_loads()` counts loads
so tests can check "once per worker".
"""

import contextlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path

from pipeline.errors import PipelineError

CONNECT_TIMEOUT_S = 5
WAIT_FOR_WORKERS_S = 60



def local_cluster(n_workers: int, gpus: int | None = None):
    """N worker processes × 1 thread on this machine; with GPUs, one GPU per worker."""
    from distributed import LocalCluster, Nanny, Scheduler, SpecCluster

    if n_workers < 1:
        raise PipelineError(f"--workers {n_workers} must be >= 1")
    if gpus is None:
        gpus = _visible_gpus()
    # ":0": a random dashboard port, so clusters of several users on one host never collide.
    quiet = {"silence_logs": logging.ERROR}
    if not gpus:
        return LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                            dashboard_address=":0", preload=[__name__], **quiet)
    # LocalCluster gives every worker the same options; SpecCluster lets each get its own GPU.
    workers = {i: {"cls": Nanny, "options": {
        "nthreads": 1, "resources": {"GPU": 1}, "preload": [__name__],
        "env": {"CUDA_VISIBLE_DEVICES": str(i % gpus)}}} for i in range(n_workers)}
    scheduler = {"cls": Scheduler, "options": {"dashboard_address": ":0"}}
    return SpecCluster(workers=workers, scheduler=scheduler, **quiet)


def dask_setup(worker) -> None:
    """Preloaded into every local worker process (dask calls it on start): Ctrl-C and a
    scheduler's SIGTERM reach the whole process group, but stopping is the client's job
    (pipeline/interrupt.py): it closes the cluster, which ends each worker (SIGKILL if need be;
    a worker also exits when the client's process is gone). So a worker does not die on them
    (mid-task, with a traceback, restarted by its nanny during the shutdown); it only goes quiet:
    from then on its scheduler connection is expected to close, and the heartbeat that finds it
    closed would log a CommClosedError traceback under the client's one-line message."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, _quiet_for_shutdown)


def _quiet_for_shutdown(signum, frame) -> None:
    """A stop signal reached this worker: silence dask's own logs for the rest of its life."""
    for name in ("distributed", "tornado", "asyncio"):
        logging.getLogger(name).setLevel(logging.CRITICAL + 1)


def _visible_gpus() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # no CUDA build or driver: a CPU cluster
        return 0


def scheduler_address(scheduler: str) -> str:
    """`tcp://HOST:PORT` as given, or the address inside a scheduler file (`dask scheduler
    --scheduler-file F`)."""
    looks_like_file = "://" not in scheduler and (scheduler.endswith(".json")
                                                  or Path(scheduler).exists())
    if not looks_like_file:
        return scheduler
    path = Path(scheduler)
    try:
        return json.loads(path.read_text())["address"]
    except FileNotFoundError:
        raise PipelineError(f"--scheduler {scheduler}: scheduler file not found; start one with "
                            f"`dask scheduler --scheduler-file {scheduler}` or pass "
                            "tcp://HOST:PORT") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PipelineError(f"--scheduler {scheduler}: not a dask scheduler file ({exc}); pass "
                            "the file written by `dask scheduler --scheduler-file` or "
                            "tcp://HOST:PORT") from None


def _check_address(address: str) -> None:
    """Refuse what dask cannot parse before a Client is built: a Client whose constructor fails
    on its address prints a traceback from its finalizer later, after our one-line error."""
    from distributed.comm import get_address_host_port

    try:
        get_address_host_port(address)
    except (ValueError, TypeError) as exc:
        raise PipelineError(f"--scheduler {address}: not a scheduler address ({exc}); pass "
                            "tcp://HOST:PORT or the file of `dask scheduler --scheduler-file`"
                            ) from None


def connect(scheduler: str, timeout: float = CONNECT_TIMEOUT_S):
    """A Client on an existing scheduler, or one clear line when it does not answer."""
    from distributed import Client

    address = scheduler_address(scheduler)
    _check_address(address)
    try:
        client = Client(address, timeout=timeout, set_as_default=False)
    except (OSError, TimeoutError, ValueError) as exc:
        raise PipelineError(f"--scheduler {address}: the dask scheduler did not answer within "
                            f"{timeout:g}s ({type(exc).__name__}); start it with `dask scheduler` "
                            "and `dask worker ADDR`, check host/port, or use --workers N for a "
                            "local cluster") from None
    try:
        client.wait_for_workers(1, timeout=WAIT_FOR_WORKERS_S)
    except TimeoutError:
        client.close()
        raise PipelineError(f"--scheduler {address} has no workers after "
                            f"{WAIT_FOR_WORKERS_S}s; start some with `dask worker {address} "
                            "--nthreads 1`") from None
    return client


@contextlib.contextmanager
def open_client(workers: int | None = None, scheduler: str | None = None) -> Iterator:
    """Yield a Client: on `scheduler` if given, else on a fresh LocalCluster of `workers`."""
    from distributed import Client

    if workers and scheduler:
        raise PipelineError("pass either --workers N (a local cluster) or --scheduler ADDR "
                            "(an existing one), not both")
    if scheduler:
        client = connect(scheduler)
        try:
            yield client
        finally:
            client.close()
        return
    with local_cluster(workers) as cluster, Client(cluster, set_as_default=False) as client:
        yield client


def worker_count(client) -> int:
    """Threads across the cluster: how many tasks can run at once."""
    return max(1, sum(client.nthreads().values()))
