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
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from pipeline.errors import PipelineError
from pipeline.softlabels import rowgroups
from pipeline.softlabels.reader import SoftLabelDataset

OPEN_SHARDS = 8  # per consumer: its row groups are dealt at random, so reuse is rare


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
    """[(shard index, row group index, rows)] of a split's non-empty row groups, in shard then
    row group order. From the manifest's row-group index when shards have one (no file opened:
    start-up does not grow with the dataset); else from the shard's Parquet footer (datasets of
    older labelers), where the schema and row count are checked too."""
    shards = dataset.split_shards(split)
    parts = [_indexed_units([s for s in shards if s.row_groups is not None], len(shards))]
    for shard in (s for s in shards if s.row_groups is None):
        meta = dataset.open_shard(shard).metadata
        rows = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
        if sum(rows) != shard.rows:
            raise PipelineError(f"shard {shard.rel}: {sum(rows)} rows on disk but the manifest "
                                f"says {shard.rows}; the dataset is corrupt - relabel it")
        parts.append(np.asarray([(shard.index, i, n) for i, n in enumerate(rows) if n],
                                dtype=np.int64).reshape(-1, 3))
    units = np.concatenate(parts)
    return units[np.lexsort((units[:, 1], units[:, 0]))] if len(parts) > 1 else units


def _indexed_units(indexed: list, n_shards: int) -> np.ndarray:
    """Units of the shards listed with a row-group index, from the manifest alone; refuses an
    index whose rows do not add up to the entry's (one numpy comparison for all shards)."""
    units = rowgroups.plan_units([(s.index, s.row_groups["row_group_rows"]) for s in indexed])
    listed = np.bincount(units[:, 0], units[:, 2], minlength=n_shards)
    rows = np.fromiter((s.rows for s in indexed), dtype=np.int64, count=len(indexed))
    where = np.fromiter((s.index for s in indexed), dtype=np.int64, count=len(indexed))
    if (bad := np.flatnonzero(listed[where] != rows)).size:
        shard = indexed[int(bad[0])]
        raise PipelineError(f"shard {shard.rel}: its row groups hold {int(listed[shard.index])} "
                            f"rows (manifest row_group_rows) but the manifest says {shard.rows}; "
                            "the dataset is corrupt - relabel it")
    return units


def _consumer_units(units: np.ndarray, cfg: StreamConfig, epoch: int, consumer: int):
    order = np.random.default_rng([cfg.seed, epoch]).permutation(len(units))
    return order[consumer::cfg.consumers]


def epoch_lengths(units: np.ndarray, cfg: StreamConfig, epoch: int) -> dict[int, int]:
    """Batches per local consumer in an epoch (a consumer's last batch may be short)."""
    return {c: math.ceil(int(units[_consumer_units(units, cfg, epoch, c), 2].sum())
                         / cfg.batch_size) for c in cfg.local_consumers}


