"""Figure 3: streaming — can the reader feed a student many times over?

Reader rate: positions per second of `stream_epochs` training epochs read by the real streaming
reader as the trainer reads them (pipeline/softlabels/stream.py `iter_epochs`: plan, Parquet row
groups, vectorised decode, shuffle window, batches of torch tensors), in the main process and
with 2 DataLoader worker processes (their start-up included: the trainer pays it once per run).
Student rate: positions per second one demo student (data/students/gpt-tiny.toml, `kl_tail`)
consumes in `train_step` on batches already in memory. Their ratio is the headroom: how many
such students one reader could feed.
"""

import time

from benchmarks.common import DEMO_STUDENT, Context
from benchmarks.profiling import torch_profile_top
from benchmarks.report import Figure
from benchmarks.timing import Stat, interleaved
from pipeline.softlabels.stream import StreamConfig, StreamReader

GOAL = 20.0


def _reader_rate(ds, batch_size: int, workers: int, epochs: int,
                 first: list | None = None) -> float:
    """Positions/s over `epochs` epochs; appends the seconds to the first batch to `first`."""
    reader = StreamReader(ds, StreamConfig("train", batch_size, num_workers=workers),
                          verify=False)
    start, positions = time.perf_counter(), 0
    for _, _, batch in reader.iter_epochs(0, 0, last_epoch=epochs - 1):
        if positions == 0 and first is not None:
            first.append(time.perf_counter() - start)
        positions += batch["input_ids"].numel()
    return positions / (time.perf_counter() - start)


def _student_rate(ctx: Context, spec, ds, batches: list[dict]) -> float:
    run = ctx.student_run(spec, ds, len(batches))
    run.train_step(batches[0])  # warm-up step (allocator, first AdamW state); not timed
    start = time.perf_counter()
    for b in batches[1:]:
        run.train_step(b)
    return sum(b["input_ids"].numel() for b in batches[1:]) / (time.perf_counter() - start)


def measure(ctx: Context) -> list[Figure]:
    p = ctx.params
    ds = ctx.dataset("base", p.base_docs)
    spec = ctx.student_spec(ctx.student_file("stream-gpt-tiny", DEMO_STUDENT), ds,
                            p.stream_student_steps + 1)
    batches = ctx.batches(ds, limit=p.stream_student_steps + 1)
    first: dict[str, list[float]] = {"reader_1proc": [], "reader_2workers": []}
    epochs = p.stream_epochs
    series = interleaved({"reader_1proc": lambda: _reader_rate(ds, p.batch_size, 0, epochs,
                                                               first["reader_1proc"]),
                          "reader_2workers": lambda: _reader_rate(ds, p.batch_size, 2, epochs,
                                                                  first["reader_2workers"]),
                          "student": lambda: _student_rate(ctx, spec, ds, batches)}, p.reps)
    epoch_positions = sum(s.rows for s in ds.split_shards("train")) * ds.seq_len
    figures = []
    for key, label in (("reader_1proc", "1 process"), ("reader_2workers", "2 loader workers")):
        stat = Stat([r / s for r, s in zip(series[key], series["student"])])
        fig = Figure(f"3 ({'1p' if key == 'reader_1proc' else '2w'})",
                     f"Streaming ({label}): positions/s decoded into tensors ÷ positions/s one "
                     "demo student (gpt-tiny) trains on", f"≥ {GOAL:.0f}×", stat,
                     stat.median >= GOAL, unit="×", fmt=".1f",
                     details={"reader_positions_per_s": series[key],
                              "student_positions_per_s": series["student"],
                              "first_batch_s": first[key],
                              "epoch_positions": epoch_positions, "epochs": epochs})
        figures.append(fig)
    if any(not f.passed for f in figures):
        top = torch_profile_top(lambda: _reader_rate(ds, p.batch_size, 0, 1))
        for f in figures:
            if not f.passed:
                f.note = _note(f, top, first, epochs)
    return figures


def _note(fig: Figure, top: str, first: dict[str, list[float]], epochs: int) -> str:
    head = (f"The reader gives {fig.stat.median:.1f}× what the student consumes (goal "
            f"≥ {GOAL:.0f}×) over {epochs} epochs. Torch operators in one single-process "
            f"epoch (profile): {top}. ")
    if fig.id.endswith("(2w)"):
        w, one = Stat(first["reader_2workers"]).median, Stat(first["reader_1proc"]).median
        return head + (f"The first batch takes {w:.2f} s with 2 workers against {one:.2f} s in "
                       "process (a fork, a Parquet open and a first row group per worker, once "
                       "per run), and on 2 cores the two workers and the main process, which "
                       "reorders their batches, share the CPUs. What would close it: more "
                       "cores (a worker per core), or prefetching more than one batch per "
                       "worker.")
    return head + ("Decoding a row group is vectorised, but cutting batches out of the shuffle "
                   "window is not: `_gather` (pipeline/softlabels/stream.py) writes each batch "
                   "with one advanced-index assignment (`out[k][where] = ...`, aten::index_put) "
                   "per row group and column, up to (window ÷ row-group rows) × 4 small ops per "
                   "batch. What would close it: concatenate a window's decoded row groups once "
                   "and take each batch with one `index_select` per column (or `index_copy_`), "
                   "and read ahead on DataLoader workers, which already clear the goal here.")
