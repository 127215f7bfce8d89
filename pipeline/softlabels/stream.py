"""Streaming reader: shards of one split → shuffled batches of torch tensors, resumable exactly.

Why this shape:
- The unit of I/O is a Parquet row group (hundreds of rows), decoded in one vectorised step by
  `decode_batch`; no per-row Python (torchdistill #165).
- Each epoch the row groups of all shards are permuted by (seed, epoch) and dealt round-robin to
  the consumers, consumer = (rank, DataLoader worker); a consumer reads only its own row groups,
  so no row is read twice in an epoch, whatever the number of ranks and workers.
- Inside a consumer, rows are shuffled within windows of row groups holding >= `shuffle_rows`
  rows (the shuffle buffer) and cut into batches; a batch may straddle two windows, so memory is
  about two windows of decoded rows per consumer.
- The whole order is a *plan* computed from Parquet metadata only (row counts), never from the
  data. So a position is one number per epoch (batches consumed, in the canonical order
  "batch j of consumer 0, of consumer 1, ..., then batch j + 1"), and resuming at position p
  reads nothing before it: each consumer skips its planned batches without touching them. The
  main process restores the canonical order whatever order worker processes deliver in.
- Training reads epoch after epoch from one stream (`iter_epochs`): DataLoader workers are
  started once per run, not once per epoch.
The plan depends on (seed, epoch, batch_size, shuffle_rows, ranks × workers), so a resumed run
must keep those; the trainer checks it.
"""

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from pipeline.errors import PipelineError
from pipeline.softlabels.reader import SoftLabelDataset


@dataclass(frozen=True)
class StreamConfig:
    split: str = "train"
    batch_size: int = 16
    seed: int = 0
    shuffle_rows: int = 512
    num_workers: int = 0
    rank: int = 0
    world_size: int = 1

    @property
    def consumers(self) -> int:
        """All consumers of the epoch, across ranks: ranks × max(1, workers)."""
        return self.world_size * max(1, self.num_workers)

    @property
    def local_consumers(self) -> range:
        """This rank's consumers (one per DataLoader worker, or one without workers)."""
        per_rank = max(1, self.num_workers)
        return range(self.rank * per_rank, (self.rank + 1) * per_rank)


def check_compatible(dataset: SoftLabelDataset, vocab_size: int | None = None,
                     tokenizer_sha256: str | None = None, who: str = "student") -> None:
    """Refuse a model whose vocabulary or tokenizer differs from the dataset's."""
    if vocab_size is not None and vocab_size != dataset.vocab_size:
        raise PipelineError(f"{who} vocab size {vocab_size} != dataset {dataset.root} vocab size "
                            f"{dataset.vocab_size}: token ids would mean different tokens")
    if tokenizer_sha256 is not None and tokenizer_sha256 != dataset.tokenizer_sha256:
        raise PipelineError(f"{who} tokenizer sha256 {tokenizer_sha256[:12]} != dataset "
                            f"{dataset.root} tokenizer sha256 {dataset.tokenizer_sha256[:12]}: "
                            "train on a dataset labeled with this student's tokenizer")


def row_group_units(dataset: SoftLabelDataset, split: str) -> np.ndarray:
    """[(shard index, row group index, rows)] of a split, from metadata; checks schema and rows."""
    units = []
    for shard in dataset.split_shards(split):
        meta = dataset.open_shard(shard).metadata
        rows = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
        if sum(rows) != shard.rows:
            raise PipelineError(f"shard {shard.rel}: {sum(rows)} rows on disk but the manifest "
                                f"says {shard.rows}; the dataset is corrupt - relabel it")
        units += [(shard.index, i, n) for i, n in enumerate(rows) if n]
    return np.asarray(units, dtype=np.int64).reshape(-1, 3)


def _consumer_units(units: np.ndarray, cfg: StreamConfig, epoch: int, consumer: int):
    order = np.random.default_rng([cfg.seed, epoch]).permutation(len(units))
    return order[consumer::cfg.consumers]


