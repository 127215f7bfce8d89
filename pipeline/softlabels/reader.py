"""The format's one reader: open a dataset through its manifest and decode shards to tensors.

Decoding goes straight from Arrow buffers to numpy views to torch tensors (no per-row Python):
torchdistill #165 showed per-sample decoding can be slower than re-running the teacher.
"""

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from pipeline.errors import PipelineError
from pipeline.io.storage import Store
from pipeline.softlabels import checks, ragged, rowgroups, sortedids
from pipeline.softlabels import schema as S
from pipeline.softlabels.encodings import decode_logprobs, importance_weights
from pipeline.softlabels.layout import MANIFEST
from pipeline.softlabels.manifest import listed_rel, load_manifest, paused_gc, shard_rel


@dataclass(slots=True)
class ShardInfo:
    split: str
    index: int
    rel: str  # below the dataset root, checked to stay inside it
    rows: int
    sha256: str
    bytes: int
    row_groups: dict | None = None  # the entry, when it holds a row-group index (rowgroups.py)
    store: Store | None = field(default=None, repr=False, compare=False)

    @property
    def path(self) -> Path | str:
        """What names the shard: a Path locally, its URI on object storage (made on demand:
        10^5 shards must not cost 10^5 paths at start-up)."""
        return self.store.locate(self.rel)


