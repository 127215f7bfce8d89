"""Figure 10: start-up — does the time to the first training step grow with the dataset?

Two synthetic datasets of the same shard files: `startup_shards` shards (10^5) and 10, each a
hard link to one of the first 10 full train shards of a dataset the real labeler made, listed
in a manifest with their entries (row-group index included). `pipeline train` runs on each as a
user runs it, in a fresh process (benchmarks/startup_child.py, one loader worker), stopped at
its first optimizer step; the figure is the time from process start to that step, 10^5 shards
÷ 10 shards, repetitions interleaved. The child also counts the shard files the training process
opens before step 1 (goal 0: planning reads only manifest.json; rows are read, and verified, by
the loader worker).

Before: the same two runs with the code of commit BASELINE (`git archive`, once, when the
repository is there), which hashed every shard and opened every footer before step 1. It reads
the same datasets: the index fields are optional, and older readers ignore them.
"""

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from benchmarks.common import DEMO_STUDENT, REPO, Context
from benchmarks.report import Figure
from benchmarks.timing import Stat, interleaved
from pipeline.softlabels.layout import MANIFEST, TOKENIZER, shard_relpath
from pipeline.softlabels.reader import SoftLabelDataset

GOAL = 2.0
SMALL = 10
BASELINE = "54a59cb"  # main before the row-group index (docs/FORMAT.md "Row-group index")
CHILD = REPO / "benchmarks/startup_child.py"


def synthesize(src: SoftLabelDataset, n: int, out: Path) -> Path:
    """A dataset of `n` train shards, hard links cycling over src's first 10 full ones, plus
    src's validation split; reused when it is already there with the same sources."""
    full = max(s.rows for s in src.split_shards("train"))
    picks = [s for s in src.split_shards("train") if s.rows == full][:SMALL]
    entries = src.manifest["splits"]["train"]
    key = [src.manifest["plan_fingerprint"], n]
    if (out / "source.json").is_file() and json.loads((out / "source.json").read_text()) == key:
        return out
    shutil.rmtree(out, ignore_errors=True)
    (out / "shards/train").mkdir(parents=True)
    train = []
    for i in range(n):
        shard = picks[i % len(picks)]
        rel = shard_relpath("train", i)
        os.link(shard.path, out / rel)
        train.append({**entries[shard.index], "path": rel})
    for shard in src.split_shards("validation"):
        (out / shard.rel).parent.mkdir(parents=True, exist_ok=True)
        os.link(shard.path, out / shard.rel)
    shutil.copyfile(src.root / TOKENIZER, out / TOKENIZER)
    manifest = {**src.manifest, "splits": {**src.manifest["splits"], "train": train}}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    (out / "source.json").write_text(json.dumps(key))
    return out


def baseline_tree(work: Path) -> Path | None:
    """The code of BASELINE (pipeline/, stages/) under work/, or None without git history."""
    tree = work / f"baseline-{BASELINE}"
    if not (tree / "stages").is_dir():
        proc = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", BASELINE,
                               "pipeline", "stages"], capture_output=True)
        if proc.returncode != 0:
            return None
        with tarfile.open(fileobj=io.BytesIO(proc.stdout)) as tar:
            tar.extractall(tree, filter="data")
    return tree


def first_step(ds: Path, student: Path, runs: Path, tree: Path = REPO) -> dict:
    """One `pipeline train` process until its first step: wall seconds from its start, plus
    what the child reports (imports_s, first_step_s, shard_opens)."""
    shutil.rmtree(runs, ignore_errors=True)
    argv = [sys.executable, str(CHILD), "train", "--labels", str(ds), "--student", str(student),
            "--out", str(runs), "--device", "cpu", "--quiet", "--num-workers", "1",
            "--max-steps", "2"]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    start = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=tree, timeout=1800)
    wall = time.perf_counter() - start
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"startup child failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return {"wall_s": wall, **json.loads(lines[-1])}


def measure(ctx: Context) -> list[Figure]:
    p = ctx.params
    src = ctx.dataset("startup-src", p.startup_docs, shard_rows=16, row_group_rows=8)
    big = synthesize(src, p.startup_shards, ctx.work / "data" / "startup-big")
    small = synthesize(src, SMALL, ctx.work / "data" / "startup-small")
    student = ctx.student_file("startup-gpt-tiny", DEMO_STUDENT)
    runs, raw = ctx.work / "runs" / "startup", {"big": [], "small": []}
    series = interleaved({name: lambda name=name, ds=ds: _time(raw[name], ds, student, runs)
                          for name, ds in (("small", small), ("big", big))}, p.reps)
    stat = Stat([b / s for b, s in zip(series["big"], series["small"])])
    before = _before(ctx, big, small, student, runs)
    opens = max(r["shard_opens"] for r in raw["big"])
    name = (f"Start-up: time to the first optimizer step of `pipeline train`, "
            f"{p.startup_shards:,}-shard ÷ {SMALL}-shard dataset (same shards); shard opens "
            f"before step 1: {opens}" + (f" (before: {before['ratio']:.1f}×, "
                                        f"{before['big']['shard_opens']:,} opens)"
                                        if before else ""))
    fig = Figure("10", name, f"≤ {GOAL:.0f}× and 0 opens", stat,
                 stat.median <= GOAL and opens == 0, unit="×", fmt=".2f",
                 details={"big_first_step_s": series["big"], "small_first_step_s": series["small"],
                          "in_process_s": {k: [round(r["first_step_s"] - r["imports_s"], 3)
                                               for r in v] for k, v in raw.items()},
                          "shards": {"big": p.startup_shards, "small": SMALL},
                          "manifest_bytes": (big / MANIFEST).stat().st_size,
                          "before": before})
    if not fig.passed:
        fig.note = (f"Start-up takes {stat.median:.2f}× as long at {p.startup_shards:,} shards "
                    f"(goal ≤ {GOAL:.0f}×), {opens} shard opens before step 1; in-process "
                    f"seconds (after imports): {fig.details['in_process_s']}.")
    return [fig]


def _time(raw: list, ds: Path, student: Path, runs: Path) -> float:
    raw.append(first_step(ds, student, runs))
    return raw[-1]["wall_s"]


def _before(ctx: Context, big: Path, small: Path, student: Path, runs: Path) -> dict | None:
    """One run of each with BASELINE's code: the value before this figure's change (not in
    --quick, to keep the smoke run short)."""
    tree = None if ctx.quick else baseline_tree(ctx.work)
    if tree is None:
        return None
    try:
        got = {name: first_step(ds, student, runs, tree) for name, ds in (("small", small),
                                                                        ("big", big))}
    except RuntimeError as exc:  # BASELINE's reader predates this dataset's format: say so
        print(f"figure 10: no 'before' value: {str(exc).splitlines()[-1][:300]}")
        return None
    return {**got, "commit": BASELINE, "ratio": got["big"]["wall_s"] / got["small"]["wall_s"]}
