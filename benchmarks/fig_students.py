"""Figure 5: many students — one read pass feeding 3 students vs 3 separate runs.

Both sides run the real `pipeline train` stage (stages/train.py) in this process: one call with
three demo students (data/students: gpt-tiny, gpt-tiny-renorm, gru-small; same batch size, so
one pass) against three calls with one student each. Each run starts in an empty folder.

A perfect shared pass costs only the students' own compute (their `train_step` seconds, which
each run records as `train_seconds` in complete.json); the reading, decoding, start-up and
checkpoints of three runs are paid once. So the bound for (one pass ÷ sum of singles) is the
summed compute share Σ train_seconds ÷ Σ single wall times, and the figure is the measured
ratio ÷ that share: 1.0 = perfect sharing, 3 / (3 × share) = no sharing at all.
"""

import json
import shutil

from benchmarks.common import REPO, Context
from benchmarks.profiling import cprofile_top
from benchmarks.report import Figure
from benchmarks.timing import interleaved, per_round, timed
from pipeline.training.layout import COMPLETE
from stages.train import TrainConfig
from stages.train import run as train

GOAL = 1.1


def measure(ctx: Context) -> list[Figure]:
    p = ctx.params
    ds = ctx.dataset("base", p.base_docs)
    files = {name: ctx.student_file(f"many-{name}", REPO / f"data/students/{name}.toml",
                                    train={"batch_size": p.batch_size})
             for name in p.students}
    runs = ctx.work / "fig5-runs"

    def cfg(name: str, students: list) -> TrainConfig:
        return TrainConfig(labels=str(ds.root), students=[str(f) for f in students],
                           out=str(runs / name), max_steps=p.students_steps,
                           device=str(ctx.device), quiet=True)

    configs = {"one_pass": cfg("one_pass", list(files.values()))}
    configs.update({name: cfg(name, [f]) for name, f in files.items()})
    compute: dict[str, list[float]] = {name: [] for name in files}

    def variant(name: str):
        def go() -> float:
            seconds = timed(lambda: train(configs[name]))
            if name in compute:
                done = json.loads((runs / name / f"many-{name}" / COMPLETE).read_text())
                compute[name].append(done["train_seconds"])
            return seconds
        return go

    s = interleaved({name: variant(name) for name in configs}, p.reps,
                    setup=lambda name, _: shutil.rmtree(runs / name, ignore_errors=True))
    singles = [s[name] for name in files]
    ratio = per_round(lambda one, *sing: one / sum(sing), s["one_pass"], *singles)
    share = per_round(lambda *v: sum(v[:len(files)]) / sum(v[len(files):]),
                      *compute.values(), *singles)
    stat = per_round(lambda r, sh: r / sh, ratio.values, share.values)
    fig = Figure("5", f"Many students: 3 students in one read pass ÷ sum of 3 single runs "
                      f"({ratio.median:.2f}), ÷ their summed compute share ({share.median:.2f})",
                 f"≤ {GOAL}", stat, stat.median <= GOAL, unit="",
                 details={"students": list(files), "steps": p.students_steps,
                          "one_pass_s": s["one_pass"],
                          **{f"{n}_s": s[n] for n in files},
                          **{f"{n}_train_seconds": compute[n] for n in files},
                          "pass_over_singles": ratio.values, "compute_share": share.values})
    if not fig.passed:
        shutil.rmtree(runs / "one_pass", ignore_errors=True)
        top = cprofile_top(lambda: train(configs["one_pass"]))
        fig.note = (
            f"The shared pass cost {stat.median:.2f}× the students' own compute share. Profile "
            f"of one shared pass (self time): {top}. The gap is what each run pays besides "
            "training that a shared pass does not remove: model construction, the checkpoints "
            "at the start and end, the final validation, and the shard checksums. What would "
            "close it: longer runs (they are fixed costs), and verifying shard checksums once "
            "per dataset instead of once per `pipeline train` call.")
    return [fig]
