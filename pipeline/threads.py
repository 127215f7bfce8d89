"""One fixed count of CPU compute threads per process, so reruns and resumes are bit-exact.

Why: torch's CPU kernels (its OpenMP loops, MKL's GEMMs, oneDNN) split a reduction across
their threads and add the partial sums in an order that depends on how many threads took part.
Two processes that use different counts — a different default on another machine, a dask worker
(dask's nanny gives workers one thread), a library that "may use fewer threads than requested"
when MKL_DYNAMIC/OMP_DYNAMIC are on — round differently in the last bit, and a run that is
killed and resumed then ends with other weights or labels than the unbroken run. So every
process the tool starts fixes its count at start, before torch creates its thread pools:

- the count is `--threads N` (the CLI's global option), else `SOFTLABELS_THREADS`, else
  `OMP_NUM_THREADS` when the user set it, else DEFAULT_THREADS (1). One thread is the default
  because it is the only count that gives the same bytes on every machine and in every executor
  (in process, dask workers, torchrun ranks, which torchrun also starts at one thread). It costs
  no CPU time (the demo: 4.2 CPU-minutes at one thread, 4.3–4.8 at two), only the wall-clock
  speed-up of other cores on CPU-bound stages (README: "Threads");
- dynamic threading is turned off (OMP_DYNAMIC=FALSE, MKL_DYNAMIC=FALSE), so N means N even
  under load;
- the count is exported as SOFTLABELS_THREADS (and MKL_NUM_THREADS, which torch and MKL read
  when they start), so worker processes started later use it too; dask tasks call `pin_threads`
  again because the nanny overrides OMP_NUM_THREADS/MKL_NUM_THREADS in its workers. OMP_NUM_THREADS
  itself is left alone: pyarrow sizes its own I/O and decode pool from it.

DataLoader worker processes need nothing: torch runs them at one thread and they only decode.
"""

import os
import sys

from pipeline.errors import PipelineError

ENV = "SOFTLABELS_THREADS"
DEFAULT_THREADS = 1
DYNAMIC_OFF = {"OMP_DYNAMIC": "FALSE", "MKL_DYNAMIC": "FALSE"}


def _parse(name: str, value: str) -> int:
    # OMP_NUM_THREADS may list one count per nesting level ("4,2"): the first is ours.
    first = value.split(",")[0].strip()
    if not first.isdigit() or int(first) < 1:
        raise PipelineError(f"{name}={value!r} is not a positive thread count; set it to an "
                            "integer >= 1 (e.g. 1, the default) or unset it")
    return int(first)


def requested_threads(threads: int | None = None) -> int:
    """The count this process should use: `threads` if given, else the environment, else 1."""
    if threads is not None:
        return _parse("--threads", str(threads))
    for name in (ENV, "OMP_NUM_THREADS"):
        value = os.environ.get(name, "").strip()
        if value:
            return _parse(name, value)
    return DEFAULT_THREADS


def pin_threads(threads: int | None = None) -> int:
    """Fix this process's compute thread count and turn dynamic threading off; returns it.

    Called at process start (the CLI) and at the start of every dask task. Before torch is
    imported it only sets the environment torch, OpenMP and MKL read when they start; once
    torch is loaded it also calls `torch.set_num_threads` (which turns MKL's dynamic mode off
    as well)."""
    n = requested_threads(threads)
    os.environ.update({ENV: str(n), "MKL_NUM_THREADS": str(n), **DYNAMIC_OFF})
    torch = sys.modules.get("torch")
    if torch is not None and hasattr(torch, "set_num_threads"):
        torch.set_num_threads(n)
    return n
