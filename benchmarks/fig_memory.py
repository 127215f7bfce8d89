"""Figure 6: memory — peak RSS of `label` and `train` on a corpus 8× larger ÷ 1×.

Streaming stages should hold a bounded window (a shard, a shuffle window), not the corpus, so
their peak resident memory must not grow with it. Each measurement is a fresh child process of
benchmarks/memprobe.py (peak RSS from `os.wait4`), running the real stage: labeling the first N
and 8·N BBC News articles, then one epoch of training on each dataset (a small GPT student,
so an 8× epoch stays cheap; the data path is what is measured) with a shuffle window of 64
rows. Every article goes to the train split here.
"""

import json
import shutil
import subprocess
import sys
from dataclasses import asdict

from benchmarks.common import REPO, Context
from benchmarks.report import Figure
from benchmarks.timing import interleaved, ratio

GOAL = 1.1
# The reader holds about two shuffle windows of decoded rows, by design. A 1x corpus smaller than
# that would measure the window filling up, not growth with the corpus, so the window is set
# below the 1x corpus (the same for both sizes).
SHUFFLE_ROWS = 64


class Probe:
    """The memprobe child process: send a job, get the job's peak RSS in bytes."""

    def __init__(self, log):
        self.proc = subprocess.Popen([sys.executable, "-m", "benchmarks.memprobe"], cwd=REPO,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                                     text=True)

    def peak(self, stage: str, config: dict) -> float:
        self.proc.stdin.write(json.dumps({"stage": stage, "config": config}) + "\n")
        self.proc.stdin.flush()
        answer = json.loads(self.proc.stdout.readline() or '{"status": "probe died"}')
        if answer["status"] != 0:
            raise RuntimeError(f"memprobe {stage} failed ({answer['status']}); see its log")
        return answer["maxrss_kb"] * 1024.0

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def measure(ctx: Context) -> list[Figure]:
    p = ctx.params
    root = ctx.work / "fig6-memory"
    root.mkdir(parents=True, exist_ok=True)
    student = ctx.student_file("memory-gpt-mini", model={"n_layer": 1, "n_head": 1,
                                                         "d_model": 32},
                               train={"batch_size": p.batch_size})
    jobs = {}
    for scale in (1, 8):
        labels = root / f"labels-{scale}x"
        jobs[f"label_{scale}x"] = ("label", labels, asdict(
            ctx.label_config(labels, p.memory_docs * scale, validation_fraction=0.0)))
        runs = root / f"runs-{scale}x"
        jobs[f"train_{scale}x"] = ("train", runs, {
            "labels": str(labels), "students": [str(student)], "out": str(runs),
            "epochs": 1, "device": str(ctx.device), "quiet": True,
            "shuffle_rows": SHUFFLE_ROWS})
    with open(root / "memprobe.log", "w") as log:
        probe = Probe(log)
        try:
            s = interleaved({name: (lambda job=job: probe.peak(job[0], job[2]))
                             for name, job in jobs.items()}, p.reps,
                            setup=lambda name, _: shutil.rmtree(jobs[name][1],
                                                                ignore_errors=True))
        finally:
            probe.close()
    figures = []
    for stage in ("label", "train"):
        stat = ratio(s[f"{stage}_8x"], s[f"{stage}_1x"])
        fig = Figure(f"6 ({stage})", f"Memory: peak RSS of `{stage}` on an 8× larger corpus "
                     f"({p.memory_docs * 8} vs {p.memory_docs} articles) ÷ 1×", f"≤ {GOAL}",
                     stat, stat.median <= GOAL, unit="×",
                     details={"peak_rss_mb_1x": [v / 2**20 for v in s[f"{stage}_1x"]],
                              "peak_rss_mb_8x": [v / 2**20 for v in s[f"{stage}_8x"]]})
        if not fig.passed:
            grow = (s[f"{stage}_8x"][0] - s[f"{stage}_1x"][0]) / 2**20
            fig.note = (
                f"`{stage}` used {grow:.0f} MB more at 8× ({stat.median:.2f}×). A streaming "
                "stage should not grow with the corpus: look for per-shard or per-row state "
                "kept for the whole run (plan lists, records, decoded row groups held past "
                "their last use) with tracemalloc snapshots at 1× and 8×.")
        figures.append(fig)
    return figures
