"""Figure 12: incremental labeling — +10 % documents on a 1,000-document corpus.

A folder of BBC News articles (one .txt each: the file path is a stable document id) is labeled
as version 1 with `pipeline label --incremental`; then 10 % more articles are added to the
folder. Timed, interleaved: labeling the grown corpus incrementally (a copy of version 1 gains
version 2: only the new documents go through the teacher) and labeling it whole into a new
folder, as a corpus relabeled nightly would be. The figure is incremental ÷ full wall time (goal
≤ 0.15; 0.10 is the share of new documents, the ideal). Both include loading the teacher.

12 (rerun): the same incremental command once more, the corpus unchanged: wall seconds (goal
≤ 2 s). It lists the corpus folder and hashes the teacher's weights file, reads no corpus byte
and loads no teacher (tests/stages/test_label_incremental.py checks both).
"""

import shutil
from pathlib import Path

from benchmarks.common import Context
from benchmarks.report import Figure
from benchmarks.timing import Stat, interleaved, ratio, timed
from pipeline.labeling.corpus import builtin_root
from stages.label import run as label

GOAL, RERUN_GOAL = 0.15, 2.0


def _articles(n: int) -> list[Path]:
    return sorted(builtin_root("builtin:bbc-news").rglob("*.txt"))[:n]


def _fill(folder: Path, files: list[Path]) -> None:
    for f in files:
        shutil.copyfile(f, folder / f"{f.parent.name}-{f.name}")


def measure(ctx: Context) -> list[Figure]:
    p = ctx.params
    docs, added = p.incremental_docs, max(1, p.incremental_docs // 10)
    root = ctx.work / "fig11"
    shutil.rmtree(root, ignore_errors=True)
    corpus, base = root / "corpus", root / "v1"
    corpus.mkdir(parents=True)
    articles = _articles(docs + added)
    _fill(corpus, articles[:docs])

    def cfg(out: Path, incremental: bool = True):
        return ctx.label_config(out, None, corpus=str(corpus), incremental=incremental)

    label(cfg(base))  # version 1 (untimed)
    _fill(corpus, articles[docs:])
    runs = {"incremental": root / "incremental", "full": root / "full"}

    def setup(name: str, _round: int) -> None:
        shutil.rmtree(runs[name], ignore_errors=True)
        if name == "incremental":
            shutil.copytree(base, runs[name])

    series = interleaved({"incremental": lambda: timed(lambda: label(cfg(runs["incremental"]))),
                          "full": lambda: timed(lambda: label(cfg(runs["full"], False)))},
                         p.reps, setup=setup)
    stat = ratio(series["incremental"], series["full"])
    changes = label(cfg(runs["incremental"]))["version"]["changes"]
    rerun = Stat([timed(lambda: label(cfg(runs["incremental"]))) for _ in range(p.reps)])
    details = {"documents": docs, "added": added, "incremental_s": series["incremental"],
               "full_s": series["full"], "changes": changes}
    figs = [Figure("12", f"Incremental labeling: +10 % documents on a {docs:,}-document corpus, "
                   "incremental ÷ full relabel wall time", f"≤ {GOAL:.2f}", stat,
                   stat.median <= GOAL, details=details),
            Figure("12 (rerun)", "Incremental labeling, corpus unchanged: label stage wall "
                   "time (no corpus read, no teacher load)", f"≤ {RERUN_GOAL:.0f} s", rerun,
                   rerun.median <= RERUN_GOAL, unit=" s",
                   details={"seconds": rerun.values})]
    for fig in figs:
        if not fig.passed:
            fig.note = _note(series, rerun)
    return figs


def _note(series: dict, rerun: Stat) -> str:
    """Why a miss happens: the fixed costs every label run pays, whatever it labels."""
    return (f"Incremental runs took {min(series['incremental']):.2f}–"
            f"{max(series['incremental']):.2f} s against {min(series['full']):.2f}–"
            f"{max(series['full']):.2f} s for a full relabel; an unchanged rerun "
            f"{rerun.median:.2f} s. An incremental run pays fixed costs a full one amortises: "
            "loading and hashing the teacher, listing and hashing every document to find what "
            "changed, reading the last version's document index and writing a new version. On a "
            "small corpus (the quick sizes) they dominate; at 1,000 documents the teacher's "
            "share of the new documents does.")