def epoch_lengths(units: np.ndarray, cfg: StreamConfig, epoch: int) -> dict[int, int]:
    """Batches per local consumer in an epoch (a consumer's last batch may be short)."""
    return {c: math.ceil(int(units[_consumer_units(units, cfg, epoch, c), 2].sum())
                         / cfg.batch_size) for c in cfg.local_consumers}


def consumer_plan(units: np.ndarray, cfg: StreamConfig, epoch: int,
                  consumer: int) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """One consumer's epoch: (unit ids, row offsets of the units, batches of global row ids)."""
    mine = _consumer_units(units, cfg, epoch, consumer)
    counts = units[mine, 2]
    starts = np.concatenate([[0], np.cumsum(counts)])
    rng = np.random.default_rng([cfg.seed, epoch, consumer, cfg.consumers])
    order, lo, window_rows = [], 0, 0
    for i, n in enumerate(counts):
        window_rows += int(n)
        if window_rows >= cfg.shuffle_rows or i == len(counts) - 1:
            order.append(starts[lo] + rng.permutation(int(starts[i + 1] - starts[lo])))
            lo, window_rows = i + 1, 0
    rows = np.concatenate(order) if order else np.zeros(0, dtype=np.int64)
    batches = [rows[j:j + cfg.batch_size] for j in range(0, len(rows), cfg.batch_size)]
    return mine, starts, batches


def canonical_order(lengths: dict[int, int]) -> list[tuple[int, int]]:
    """(consumer, batch) pairs in the order the trainer sees them: round-robin by batch index."""
    return [(c, j) for j in range(max(lengths.values(), default=0))
            for c, n in sorted(lengths.items()) if j < n]


def _gather(cache: dict, unit_of_row: np.ndarray, offset: np.ndarray) -> dict:
    """Rows from decoded row groups → one batch; one index_select per row group."""
    first = cache[int(unit_of_row[0])]
    out = {k: torch.empty((len(offset), *v.shape[1:]), dtype=v.dtype) for k, v in first.items()}
    for u in np.unique(unit_of_row):
        where = torch.from_numpy(np.nonzero(unit_of_row == u)[0])
        take = torch.from_numpy(offset[unit_of_row == u])
        for k, v in cache[int(u)].items():
            out[k].index_copy_(0, where, v.index_select(0, take))  # not out[k][where] = ...:
            # index_put is the slower kernel, and this runs per row group, column and batch
    return out


class SoftLabelStream(IterableDataset):
    """One rank's batches from epoch `epoch` through `last_epoch` (None: without end); each
    DataLoader worker plays its own consumer, so one set of workers serves every epoch.

    `skip[c]` planned batches of consumer c in the first epoch are skipped unread (resume).
    Yields dicts of tensors plus `epoch`, `consumer` and `index` (the batch's number within its
    consumer's epoch).
    """

    def __init__(self, dataset: SoftLabelDataset, cfg: StreamConfig, units: np.ndarray,
                 epoch: int, skip: dict[int, int] | None = None, last_epoch: int | None = None):
        self.dataset, self.cfg, self.units, self.epoch = dataset, cfg, units, epoch
        self.skip, self.last_epoch = skip or {}, last_epoch

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        try:
            yield from self.iter_epochs(self.cfg.local_consumers[worker])
        except PipelineError as exc:
            if info is None:
                raise
            # torch would re-raise it with the worker's traceback in the message; send the one
            # line to the main process instead, which raises it (StreamReader.iter_epochs)
            yield {"error": str(exc)}

    def iter_epochs(self, consumer: int) -> Iterator[dict]:
        epoch = self.epoch
        while self.last_epoch is None or epoch <= self.last_epoch:
            skip = self.skip.get(consumer, 0) if epoch == self.epoch else 0
            for batch in self.iter_consumer(consumer, epoch, skip):
                yield {**batch, "epoch": epoch}
            epoch += 1

    def iter_consumer(self, consumer: int, epoch: int, skip: int = 0) -> Iterator[dict]:
        mine, starts, batches = consumer_plan(self.units, self.cfg, epoch, consumer)
        last_use = np.full(len(mine), -1)
        for j, rows in enumerate(batches):
            last_use[np.searchsorted(starts, rows, side="right") - 1] = j
        shards = self.dataset.split_shards(self.cfg.split)
        files, cache = {}, {}
        for j in range(skip, len(batches)):
            local = np.searchsorted(starts, batches[j], side="right") - 1
            for u in np.unique(local):
                if int(u) not in cache:
                    shard_i, rg, _ = self.units[mine[u]]
                    shard = shards[int(shard_i)]
                    if shard_i not in files:
                        files[shard_i] = self.dataset.open_shard(shard)
                    cache[int(u)] = self._decode(files[shard_i], int(rg), shard.rel)
            batch = _gather(cache, local, batches[j] - starts[local])
            for u in [u for u in cache if last_use[u] <= j]:
                del cache[u]
            yield {**batch, "consumer": consumer, "index": j}

    def _decode(self, pf, row_group: int, rel: str) -> dict:
        try:
            table = pf.read_row_group(row_group)
        except Exception as exc:  # pyarrow raises several types for a damaged file
            raise PipelineError(f"shard {rel} row group {row_group} could not be read: "
                                f"{exc}") from exc
        return self.dataset.decode(table, f"shard {rel} row group {row_group}")


