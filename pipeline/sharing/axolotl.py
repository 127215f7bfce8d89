"""`pipeline export DS --to axolotl-kd OUT.parquet`: pre-tokenized rows for axolotl's offline
knowledge-distillation trainer (the `axolotl.integrations.kd.KDPlugin`, checked against axolotl
0.19.0).

Why axolotl accepts these rows as they are: its dataset loader passes a dataset through
untouched when it already has `input_ids`, `attention_mask` and `labels`
(`axolotl.utils.data.wrappers._is_dataset_already_tokenized`), and its KD collator
(`axolotl.integrations.kd.collator.DataCollatorForKD`) pads and batches the three teacher
columns `target_token_ids`, `target_logprobs` and `target_mask`, each `[seq_len][k]`. Its
trainer pairs the student's hidden state at position t with the targets at t and shifts
`labels` by one for the cross-entropy term: position t describes token t + 1, as in this
format, so no position moves.

What changes on the way: axolotl's KD loss takes the top-k as a distribution of its own (its
chat-template loader renormalises the teacher's top-k probabilities to sum to 1 before the
trainer sees them), so `target_logprobs` are the stored log-probabilities renormalised over the
stored entries, and the tail mass is dropped (axolotl has no tail term; hence no import back
from this format). Entries a position does not hold (topp/sampled, untrained positions) are
padded as the collator pads: id 0, log-probability −1e9, mask 0.
"""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from pipeline.softlabels.reader import SoftLabelDataset

AXOLOTL_VERSION = "0.19.0"
PAD_LOGPROB = -1e9  # DataCollatorForKD's own padding value for target_logprobs
IGNORE = -100  # labels that take no part in the cross-entropy term


def _labels(tokens: np.ndarray, loss_mask, segments) -> np.ndarray:
    """HF-style labels [R, L] (unshifted: the trainer shifts): token t + 1 is a target when
    position t is trained and t + 1 is in the same sample."""
    labels = tokens.astype(np.int64).copy()
    labels[:, 0] = IGNORE  # no position predicts the first token
    keep = np.ones_like(labels[:, 1:], bool)
    if loss_mask is not None:
        keep &= loss_mask[:, :-1]
    if segments is not None:
        keep &= (segments[:, 1:] == segments[:, :-1]) & (segments[:, 1:] != 0)
    labels[:, 1:][~keep] = IGNORE
    return labels


def _positions(segments) -> tuple[np.ndarray, np.ndarray]:
    """attention_mask and position_ids [R, L]: position ids restart at each packed sample (how
    axolotl's own sample packing marks sample boundaries for flash attention)."""
    R, L = segments.shape
    index = np.broadcast_to(np.arange(L), (R, L))
    starts = np.concatenate([np.ones((R, 1), bool), segments[:, 1:] != segments[:, :-1]], 1)
    first = np.maximum.accumulate(np.where(starts, index, 0), axis=1)
    return (segments != 0).astype(np.int8), (index - first).astype(np.int64)


def kd_columns(decoded: dict) -> dict[str, np.ndarray]:
    """The axolotl columns of one decoded batch (the reference reader's tensors)."""
    as_np = {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in decoded.items()}
    tokens, ids, lp = as_np["input_ids"], as_np["topk_ids"], as_np["topk_logprobs"]
    valid = as_np.get("label_mask", np.ones(ids.shape, bool))
    loss_mask, segments = as_np.get("loss_mask"), as_np.get("segment_ids")
    if loss_mask is not None:
        valid = valid & loss_mask[..., None]
    lp64 = np.where(valid, lp.astype(np.float64), -np.inf)
    top = np.max(lp64, axis=-1, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    total = np.exp(lp64 - top).sum(-1, keepdims=True)  # 0 where a position holds nothing
    norm = np.log(np.where(total > 0, total, 1.0)) + top  # log Σ stored p
    lp64 = np.where(valid, lp64, 0.0)
    seg = segments if segments is not None else np.ones(tokens.shape, np.int64)
    attention, positions = _positions(seg)
    return {"input_ids": tokens.astype(np.int64), "attention_mask": attention,
            "labels": _labels(tokens, loss_mask, segments), "position_ids": positions,
            "target_token_ids": np.where(valid, ids, 0).astype(np.int64),
            "target_logprobs": np.where(valid, lp64 - norm, PAD_LOGPROB).astype(np.float32),
            "target_mask": valid.astype(np.int8)}


def _nested(values: np.ndarray) -> pa.Array:
    """[R, L] → list<T> per row, [R, L, k] → list<list<T>>, without Python per element."""
    arr = pa.array(values.reshape(-1))
    for width, count in zip(reversed(values.shape[1:]), reversed(np.cumprod(values.shape[:-1]))):
        offsets = pa.array(np.arange(int(count) + 1, dtype=np.int32) * width, type=pa.int32())
        arr = pa.ListArray.from_arrays(offsets, arr)
    return arr


def write_axolotl(ds: SoftLabelDataset, split: str, path) -> int:
    """Write `split` as one Parquet file at local `path`, a shard at a time; returns rows."""
    rows, writer = 0, None
    try:
        for shard in ds.split_shards(split):
            cols = kd_columns(ds.decode(ds.read_table(shard)))
            table = pa.table({name: _nested(v) for name, v in cols.items()})
            table = table.replace_schema_metadata({"softlabels.export": "axolotl-kd",
                                                   "softlabels.axolotl_version": AXOLOTL_VERSION})
            if writer is None:
                writer = pq.ParquetWriter(path, table.schema, compression="zstd")
            writer.write_table(table)
            rows += table.num_rows
    finally:
        if writer is not None:
            writer.close()
    return rows
