"""`pipeline validate`: check every promise the format makes, shard by shard.

Each problem is reported with the shard (and row where it applies); the dataset is valid only if
there are none. The checks are vectorised over a shard, then the first failing row is located.
"""

from pathlib import Path

import numpy as np
import pyarrow as pa

from pipeline.errors import PipelineError
from pipeline.softlabels import checks
from pipeline.softlabels import schema as S
from pipeline.softlabels.reader import ShardInfo, SoftLabelDataset, _flat_values

LOGPROB_SLACK = {"fp32": 1e-6, "fp16": 1e-3}  # rounding can make equal values look unordered


def _first_row(mask_per_position: np.ndarray, per_row: int) -> int:
    return int(np.flatnonzero(mask_per_position)[0] // per_row)


def check_table(ds: SoftLabelDataset, shard: ShardInfo, table: pa.Table) -> list[str]:
    """Content checks for one decoded shard; returns problems naming the shard and row."""
    spec, L, name = ds.spec, ds.seq_len, shard.rel
    problems = []
    if table.num_rows != shard.rows:
        problems.append(f"{name}: {table.num_rows} rows, manifest says {shard.rows}")
    try:  # per row, not just in total: rows must not shift into each other
        checks.row_lengths(table, spec, L, name)
    except PipelineError as exc:
        return problems + [str(exc)]
    ids = _flat_values(table.column(S.COL_INPUT_IDS), np.int64)
    if ids.size != table.num_rows * L:
        return problems + [f"{name}: input_ids length is not rows x seq_len ({L})"]
    if (bad := (ids < 0) | (ids >= spec.vocab_size)).any():
        problems.append(f"{name} row {_first_row(bad, L)}: input id >= vocab {spec.vocab_size}")
    if not spec.has_labels:
        return problems
    k = spec.k
    top = _flat_values(table.column(S.COL_TOPK_IDS), np.int64)
    lp = _flat_values(table.column(S.COL_TOPK_LOGPROBS), np.float32)
    tail = _flat_values(table.column(S.COL_TAIL), np.float32)
    if top.size != ids.size * k or lp.size != ids.size * k or tail.size != ids.size:
        return problems + [f"{name}: label columns are not rows x seq_len x k ({L} x {k})"]
    if (bad := (top < 0) | (top >= spec.vocab_size)).any():
        problems.append(f"{name} row {_first_row(bad, L * k)}: topk id >= vocab "
                        f"{spec.vocab_size}")
    if (bad := ~np.isfinite(lp)).any():
        problems.append(f"{name} row {_first_row(bad, L * k)}: non-finite log-probability")
    elif (bad := lp > 0).any():
        problems.append(f"{name} row {_first_row(bad, L * k)}: positive log-probability")
    else:
        slack = LOGPROB_SLACK.get(spec.logprob_encoding, 1e-3)
        lp2 = lp.reshape(-1, k)
        if (bad := (np.diff(lp2, axis=1) > slack).any(axis=1)).any():
            problems.append(f"{name} row {_first_row(bad, L)}: log-probabilities not descending")
    if (bad := ~((tail >= 0) & (tail <= 1))).any():
        problems.append(f"{name} row {_first_row(bad, L)}: tail mass outside [0, 1]")
    return problems


def validate_dataset(root: str | Path) -> tuple[list[str], dict]:
    """Return (problems, summary). Manifest-level problems raise PipelineError."""
    ds = SoftLabelDataset(root)
    problems, shards_checked, rows = [], 0, 0
    for split in ds.shards:
        for shard in ds.split_shards(split):
            shards_checked += 1
            try:
                table = ds.read_table(shard, verify=True)
            except PipelineError as exc:
                problems.append(str(exc))
                continue
            rows += table.num_rows
            problems += check_table(ds, shard, table)
    if (Path(root) / "tokenizer.json").is_file():
        from pipeline.hashing import sha256_file
        if sha256_file(Path(root) / "tokenizer.json") != ds.tokenizer_sha256:
            problems.append("tokenizer.json: sha256 differs from manifest tokenizer.sha256")
    return problems, {"shards": shards_checked, "rows": rows}
