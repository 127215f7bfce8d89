"""Figure 7: scale-out — labeling throughput with 2 dask workers ÷ 1 worker.

Both clusters are local (pipeline/cluster.py: one process and one thread per worker) and started
before timing, and each labels the corpus once untimed first, so every worker has loaded its
teacher: the figure is the labeling itself (plan on the client, one task per shard, writes on
the workers, manifest), not process start-up. The issue sets no goal; the ideal is
min(2, cores) because dask gives each worker one thread (OMP_NUM_THREADS=1). Shards are 32 rows
here (one task each), so there are many more tasks than workers.
"""

import logging
import os
import shutil

from benchmarks.common import Context
from benchmarks.report import Figure
from benchmarks.timing import interleaved, ratio, timed
from stages.label import run as label

SHARD_ROWS = 32  # a shard is one task: enough tasks that 2 workers share the work evenly


def measure(ctx: Context) -> list[Figure]:
    from pipeline.cluster import local_cluster

    p = ctx.params
    cores = len(os.sched_getaffinity(0))
    outs = {n: ctx.work / f"fig7-dask-{n}w" for n in (1, 2)}
    quiet = logging.getLogger("distributed")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # cluster start/stop chatter is not part of the report
    clusters = {n: local_cluster(n) for n in (1, 2)}
    try:
        cfgs = {n: ctx.label_config(outs[n], p.label_docs, scheduler=c.scheduler_address,
                                    shard_rows=SHARD_ROWS) for n, c in clusters.items()}
        for n in cfgs:  # warm-up: teachers loaded on every worker that gets a task
            shutil.rmtree(outs[n], ignore_errors=True)
            label(cfgs[n])
        positions = label(cfgs[1])["summary"]["positions"]
        s = interleaved({f"{n}w": (lambda n=n: timed(lambda: label(cfgs[n]))) for n in cfgs},
                        p.reps, setup=lambda name, _: shutil.rmtree(outs[int(name[0])],
                                                                    ignore_errors=True))
    finally:
        for c in clusters.values():
            c.close()
        quiet.setLevel(level)
    stat = ratio(s["1w"], s["2w"])  # throughput 2w ÷ 1w = time 1w ÷ time 2w
    ideal = min(2, cores)
    fig = Figure("7", "Scale-out: labeling throughput with 2 dask workers ÷ 1 worker",
                 f"none set (ideal {ideal:.2f}× on {cores} cores)", stat, None, unit="×",
                 details={"positions": positions, "1_worker_s": s["1w"], "2_workers_s": s["2w"],
                          "1_worker_positions_per_s": [positions / t for t in s["1w"]],
                          "2_workers_positions_per_s": [positions / t for t in s["2w"]]})
    if stat.median < 0.8 * ideal:
        fig.note = (
            f"2 workers gave {stat.median:.2f}× of an ideal {ideal:.2f}×. With {cores} cores "
            "and the machine's other load, the second worker competes with the client (which "
            "plans and writes the manifest) and the other processes for CPU; a shard is one "
            "task, so a corpus of few shards also leaves a worker idle at the end. More "
            "shards than workers and cores to spare close it; the in-process labeler already "
            "uses every core through torch's own threads.")
    return [fig]
