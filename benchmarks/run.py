"""`make bench` / `make bench-quick`: every performance figure, measured side by side in one run.

    .venv/bin/python -m benchmarks.run [--quick] [--only 1,4] [--teacher DIR] [--device cpu]

Each figure is a ratio of variants run in interleaved repetitions (benchmarks/timing.py), so a
noisy shared machine cannot fake it; one module per figure (benchmarks/fig_*.py). The full run
writes BENCHMARKS.md (its own marked section) and benchmarks/results.json; `--quick` (a smoke
run with tiny sizes) writes them under its --out folder instead, so it never replaces the real
figures.
"""

import argparse
import resource
import shutil
import sys
import time
from pathlib import Path

import torch

from benchmarks import (
    fig_chat,
    fig_incremental,
    fig_label,
    fig_memory,
    fig_online,
    fig_quality,
    fig_scaleout,
    fig_startup,
    fig_storage,
    fig_stream,
    fig_students,
    fig_vocab,
    fig_xtok,
)
from benchmarks.common import REPO, Context, Params
from benchmarks.report import carry_over, machine_info, markdown, write_results, write_section
from pipeline.device import resolve_device
from pipeline.threads import requested_threads

FIGURES = {"1": fig_label, "2": fig_storage, "3": fig_stream, "4": fig_online,
           "5": fig_students, "6": fig_memory, "7": fig_scaleout, "8": fig_quality,
           "9": fig_vocab, "10": fig_startup, "11": fig_chat, "12": fig_incremental,
           "13": fig_xtok}


def cpu_seconds() -> float:
    """CPU time of this process and its waited-for children (memprobe, workers), user + sys."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(
        resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run of every figure")
    p.add_argument("--only", help="comma-separated figure numbers (default: all)")
    p.add_argument("--teacher", help="teacher directory (default data/teacher/, else a "
                                     "random-init teacher of the same shape)")
    p.add_argument("--device", default="cpu", help="cpu (the 2-core target), cuda or auto")
    p.add_argument("--reps", type=int, help="repetitions per figure (default 3; at least 3 "
                                            "for the published table)")
    p.add_argument("--out", help="work folder (default outputs/bench, quick: outputs/bench-quick)")
    p.add_argument("--results", help="results JSON (default benchmarks/results.json; quick: "
                                     "OUT/results.json)")
    p.add_argument("--markdown", help="Markdown file to update (default BENCHMARKS.md; quick: "
                                      "OUT/BENCHMARKS.md)")
    args = p.parse_args(argv)
    args.out = Path(args.out or REPO / ("outputs/bench-quick" if args.quick else "outputs/bench"))
    args.results = Path(args.results or (args.out / "results.json" if args.quick
                                         else REPO / "benchmarks/results.json"))
    args.markdown = Path(args.markdown or (args.out / "BENCHMARKS.md" if args.quick
                                           else REPO / "BENCHMARKS.md"))
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    # Measure what users run: the CLI's torch thread count (pipeline/threads.py: one unless
    # --threads); figure "1 (all cores)" asks for every core itself.
    torch.set_num_threads(requested_threads())
    machine = machine_info()  # first: the load average before we add to it
    params = Params.quick() if args.quick else Params()
    if args.reps:
        params.reps = args.reps
    only = args.only.split(",") if args.only else list(FIGURES)
    args.out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(args.out / "runs", ignore_errors=True)
    ctx = Context(params, args.out, resolve_device(args.device), args.quick, args.teacher)
    print(f"teacher: {ctx.teacher_description}", flush=True)
    # A process's first optimizer imports torch._dynamo (seconds): not something to time.
    torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))])
    start, figures = time.perf_counter(), []
    for key in only:
        t0 = time.perf_counter()
        torch.manual_seed(0)
        got = FIGURES[key].measure(ctx)
        figures += got
        for f in got:
            print(f"figure {f.id}: {f.measured()} (goal {f.goal}) {f.verdict()} "
                  f"[{time.perf_counter() - t0:.0f} s]", flush=True)
    seconds = time.perf_counter() - start
    machine["cpu_seconds"] = round(cpu_seconds(), 1)
    shown = {**params.as_dict(), "device": str(ctx.device), "quick": args.quick,
             "figures": only}
    command = "make bench-quick" if args.quick else "make bench"
    carried: dict = {}
    if args.only and not args.quick:  # keep the figures not rerun (report.carry_over)
        figures, carried = carry_over(figures, only, args.results)
        command += f" (--only {args.only})"
    text = markdown(figures, machine, shown, ctx.teacher_description, command, seconds, carried)
    write_section(text, args.markdown)
    write_results(figures, machine, shown, ctx.teacher_description, seconds, args.results,
                  carried)
    print(text)
    print(f"\nwrote {args.markdown} and {args.results} in {seconds / 60:.1f} min", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
