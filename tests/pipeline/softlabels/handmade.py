"""Soft-label datasets written by hand, with no teacher: labels are numpy arrays chosen by the
test, so a test can plant exactly one bad value where it wants and predict what `validate` or a
reader says about it.

The shards go through the format's one writer (pipeline/softlabels/writer.py), which encodes but
checks nothing, so bad values reach the file as given; `edit` changes a built table before it is
written (e.g. a delta column of a format 1.2 shard). The manifest holds exactly what the readers
read (docs/FORMAT.md), nothing of a labeling run.
"""

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa

from pipeline.softlabels import rowgroups
from pipeline.softlabels import schema as S
from pipeline.softlabels.writer import ShardLabels, build_table, write_shard

TOKENIZER = b'{"handmade": "tokenizer"}'
ENTRY = ("path", "rows", "bytes", "sha256", *rowgroups.KEYS)  # what a manifest lists per shard


def spec(mode: str = "topk", k: int = 2, vocab: int = 10, encoding: str = "fp16",
         **fields) -> S.LabelSpec:
    return S.LabelSpec(mode, k, vocab, S.id_type_for_vocab(vocab), encoding, **fields)


def topk_labels(rows: int, seq_len: int, k: int) -> ShardLabels:
    """Valid top-k labels: ids k-1..0 at every position, log-probabilities -1, -2, ..."""
    ids = np.broadcast_to(np.arange(k)[::-1], (rows, seq_len, k)).copy()
    lp = np.broadcast_to(-1.0 - np.arange(k, dtype=np.float32), (rows, seq_len, k)).copy()
    tail = np.full((rows, seq_len), 0.25, dtype=np.float32)
    return ShardLabels(ids, lp, tail)


def variable_labels(counts: np.ndarray, k: int, draws: int | None = None,
                    log_norm: float | None = None) -> ShardLabels:
    """Valid topp/sampled labels with `counts` [rows, seq] entries per position (padded to k):
    ids count-1..0, log-probabilities -1, -2, ...; sampled: the first entry takes all `draws`
    but one per other entry."""
    rows, seq_len = counts.shape
    labels = topk_labels(rows, seq_len, k)
    mask = np.arange(k) < counts[..., None]
    labels.ids = np.where(mask, counts[..., None] - 1 - np.arange(k), 0)
    labels.counts = counts
    if draws is not None:
        sc = np.where(mask, 1, 0)
        sc[..., 0] = draws - (counts - 1)
        labels.sample_counts = sc
    if log_norm is not None:
        labels.log_norm = np.full((rows, seq_len), log_norm, dtype=np.float32)
    return labels


Shard = tuple  # (tokens [rows, seq_len], labels or None[, loss mask, segment ids]) (1.3)


def write_dataset(root: Path, s: S.LabelSpec, splits: dict[str, list[Shard]], seq_len: int,
                  edit: Callable[[str, int, pa.Table], pa.Table] | None = None,
                  row_group_rows: int = 2) -> Path:
    """Write `splits` ({split: [Shard]}) as a dataset at `root`."""
    sha = hashlib.sha256(TOKENIZER).hexdigest()
    kv = {"format_version": s.format_version, **s.extras(), "mode": s.mode, "k": s.k,
          "vocab_size": s.vocab_size, "id_type": s.id_type,
          "logprob_encoding": s.logprob_encoding, "seq_len": seq_len, "tokenizer_sha256": sha}
    entries: dict[str, list] = {}
    for split, shards in splits.items():
        for index, (tokens, labels, *format13) in enumerate(shards):
            docs = [[f"doc-{split}-{index}-{r}"] for r in range(tokens.shape[0])]
            table = build_table(s, tokens, docs, labels, *format13)
            if edit is not None:
                table = edit(split, index, table)
            record = write_shard(root, split, index, table, kv, row_group_rows, "0" * 64)
            entries.setdefault(split, []).append({k: record[k] for k in ENTRY if k in record})
    (root / "tokenizer.json").write_bytes(TOKENIZER)
    manifest = {"format_version": s.format_version,
                "tool": {"name": "softlabel-pipeline", "version": "handmade"},
                "labels": s.as_dict(), "seq_len": seq_len,
                "tokenizer": {"vocab_size": s.vocab_size, "sha256": sha}, "splits": entries}
    (root / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return root


def set_column(table: pa.Table, name: str, fn: Callable[[np.ndarray], np.ndarray]) -> pa.Table:
    """The table with list column `name`'s flat values replaced by fn(values) (offsets kept)."""
    col = table.column(name).combine_chunks()
    values = fn(col.values.to_numpy(zero_copy_only=False).copy())
    new = pa.ListArray.from_arrays(col.offsets, pa.array(values, type=col.type.value_type))
    return table.set_column(table.schema.get_field_index(name), name, new)
