"""The format's one writer: atomic shard files, completion records, then the manifest.

A shard is written through the storage layer's `writing` (pipeline/io/storage.py: a local
`part-XXXXX.parquet.tmp`, fsynced and renamed into place, or a local temporary file uploaded as
one whole object), and only once it is committed does it get a completion record in
`_progress/`. A rerun trusts a shard only if its record exists and the file's size and sha256
still match, so a kill at any moment leaves nothing a later run would take as complete. Shards
are named by (split, index) from the plan (softlabels/layout.py), never by worker, so a retried
task rewrites the same file.
"""

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import PipelineError
from pipeline.io.storage import Store
from pipeline.softlabels import schema as S
from pipeline.softlabels import sortedids
from pipeline.softlabels.encodings import encode_logprobs
from pipeline.softlabels.layout import record_relpath, shard_relpath
from pipeline.softlabels.ragged import pack, row_offsets
from pipeline.softlabels.rowgroups import index_file


@dataclass
class ShardLabels:
    """Teacher labels for a whole shard: ids/logprobs [rows, seq, k], tail [rows, seq].

    Variable modes (1.1) pad ids/logprobs to k and add `counts` [rows, seq] (valid entries per
    position); `sampled` adds `sample_counts` [rows, seq, k] and, with T != 1, `log_norm`
    [rows, seq]. Only the valid entries are written.
    """

    ids: np.ndarray
    logprobs: np.ndarray
    tail: np.ndarray
    counts: np.ndarray | None = None
    sample_counts: np.ndarray | None = None
    log_norm: np.ndarray | None = None


def _list_column(values: np.ndarray, rows: int, arrow_type: pa.DataType) -> pa.ListArray:
    flat = np.ascontiguousarray(values).reshape(-1)
    width = flat.size // rows if rows else 0
    offsets = pa.array(np.arange(rows + 1, dtype=np.int32) * width, type=pa.int32())
    return pa.ListArray.from_arrays(offsets, pa.array(flat, type=arrow_type))


def masked(labels: ShardLabels, mask: np.ndarray, k: int) -> ShardLabels:
    """1.3: positions outside the loss mask keep no entries (count 0, tail 1: all of the mass
    is outside the stored set), so they cost no entry bytes."""
    counts = labels.counts if labels.counts is not None else np.full(mask.shape, k, np.int32)
    log_norm = None if labels.log_norm is None else np.where(mask, labels.log_norm, 0.0)
    return replace(labels, counts=np.where(mask, counts, 0), log_norm=log_norm,
                   tail=np.where(mask, labels.tail, 1.0).astype(np.float32))


def build_table(spec: S.LabelSpec, tokens: np.ndarray, doc_ids: list[list[str]],
                labels: ShardLabels | None, mask: np.ndarray | None = None,
                segments: np.ndarray | None = None) -> pa.Table:
    """One shard's table; `mask`/`segments` [rows, seq_len] are the 1.3 columns (required
    exactly when the spec has them)."""
    rows = tokens.shape[0]
    if spec.loss_mask and labels is not None:
        labels = masked(labels, mask, spec.k)
    id_type = S.ID_TYPES[spec.id_type]
    cols = {S.COL_INPUT_IDS: _list_column(tokens.astype(S.numpy_dtype(id_type)), rows, id_type),
            S.COL_DOC_IDS: pa.array(doc_ids, type=pa.list_(pa.string()))}
    if spec.has_labels:
        if labels is None:
            raise ValueError("a labeled dataset needs labels for every shard")
        if spec.sorted_ids:
            labels = _id_ordered(labels)
        if spec.variable:
            cols.update(_variable_columns(spec, labels, rows))
        else:
            lp_type = S.LOGPROB_ENCODINGS[spec.logprob_encoding]
            cols[spec.ids_column] = _list_column(labels.ids.astype(S.numpy_dtype(id_type)),
                                                 rows, id_type)
            cols[spec.logprobs_column] = _list_column(encode_logprobs(labels.logprobs, spec),
                                                      rows, lp_type)
        cols[S.COL_TAIL] = _list_column(labels.tail.astype(np.float32), rows, pa.float32())
    if spec.variable:  # after tail_mass: the column order is the schema's
        cols[S.COL_COUNTS] = _list_column(labels.counts.astype(
            S.numpy_dtype(S.count_type(spec.k))), rows, S.count_type(spec.k))
    if spec.mode == "sampled":
        sc_type = S.count_type(spec.samples)
        cols[spec.sample_counts_column] = _ragged_column(
            pack(labels.sample_counts, labels.counts).astype(S.numpy_dtype(sc_type)),
            labels.counts, sc_type)
    if spec.tempered:
        cols[S.COL_LOG_NORM] = _list_column(labels.log_norm.astype(np.float32), rows,
                                            pa.float32())
    if spec.loss_mask:
        cols[S.COL_LOSS_MASK] = _list_column(mask.astype(bool), rows, pa.bool_())
    if spec.segments:
        cols[S.COL_SEGMENTS] = _list_column(segments.astype(np.int32), rows, pa.int32())
    return pa.table(cols, schema=S.arrow_schema(spec))