class SoftLabelDataset:
    """A verified view of a dataset directory or URI (pipeline/io/storage.py). Construction never
    reads shard contents, nor touches shard files: at 10^5 shards it is one manifest read and a
    few cheap checks per entry. `root` is a Path for a local dataset and the URI string for a
    remote one; `store` reads either."""

    def __init__(self, root: str | Path, version: int | None = None):
        self.store = Store(root)
        self.root = self.store.root
        self.manifest = load_manifest(self.store, version)  # None: the latest
        where = self.store.locate(MANIFEST)
        # Untrusted input: every field used below is type- and range-checked first.
        self.spec, self.seq_len = checks.manifest_fields(self.manifest, where)
        with paused_gc():
            self.shards: dict[str, list[ShardInfo]] = {
                split: [self._shard(split, i, e, where) for i, e in enumerate(entries)]
                for split, entries in self.manifest["splits"].items()}
        self._hashed: set[str] = set()  # shards without an index, hashed whole by this process

    def _shard(self, split: str, index: int, entry: dict, where) -> ShardInfo:
        checks.shard_entry(entry, split, where)
        if problem := rowgroups.check_entry(entry):
            raise PipelineError(f"{where}: shard entry {entry['path']!r} of split {split!r} "
                                f"{problem}; the dataset is corrupt")
        rel = listed_rel(self.store, entry["path"])  # never a path outside the dataset
        indexed = entry if rowgroups.KEYS[0] in entry else None
        return ShardInfo(split, index, rel, entry["rows"], entry["sha256"], entry["bytes"],
                         indexed, self.store)

    @property
    def tokenizer_sha256(self) -> str:
        return self.manifest["tokenizer"]["sha256"]

    @property
    def vocab_size(self) -> int:
        return int(self.manifest["tokenizer"]["vocab_size"])

    def split_shards(self, split: str) -> list[ShardInfo]:
        if split not in self.shards:
            raise PipelineError(f"{self.root}: no split {split!r} (splits: {sorted(self.shards)})")
        return self.shards[split]

    def verify_checksum(self, shard: ShardInfo) -> None:
        rel = shard_rel(self.store, shard.rel)  # links too, now that the file is touched
        present = self.store.isfile(rel)
        same = present and (self.store.size(rel) == shard.bytes
                            and self.store.sha256(rel) == shard.sha256)
        if not present:
            raise PipelineError(f"shard {shard.rel} listed in the manifest is missing")
        if not same:
            raise PipelineError(f"shard {shard.rel}: checksum mismatch with manifest.json (the "
                                "file changed or is corrupt); re-download or relabel it")

    def open_shard(self, shard: ShardInfo) -> pq.ParquetFile:
        try:
            pf = pq.ParquetFile(self.store.input_file(shard_rel(self.store, shard.rel)))
        except (pa.ArrowException, OSError) as exc:
            raise PipelineError(f"shard {shard.rel} is not a readable Parquet file: {exc}") from exc
        return self._checked(pf, shard)

    def open_verified(self, shard: ShardInfo) -> "pq.ParquetFile | rowgroups.VerifiedParquet":
        """The shard, for reading row groups that are each verified when first read (the
        loader workers' path; the footer is verified now). A shard without a row-group index
        is hashed whole instead, once per process, as readers before the index did."""
        if shard.row_groups is None:
            if shard.rel not in self._hashed:
                self.verify_checksum(shard)
                self._hashed.add(shard.rel)
            return self.open_shard(shard)
        rel = shard_rel(self.store, shard.rel)
        try:
            size = self.store.size(rel)  # remote: a failure is one line naming the object
        except FileNotFoundError:
            raise PipelineError(f"shard {shard.rel} listed in the manifest is missing") from None
        if size != shard.bytes:
            raise PipelineError(f"shard {shard.rel}: {rowgroups.MISMATCH}")
        pf = rowgroups.open_verified(self.store.open(rel, "rb"), shard.rel, shard.row_groups,
                                     lambda: self.store.guard(rel))
        try:
            meta = pf.metadata
            if [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] != \
                    shard.row_groups["row_group_rows"]:
                raise PipelineError(f"shard {shard.rel}: its row groups hold other row counts "
                                    "than manifest.json lists; the dataset is corrupt")
            return self._checked(pf, shard)
        except PipelineError:
            pf.close()
            raise

    def _checked(self, pf, shard: ShardInfo):
        """The schema and key-value metadata of an opened shard, checked against the manifest."""
        expected = S.arrow_schema(self.spec)
        if not pf.schema_arrow.remove_metadata().equals(expected):
            raise PipelineError(f"shard {shard.rel}: schema does not match format "
                                f"{self.manifest['format_version']} for labels "
                                f"{self.spec.as_dict()} ("
                                f"{checks.schema_difference(pf.schema_arrow, expected)})")
        checks.shard_metadata(pf.schema_arrow.metadata, shard.rel, shard.split, self.spec,
                              self.seq_len, self.tokenizer_sha256)
        return pf

    def read_table(self, shard: ShardInfo, verify: bool = True) -> pa.Table:
        if verify:
            self.verify_checksum(shard)
        try:
            table = self.open_shard(shard).read()
        except pa.ArrowException as exc:
            raise PipelineError(f"shard {shard.rel} could not be decoded: {exc}") from exc
        if table.num_rows != shard.rows:
            raise PipelineError(f"shard {shard.rel}: {table.num_rows} rows on disk but the "
                                f"manifest says {shard.rows}; the dataset is corrupt")
        return table

    def decode(self, table: pa.Table | pa.RecordBatch,
               where: str = "") -> dict[str, torch.Tensor]:
        """Decode rows to tensors, refusing malformed rows and out-of-range values (`where`,
        e.g. "shard shards/train/part-00000.parquet row group 3", names them in the error)."""
        where = where or f"dataset {self.root}"
        checks.row_lengths(table, self.spec, self.seq_len, where)
        try:
            batch = decode_batch(table, self.spec, self.seq_len)
        except (ValueError, RuntimeError) as exc:  # e.g. a values buffer of the wrong size
            raise PipelineError(f"{where}: rows could not be decoded ({exc})") from exc
        checks.values(batch, self.spec.vocab_size, where)
        return batch


def _flat_values(column, dtype=None) -> np.ndarray:
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    # flatten() honours slice offsets (a sliced ListArray's .values would not).
    values = column.flatten().to_numpy(zero_copy_only=False)
    if dtype is not None:
        values = values.astype(dtype, copy=False)
    # Arrow buffers are read-only; torch tensors must own writable memory (one memcpy at most).
    return values if values.flags.writeable else values.copy()


