"""Format 1.2 label entries: ids ascending within each position, delta-coded, rank from values.

Why: an entry's id in rank order looks random to zstd (≈ 1.44 B per id at a 4,096 vocabulary,
1.76 B at 151,936), but a *set* of k ids out of V carries only log2 C(V, k) / k bits per id.
Sorted ascending and delta-coded (first id, then gaps ≥ 1) with Parquet BYTE_STREAM_SPLIT, zstd
sees small gaps in their own byte streams and stores them near that bound (BENCHMARKS.md,
figure 2). The rank order costs nothing extra: it is the order of the stored log-probabilities,
descending, ties broken by id ascending, so a reader recovers it with one sort per position.

Decode trick (the reader's hot path): per entry, the int64 key `bits(−lp) << 32 | id` orders
like (−lp, id) for every log-probability ≤ 0 (a non-negative float's bit pattern sorts like its
value), so one in-place `np.sort` of [positions, k] keys yields rank-ordered ids *and* values,
with no argsort and no gather (4× faster than argsort + take, see figure 3).
"""

import numpy as np
import pyarrow as pa

from pipeline.softlabels import schema as S

ZSTD_LEVEL = 3  # 1.2 shards: 4–8 % smaller label columns than level 1 at 34 M entries/s (fig 2)
_PAD_KEY = np.iinfo(np.int64).max  # padding entries (variable modes) sort after every real one
_LOW32 = 0xFFFFFFFF
_BAD_ID = np.iinfo(np.int32).max  # a tampered delta column decodes to this, which checks refuse


def sort_by_id(ids: np.ndarray, mask: np.ndarray | None, *aligned: np.ndarray) -> tuple:
    """Writer side: [..., k] entries → (ids ascending per position, *aligned permuted alike).

    Padding (mask false, variable modes) sorts last, so `ragged.pack` still keeps the first
    counts entries. np.argsort with kind="stable" on distinct ids is deterministic. Top-k (no
    padding, float32 log-probabilities only) takes the packed-key path instead: the labeler's
    writer thread shares the cores with the teacher (bench figure 1)."""
    if mask is None and len(aligned) == 1 and aligned[0].dtype == np.float32:
        return _sort_packed(ids, aligned[0])
    key = ids.astype(np.int64)
    if mask is not None:
        key = np.where(mask, key, _PAD_KEY)
    order = np.argsort(key, axis=-1, kind="stable")
    return tuple(np.take_along_axis(a, order, -1) for a in (ids, *aligned))


def _sort_packed(ids: np.ndarray, logprobs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`id << 32 | bits(lp)` per entry, one in-place sort: ids ascending with their float32
    values carried along, no argsort and no gathers (≈ 3× faster). Ids of a position are
    distinct, so the low half never decides the order and the result is deterministic."""
    key = ids.astype(np.int64) << 32
    key |= np.ascontiguousarray(logprobs).view(np.uint32).astype(np.int64)
    key.sort(axis=-1)
    out_lp = (key & _LOW32).astype(np.uint32).view(np.float32)
    return (key >> 32).astype(ids.dtype, copy=False), out_lp


def deltas(sorted_ids: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """[..., k] ascending ids → first id, then id_j − id_(j−1) (≥ 1); 0 at padding."""
    d = np.diff(sorted_ids.astype(np.int64), axis=-1, prepend=0)
    return d if mask is None else np.where(mask, d, 0)


def ids_from_deltas(deltas: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """[..., k] stored deltas → int64 ids (0 at padding). Ids outside [0, 2^31) — only a
    tampered shard has them — become _BAD_ID, so the reader's value checks name the row."""
    ids = np.cumsum(deltas, axis=-1, dtype=np.int64)
    ids[(ids < 0) | (ids > _BAD_ID)] = _BAD_ID
    return ids if mask is None else np.where(mask, ids, 0)


def rank_order(ids: np.ndarray, logprobs: np.ndarray, mask: np.ndarray | None = None,
               *aligned: np.ndarray, pad_logprob: float = 0.0) -> tuple:
    """[P, k] ids and float32 log-probabilities in id order → the same entries in rank order
    (log-probability descending, ties by id ascending), with any aligned arrays permuted alike.
    Padding entries (mask false) go last and come back as id 0 / pad_logprob / 0."""
    neg = np.negative(logprobs, dtype=np.float32) + np.float32(0.0)  # −0.0 → +0.0: one zero
    key = (neg.view(np.int32).astype(np.int64) << 32) | ids
    if mask is not None:
        key[~mask] = _PAD_KEY
    if aligned:
        order = np.argsort(key, axis=-1)  # keys are distinct: the order is deterministic
        key = np.take_along_axis(key, order, -1)
        aligned = tuple(np.take_along_axis(a, order, -1) for a in aligned)
    else:
        key.sort(axis=-1)
    out_ids = key & _LOW32
    out_lp = np.negative((key >> 32).astype(np.int32).view(np.float32))
    if mask is not None:  # the first count entries of each position are the real ones
        out_ids = np.where(mask, out_ids, 0)
        out_lp = np.where(mask, out_lp, np.float32(pad_logprob))
        aligned = tuple(np.where(mask, a, 0) for a in aligned)
    return (out_ids, out_lp, *aligned)


def writer_options(schema: pa.Schema) -> dict:
    """pyarrow.parquet writer options of a shard: 1.2 label columns use BYTE_STREAM_SPLIT (no
    dictionary) where every reader supports it — INT32/FLOAT physical types, i.e. ids, u8/fp32
    log-probabilities and tail mass, not float16 (DuckDB reads BSS only on INT32/INT64/FLOAT/
    DOUBLE) — and zstd level 3. Older layouts keep pyarrow's defaults, byte for byte."""
    if S.COL_ID_DELTAS not in schema.names:
        return {}
    leaf = {f.name: f"{f.name}.list.element" for f in schema}  # pyarrow names leaf columns
    split = [f.name for f in schema if f.name in S.SPLIT_COLUMNS
             and f.type.value_type != pa.float16()]
    return {"compression_level": ZSTD_LEVEL,
            "use_dictionary": [leaf[n] for n in schema.names if n not in split],
            "column_encoding": {leaf[n]: "BYTE_STREAM_SPLIT" for n in split}}
