"""Samples (token ids + trained positions) → fixed-length rows with a loss mask and segment ids,
grouped into planned shards (format 1.3; plain text packed the 1.0–1.2 way is packing.py).

`--pack` says what a row holds:
- `concat`: samples back to back, cut every seq_len tokens (the 1.x layout): no padding, but a
  token attends to earlier samples in its row; no `segment_ids` column.
- `none`: one sample per row, padded to seq_len (segment 1, padding 0).
- `packed`: several samples per row, first-fit over the last OPEN_ROWS rows still open, each
  sample its own segment, so attention stays inside it (pipeline/models/segments.py): the
  row's positions are spent on samples, and a sample's labels are those it would get alone.

A sample longer than seq_len under `none`/`packed` follows `--overlong`: `truncate` keeps its
first seq_len tokens, `drop` skips it, `refuse` stops with the file and row; truncated and
dropped samples are counted in the plan and the manifest, as are samples with no position left
to train on (skipped: they would cost teacher time and store nothing).
"""

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from pipeline.errors import PipelineError
from pipeline.labeling.packing import SPLITS, ShardInput

PACK_MODES = ("concat", "none", "packed")
OVERLONG = ("truncate", "drop", "refuse")
OPEN_ROWS = 8  # rows a packed sample may still go into: more fill rows better, costs a scan


@dataclass
class Sample:
    doc_id: str
    ids: np.ndarray  # [n] int32
    mask: np.ndarray  # [n] bool: position t is trained (its label predicts token t + 1)
    where: str  # file:line, for errors


@dataclass
class SampleStats:
    samples: int = 0
    truncated: int = 0
    dropped_overlong: int = 0
    dropped_no_target: int = 0
    trained_positions: int = 0
    padding_positions: int = 0
    tokens_dropped: int = 0  # concat: the last incomplete row of each split

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class _Row:
    ids: list = field(default_factory=list)
    mask: list = field(default_factory=list)
    seg: list = field(default_factory=list)
    docs: list = field(default_factory=list)


class _SplitRows:
    """One split's rows under construction, and its finished rows waiting to fill a shard."""

    def __init__(self, split: str, seq_len: int, pack: str, pad_id: int, stats: SampleStats):
        self.split, self.seq_len, self.pack, self.pad_id = split, seq_len, pack, pad_id
        self.stats, self.open, self.done, self.shards = stats, [], [], 0
        self.stream = _Row()  # concat

    def add(self, s: Sample) -> None:
        if self.pack == "concat":
            return self._concat(s)
        row = next((r for r in self.open if len(r.ids) + len(s.ids) <= self.seq_len), None)
        if row is None or self.pack == "none":
            if self.open and (self.pack == "none" or len(self.open) >= OPEN_ROWS):
                self._close(self.open.pop(0))
            row = _Row()
            self.open.append(row)
        number = len(row.docs) + 1
        row.ids.extend(s.ids.tolist())
        row.mask.extend(s.mask.tolist())
        row.seg.extend([number] * len(s.ids))
        row.docs.append(s.doc_id)

    def _concat(self, s: Sample) -> None:
        r = self.stream
        r.ids.extend(s.ids.tolist())
        r.mask.extend(s.mask.tolist())
        r.docs.append((len(r.ids) - len(s.ids), len(r.ids), s.doc_id))
        while len(r.ids) >= self.seq_len:
            n = self.seq_len
            docs = [d for lo, hi, d in r.docs if lo < n]
            self.done.append((r.ids[:n], r.mask[:n], None, docs))
            del r.ids[:n], r.mask[:n]
            r.docs = [(max(lo - n, 0), hi - n, d) for lo, hi, d in r.docs if hi > n]

    def _close(self, row: _Row) -> None:
        pad = self.seq_len - len(row.ids)
        self.stats.padding_positions += pad
        self.done.append((row.ids + [self.pad_id] * pad, row.mask + [False] * pad,
                          row.seg + [0] * pad, row.docs))

    def finish(self) -> None:
        while self.open:
            self._close(self.open.pop(0))
        self.stats.tokens_dropped += len(self.stream.ids)

    def take(self, n: int) -> ShardInput:
        rows, self.done = self.done[:n], self.done[n:]
        seg = None if rows[0][2] is None else np.asarray([r[2] for r in rows], dtype=np.int32)
        shard = ShardInput(self.split, self.shards, np.asarray([r[0] for r in rows], np.int32),
                           [r[3] for r in rows], np.asarray([r[1] for r in rows], dtype=bool),
                           seg)
        self.shards += 1
        return shard


def fit(s: Sample, seq_len: int, pack: str, overlong: str, stats: SampleStats) -> Sample | None:
    """The sample as it goes into rows, or None when it is skipped (counted)."""
    if pack != "concat" and len(s.ids) > seq_len:
        if overlong == "refuse":
            raise PipelineError(f"{s.where}: sample {s.doc_id!r} has {len(s.ids)} tokens, more "
                                f"than --seq-len {seq_len}; raise --seq-len, or pass --overlong "
                                "truncate (keep the first tokens) or drop")
        if overlong == "drop":
            stats.dropped_overlong += 1
            return None
        stats.truncated += 1
        mask = s.mask[:seq_len].copy()
        mask[-1] = False  # its next token was cut off
        s = Sample(s.doc_id, s.ids[:seq_len], mask, s.where)
    if not s.mask.any():
        stats.dropped_no_target += 1
        return None
    stats.samples += 1
    stats.trained_positions += int(s.mask.sum())
    return s


def iter_sample_shards(samples: Iterable[Sample], split_of: Callable[[str], str], seq_len: int,
                       shard_rows: int, pack: str, overlong: str, pad_id: int,
                       stats: SampleStats) -> Iterator[ShardInput]:
    """Planned shards of each split in a deterministic order; memory: a shard per split."""
    splits = {s: _SplitRows(s, seq_len, pack, pad_id, stats) for s in SPLITS}
    for sample in samples:
        sample = fit(sample, seq_len, pack, overlong, stats)
        if sample is None:
            continue
        rows = splits[split_of(sample.doc_id)]
        rows.add(sample)
        while len(rows.done) >= shard_rows:
            yield rows.take(shard_rows)
    for rows in splits.values():
        rows.finish()
        while rows.done:
            yield rows.take(shard_rows)