def _id_ordered(labels: ShardLabels) -> ShardLabels:
    """1.2: each position's entries in ascending id order, ids replaced by their deltas (first
    id, then gaps); log-probabilities and draws follow their ids (sortedids.py says why)."""
    mask = None
    if labels.counts is not None:  # variable modes: padding sorts last, pack() keeps the rest
        mask = np.arange(labels.ids.shape[-1]) < labels.counts[..., None]
    draws = [] if labels.sample_counts is None else [labels.sample_counts]
    ids, logprobs, *draws = sortedids.sort_by_id(labels.ids, mask, labels.logprobs, *draws)
    return ShardLabels(sortedids.deltas(ids, mask), logprobs, labels.tail, labels.counts,
                       draws[0] if draws else None, labels.log_norm)


def _ragged_column(flat: np.ndarray, counts: np.ndarray, arrow_type: pa.DataType) -> pa.ListArray:
    """Flat position-major entries → one list per row (lengths from the per-position counts)."""
    offsets = pa.array(row_offsets(counts), type=pa.int32())
    return pa.ListArray.from_arrays(offsets, pa.array(flat, type=arrow_type))


def _variable_columns(spec: S.LabelSpec, labels: ShardLabels, rows: int) -> dict:
    id_type = S.ID_TYPES[spec.id_type]
    lp_type = S.LOGPROB_ENCODINGS[spec.logprob_encoding]
    ids = pack(labels.ids, labels.counts).astype(S.numpy_dtype(id_type))
    lps = encode_logprobs(pack(labels.logprobs, labels.counts), spec)
    return {spec.ids_column: _ragged_column(ids, labels.counts, id_type),
            spec.logprobs_column: _ragged_column(lps, labels.counts, lp_type)}


def write_shard(root: Path | str | Store, split: str, index: int, table: pa.Table,
                kv_metadata: dict, row_group_rows: int, input_sha256: str) -> dict:
    """Write one shard atomically, then its completion record; return the record. `root` may be
    a folder, a URI or a Store: the record is made from the finished local file before it is
    committed, and written only after the commit."""
    store = Store.of(root)
    rel = shard_relpath(split, index)
    meta = {f"softlabels.{k}": str(v) for k, v in kv_metadata.items()}
    meta.update({"softlabels.split": split, "softlabels.shard": str(index)})
    table = table.replace_schema_metadata(meta)
    with store.writing(rel) as tmp:
        _write_parquet(tmp, table, row_group_rows, rel)
        record = shard_record(table, rel, tmp, input_sha256)
    store.write_json(record_relpath(split, index), record)
    return record


def _write_parquet(tmp: Path, table: pa.Table, row_group_rows: int, rel: str) -> None:
    """The Parquet file (the storage layer fsyncs and commits it); on failure (disk full) remove
    it and say so in one line."""
    try:
        with pq.ParquetWriter(tmp, table.schema, compression="zstd",
                              **sortedids.writer_options(table.schema)) as writer:
            writer.write_table(table, row_group_size=max(1, row_group_rows))
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise PipelineError(f"writing shard {rel} failed: {exc} (disk full? free space and "
                            "rerun; completed shards are kept)") from exc


def shard_record(table: pa.Table, rel: str, path: Path, input_sha256: str) -> dict:
    positions = len(table.column(S.COL_INPUT_IDS).combine_chunks().values)
    # sha256 and the row-group index (softlabels/rowgroups.py) in one read of the file
    record = {"path": rel, "rows": table.num_rows, "positions": int(positions),
              "bytes": path.stat().st_size, **index_file(path), "input_sha256": input_sha256}
    if S.COL_TAIL in table.column_names:
        tail = table.column(S.COL_TAIL).combine_chunks().values.to_numpy()
        record["topk_mass_sum"] = float((1.0 - tail.astype(np.float64)).sum())
    if S.COL_COUNTS in table.column_names:  # 1.1 variable modes: how many entries were stored
        ids = S.COL_TOPK_IDS if S.COL_TOPK_IDS in table.column_names else S.COL_ID_DELTAS
        record["entries"] = len(table.column(ids).combine_chunks().values)
    if S.COL_LOSS_MASK in table.column_names:  # 1.3: positions trained on
        mask = table.column(S.COL_LOSS_MASK).combine_chunks().values
        record["trained_positions"] = int(np.count_nonzero(mask.to_numpy(zero_copy_only=False)))
    return record


def completed_record(store: Store, shard: dict) -> dict | None:
    """The completion record of planned `shard` ({"split", "index", "input_sha256"}) if the
    file is still the one it describes, else None. A rerun trusts only such a shard: a record
    for this path and these inputs, and a file of the recorded size *and* sha256 (a corrupted
    shard of the same size is relabeled)."""
    rel = shard_relpath(shard["split"], shard["index"])
    try:
        rec = json.loads(store.read_bytes(record_relpath(shard["split"], shard["index"])))
    except (OSError, PipelineError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(rec, dict) or rec.get("path") != rel:
        return None
    ok = (rec.get("input_sha256") == shard["input_sha256"] and store.isfile(rel)
          and store.size(rel) == rec.get("bytes") and store.sha256(rel) == rec.get("sha256"))
    return rec if ok else None


def check_complete(planned: list[dict], records: list[dict]) -> None:
    """Exactly one record per planned shard, whichever path (or retries) produced them."""
    got = sorted(r["path"] for r in records)
    want = sorted(shard_relpath(s["split"], s["index"]) for s in planned)
    if got != want:
        missing = sorted(set(want) - set(got))[:5]
        raise PipelineError(f"labeling finished with {len(got)} shard records for {len(want)} "
                            f"planned shards (missing {missing}); rerun `pipeline label` to "
                            "complete the dataset")