def consumer_plan(units: np.ndarray, cfg: StreamConfig, epoch: int,
                  consumer: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One consumer's epoch: (unit ids, row offsets of the units, global row ids in reading
    order); batch j is rows[j * batch_size:(j + 1) * batch_size]. Arrays, no per-batch Python:
    at 10^5 shards an epoch has 10^5+ batches and this runs before the first one."""
    mine = _consumer_units(units, cfg, epoch, consumer)
    counts = units[mine, 2]
    starts = np.concatenate([[0], np.cumsum(counts)])
    rng = np.random.default_rng([cfg.seed, epoch, consumer, cfg.consumers])
    order, lo, window_rows, last = [], 0, 0, len(counts) - 1
    for i, n in enumerate(counts.tolist()):
        window_rows += n
        if window_rows >= cfg.shuffle_rows or i == last:
            order.append(starts[lo] + rng.permutation(int(starts[i + 1] - starts[lo])))
            lo, window_rows = i + 1, 0
    rows = np.concatenate(order) if order else np.zeros(0, dtype=np.int64)
    return mine, starts, rows


def canonical_order(lengths: dict[int, int]) -> np.ndarray:
    """[(consumer, batch)] in the order the trainer sees them: round-robin by batch index
    (numpy: an epoch may hold 10^5+ batches)."""
    cs = np.asarray(sorted(lengths), dtype=np.int64)
    ns = np.asarray([lengths[c] for c in cs.tolist()], dtype=np.int64)
    consumer = np.repeat(cs, ns)
    batch = np.arange(int(ns.sum())) - np.repeat(np.cumsum(ns) - ns, ns)
    by = np.lexsort((consumer, batch))  # batch index first, then consumer
    return np.stack([consumer[by], batch[by]], axis=1)


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
                 epoch: int, skip: dict[int, int] | None = None, last_epoch: int | None = None,
                 verify_rows: bool = False, transforms: tuple = ()):
        self.dataset, self.cfg, self.units, self.epoch = dataset, cfg, units, epoch
        self.skip, self.last_epoch, self.verify_rows = skip or {}, last_epoch, verify_rows
        self.transforms = transforms  # batch → batch, run here (in the workers): re-tokenizing

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
        mine, starts, rows = consumer_plan(self.units, self.cfg, epoch, consumer)
        size = self.cfg.batch_size
        unit_of_row = np.searchsorted(starts, rows, side="right") - 1
        last_use = np.full(len(mine), -1)  # the last batch that reads each unit
        np.maximum.at(last_use, unit_of_row, np.arange(len(rows)) // size)
        shards = self.dataset.split_shards(self.cfg.split)
        files, cache = {}, {}
        try:
            for j in range(skip, -(-len(rows) // size)):
                local = unit_of_row[j * size:(j + 1) * size]
                for u in np.unique(local):
                    if int(u) not in cache:
                        shard_i, rg, _ = self.units[mine[u]]
                        shard = shards[int(shard_i)]
                        cache[int(u)] = self._decode(self._open(files, shard), int(rg), shard.rel)
                batch = _gather(cache, local, rows[j * size:(j + 1) * size] - starts[local])
                for u in [u for u in cache if last_use[u] <= j]:
                    del cache[u]
                for transform in self.transforms:
                    batch = transform(batch)
                yield {**batch, "consumer": consumer, "index": j}
        finally:
            for pf in files.values():
                pf.close()

    def _open(self, files: dict, shard):
        """A shard's reader, from a few kept open per consumer (at 10^5 shards, keeping every
        one open would exhaust file handles)."""
        if shard.index not in files:
            if len(files) >= OPEN_SHARDS:
                files.pop(next(iter(files))).close()
            files[shard.index] = (self.dataset.open_verified(shard) if self.verify_rows
                                  else self.dataset.open_shard(shard))
        return files[shard.index]

    def _decode(self, pf, row_group: int, rel: str) -> dict:
        try:
            table = pf.read_row_group(row_group)
        except PipelineError:  # a row group that does not match its checksum
            raise
        except Exception as exc:  # pyarrow raises several types for a damaged file
            raise PipelineError(f"shard {rel} row group {row_group} could not be read: "
                                f"{exc}") from exc
        return self.dataset.decode(table, f"shard {rel} row group {row_group}")


class StreamReader:
    """The trainer's view: verified shards, epoch lengths, and batches in canonical order."""

    def __init__(self, dataset: SoftLabelDataset, cfg: StreamConfig, verify: bool | str = True,
                 pin_memory: bool = False, transforms: tuple = ()):
        """verify: True hashes every shard of the split now (reads it all: small datasets,
        tests); "lazy" verifies each row group as it is first read, in the loader workers
        (`train`: nothing read before the first step); False trusts the files (benchmarks)."""
        if cfg.batch_size < 1 or cfg.num_workers < 0 or not 0 <= cfg.rank < cfg.world_size:
            raise PipelineError(f"bad stream settings {cfg}: batch_size >= 1, num_workers >= 0 "
                                "and 0 <= rank < world_size are needed")
        if verify not in (True, False, "lazy"):
            raise ValueError(f"verify must be True, False or 'lazy', not {verify!r}")
        self.dataset, self.cfg, self.pin_memory = dataset, cfg, pin_memory
        self.transforms = tuple(transforms)  # per batch, in the workers (training/xtok.py)
        self.verify_rows = verify == "lazy"
        if verify is True:
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
        skipped = Counter(order[:start, 0].tolist())
        skip = {c: skipped[c] for c in self.cfg.local_consumers}
        stream = SoftLabelStream(self.dataset, self.cfg, self.units, epoch, skip, last_epoch,
                                 self.verify_rows, self.transforms)
        if self.cfg.num_workers == 0:
            source = stream.iter_epochs(self.cfg.local_consumers[0])
        else:
            source = iter(DataLoader(stream, batch_size=None, num_workers=self.cfg.num_workers,
                                     pin_memory=self.pin_memory))
        pending: dict[tuple[int, int, int], dict] = {}
        pos_epoch = epoch  # the epoch `order` is for
        while last_epoch is None or epoch <= last_epoch:
            # epoch_length may cut an epoch short (torchrun: every rank stops at the shortest)
            if pos_epoch != epoch:
                order = canonical_order(epoch_lengths(self.units, self.cfg, epoch))
                pos_epoch = epoch
            for pos in range(start, self.epoch_length(epoch)):
                want = (epoch, int(order[pos, 0]), int(order[pos, 1]))
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
