"""Figure 3: streaming — can the reader feed a student many times over?

Reader rate: positions per second of one training epoch read by the real streaming reader
(pipeline/softlabels/stream.py: plan, Parquet row groups, vectorised decode, shuffle window,
batches of torch tensors), in the main process and with 2 DataLoader worker processes (their
start-up included: the trainer pays it every epoch too). Student rate: positions per second one
demo student (data/students/gpt-tiny.toml, `kl_tail`) consumes in `train_step` on batches
already in memory. Their ratio is the headroom: how many such students one reader could feed.
"""

import time

from benchmarks.common import DEMO_STUDENT, Context
from benchmarks.profiling import torch_profile_top
from benchmarks.report import Figure
from benchmarks.timing import Stat, interleaved
from pipeline.softlabels.stream import StreamConfig, StreamReader

GOAL = 20.0


def _reader_rate(ds, batch_size: int, workers: int) -> float:
    reader = StreamReader(ds, StreamConfig("train", batch_size, num_workers=workers),
                          verify=False)
    start, positions = time.perf_counter(), 0
    for _, batch in reader.iter_epoch(0):
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
    series = interleaved({"reader_1proc": lambda: _reader_rate(ds, p.batch_size, 0),
                          "reader_2workers": lambda: _reader_rate(ds, p.batch_size, 2),
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
                              "epoch_positions": epoch_positions})
        figures.append(fig)
    if any(not f.passed for f in figures):
        top = torch_profile_top(lambda: _reader_rate(ds, p.batch_size, 0))
        for f in figures:
            if not f.passed:
                f.note = (
                    f"The reader gives {f.stat.median:.1f}× what the student consumes (goal "
                    f"≥ {GOAL:.0f}×). Torch operators in one epoch read: {top}. Where workers "
                    "lose to one process, their start-up (a fork and a Parquet open per worker "
                    "per epoch) outweighs a short epoch on a small dataset; persistent workers "
                    "across epochs would close that. Where decoding itself is slow, the "
                    "per-row-group gather (`index_select` per window) and the uint16→int64 "
                    "widening are the costs: keep ids int32 into the loss (gather accepts "
                    "int64 only, so widen on the device) and shuffle whole row groups.")
    return figures