def decode_batch(table: pa.Table | pa.RecordBatch, spec: S.LabelSpec,
                 seq_len: int) -> dict[str, torch.Tensor]:
    """Arrow rows → {input_ids [R, L] int64, topk_ids [R, L, K] int64,
    topk_logprobs [R, L, K] float32, tail_mass [R, L] float32}.

    Variable modes (topp, sampled) are padded to K = spec.k and add `label_mask` [R, L, K] bool
    (padding: id 0, log-probability ragged.PAD_LOGPROB); sampled adds `sample_weights`
    [R, L, K] float32 (importance weights, 0 at padding; encodings.importance_weights).
    Format 1.3 adds `loss_mask` [R, L] bool (every labeled mode is then variable: 0 entries
    outside the mask) and `segment_ids` [R, L] int64 for packed rows."""
    rows = table.num_rows
    out = {"input_ids": torch.from_numpy(
        _flat_values(table.column(S.COL_INPUT_IDS), np.int64).reshape(rows, seq_len))}
    if spec.loss_mask:  # 1.3: only these positions are trained on (and hold labels)
        out["loss_mask"] = torch.from_numpy(
            _flat_values(table.column(S.COL_LOSS_MASK), bool).reshape(rows, seq_len))
    if spec.segments:  # 1.3: packed samples, each attending only to itself
        out["segment_ids"] = torch.from_numpy(
            _flat_values(table.column(S.COL_SEGMENTS), np.int64).reshape(rows, seq_len))
    if spec.variable:
        return {**out, **_decode_variable(table, spec, seq_len)}
    if spec.has_labels:
        shape = (rows * seq_len, spec.k)
        ids = _flat_values(table.column(spec.ids_column), np.int64).reshape(shape)
        lp = decode_logprobs(_flat_values(table.column(spec.logprobs_column)), spec).reshape(shape)
        if spec.sorted_ids:  # 1.2: ascending deltas → ids → rank order (sortedids.py)
            ids, lp = sortedids.rank_order(sortedids.ids_from_deltas(ids), lp)
        out["topk_ids"] = torch.from_numpy(ids.reshape(rows, seq_len, spec.k))
        out["topk_logprobs"] = torch.from_numpy(lp.reshape(rows, seq_len, spec.k))
        out["tail_mass"] = torch.from_numpy(
            _flat_values(table.column(S.COL_TAIL), np.float32).reshape(rows, seq_len))
    return out


def _decode_variable(table, spec: S.LabelSpec, seq_len: int) -> dict[str, torch.Tensor]:
    """Flat entries + label_counts → padded [R, L, k] tensors and a mask (offsets arithmetic)."""
    rows, k = table.num_rows, spec.k
    counts = _flat_values(table.column(S.COL_COUNTS), np.int64)
    pos, rank, mask = ragged.unpad_index(counts, k)
    n = counts.size

    def padded(column: str, flat: np.ndarray, fill) -> np.ndarray:
        if flat.size != pos.size:
            raise ValueError(f"{column} holds {flat.size} entries, label_counts sum to {pos.size}")
        return ragged.to_padded(flat, pos, rank, n, k, fill).reshape(rows, seq_len, k)

    ids = padded(spec.ids_column, _flat_values(table.column(spec.ids_column), np.int64), 0)
    lp = padded(spec.logprobs_column, decode_logprobs(
        _flat_values(table.column(spec.logprobs_column)), spec), ragged.PAD_LOGPROB)
    draws = (padded(spec.sample_counts_column, _flat_values(
        table.column(spec.sample_counts_column), np.float32), 0.0)
        if spec.mode == "sampled" else None)
    if spec.sorted_ids:  # 1.2: ascending deltas → ids → rank order, padding last
        m = mask.reshape(ids.shape)
        ids, lp, *rest = sortedids.rank_order(
            sortedids.ids_from_deltas(ids, m), lp, m, *([draws] if draws is not None else []),
            pad_logprob=ragged.PAD_LOGPROB)
        draws = rest[0] if rest else None
    out = {"topk_ids": torch.from_numpy(ids), "topk_logprobs": torch.from_numpy(lp),
           "tail_mass": torch.from_numpy(
               _flat_values(table.column(S.COL_TAIL), np.float32).reshape(rows, seq_len)),
           "label_mask": torch.from_numpy(mask.reshape(rows, seq_len, k))}
    if spec.mode == "sampled":
        log_norm = (_flat_values(table.column(S.COL_LOG_NORM), np.float32).reshape(rows, seq_len)
                    if spec.tempered else None)
        out["sample_weights"] = torch.from_numpy(importance_weights(draws, lp, log_norm, spec))
    return out