class StreamReader:
    """The trainer's view: verified shards, epoch lengths, and batches in canonical order."""

    def __init__(self, dataset: SoftLabelDataset, cfg: StreamConfig, verify: bool = True,
                 pin_memory: bool = False):
        if cfg.batch_size < 1 or cfg.num_workers < 0 or not 0 <= cfg.rank < cfg.world_size:
            raise PipelineError(f"bad stream settings {cfg}: batch_size >= 1, num_workers >= 0 "
                                "and 0 <= rank < world_size are needed")
        self.dataset, self.cfg, self.pin_memory = dataset, cfg, pin_memory
        if verify:
            for shard in dataset.split_shards(cfg.split):
                dataset.verify_checksum(shard)
        self.units = row_group_units(dataset, cfg.split)

    @property
    def rows(self) -> int:
        return int(self.units[:, 2].sum())

    def epoch_length(self, epoch: int) -> int:
        return sum(epoch_lengths(self.units, self.cfg, epoch).values())

    def iter_epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[int, dict]]:
        """(position, batch) for positions start, start + 1, ... of `epoch`."""
        for _, pos, batch in self.iter_epochs(epoch, start, last_epoch=epoch):
            yield pos, batch

    def iter_epochs(self, epoch: int = 0, start: int = 0,
                    last_epoch: int | None = None) -> Iterator[tuple[int, int, dict]]:
        """(epoch, position, batch) from position `start` of `epoch` on, through `last_epoch`
        (None: until the caller stops). With DataLoader workers, the same workers serve every
        epoch: they are started once, not once per epoch (bench figure 3)."""
        order = canonical_order(epoch_lengths(self.units, self.cfg, epoch))
        skip = {c: 0 for c in self.cfg.local_consumers}
        for c, _ in order[:start]:
            skip[c] += 1
        stream = SoftLabelStream(self.dataset, self.cfg, self.units, epoch, skip, last_epoch)
        if self.cfg.num_workers == 0:
            source = stream.iter_epochs(self.cfg.local_consumers[0])
        else:
            source = iter(DataLoader(stream, batch_size=None, num_workers=self.cfg.num_workers,
                                     pin_memory=self.pin_memory))
        pending: dict[tuple[int, int, int], dict] = {}
        while last_epoch is None or epoch <= last_epoch:
            # epoch_length may cut an epoch short (torchrun: every rank stops at the shortest)
            order = canonical_order(epoch_lengths(self.units, self.cfg, epoch))
            for pos in range(start, self.epoch_length(epoch)):
                want = (epoch, *order[pos])
                while want not in pending:
                    b = next(source)
                    if "error" in b:
                        raise PipelineError(b["error"])
                    got = (int(b.pop("epoch")), int(b.pop("consumer")), int(b.pop("index")))
                    if got[0] >= epoch:  # a cut epoch's surplus batches are dropped
                        pending[got] = b
                yield epoch, pos, pending.pop(want)
            pending = {key: b for key, b in pending.items() if key[0] > epoch}
            epoch, start = epoch + 1, 0
