"""`pipeline train --workers N | --scheduler ADDR`: one dask task per student.

In process, students share one read pass; across a cluster each student is one task that runs the
ordinary single-student trainer (the train stage's `run`) on a worker and streams the shards, so
its own run folder is exactly what the in-process path writes. The client checks every student file
and run folder first (same refusals as in process), so a task may always pass `resume`: anything
unfinished in its folder was left by an earlier attempt of this same task, e.g. on a worker that
died, which dask reschedules.

Paths are made absolute because a worker may run in another directory; on a multi-machine
cluster the dataset and --out must be on a filesystem every worker sees.
"""

import os
import uuid
from dataclasses import replace
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.io.storage import absolute
from pipeline.progress import positions_progress
from pipeline.threads import pin_threads, requested_threads


def pinned(task, threads: int, cfg):
    """Run `task(cfg)` on a worker at the client's thread count: the nanny starts workers at
    one thread, another machine's workers at whatever they were given (pipeline/threads.py)."""
    pin_threads(threads)
    return task(cfg)


def train_on_cluster(cfg, student_paths: list[str], task) -> list[dict]:
    """Submit `task(cfg)` once per student (cfg.students has one file; the train stage passes
    its own one-student task, so this module never imports a stage) and wait for all; return
    their results (name, run_dir, worker pid, summary) in completion order."""
    from distributed import as_completed

    from pipeline.cluster import open_client

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise PipelineError("--workers/--scheduler cannot be combined with torchrun: use one "
                            "(dask for many students, torchrun for one big student)")
    base = replace(cfg, labels=absolute(cfg.labels), out=absolute(cfg.out),
                   workers=None, scheduler=None, resume=True, quiet=True)
    run_id, threads = uuid.uuid4().hex[:8], requested_threads()
    with open_client(cfg.workers, cfg.scheduler) as client, \
            positions_progress(disable=cfg.quiet, stage="train") as progress:
        bar = progress.add_task("students", total=len(student_paths), rate="", unit="students")
        futures = [client.submit(pinned, task, threads,
                                 replace(base, students=[str(Path(p).resolve())]),
                                 key=f"train-{Path(p).stem}-{run_id}", pure=False)
                   for p in student_paths]
        results = []
        for future in as_completed(futures, loop=client.loop):
            results.append(future.result())  # a student's PipelineError surfaces as is
            progress.advance(bar)
    return results
