"""`pipeline validate`: check every promise the format makes, shard by shard.

Each problem is reported with the shard (and row where it applies); the dataset is valid only if
there are none. The checks are vectorised over a shard, then the first failing row is located.
"""

from pathlib import Path

import numpy as np
import pyarrow as pa

from pipeline.errors import PipelineError
from pipeline.softlabels import checks, ragged, sortedids
from pipeline.softlabels import schema as S
from pipeline.softlabels.encodings import decode_logprobs
from pipeline.softlabels.layout import TOKENIZER
from pipeline.softlabels.reader import ShardInfo, SoftLabelDataset, _flat_values

LOGPROB_SLACK = {"fp32": 1e-6, "fp16": 1e-3, "u8": 1e-6}  # rounding can reorder equal values
TOPP_SLACK = 1e-6  # stored mass is 1 - tail, and tail is float32


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
    counts = (_flat_values(table.column(S.COL_COUNTS), np.int64) if spec.variable
              else np.full(ids.size, spec.k, dtype=np.int64))
    top = _flat_values(table.column(spec.ids_column), np.int64)
    lp = decode_logprobs(_flat_values(table.column(spec.logprobs_column)), spec)
    tail = _flat_values(table.column(S.COL_TAIL), np.float32)
    if top.size != counts.sum() or lp.size != top.size or tail.size != ids.size:
        return problems + [f"{name}: label columns are not rows x seq_len x k ({L} x {spec.k})"]
    pos, rank = ragged.entry_positions(counts)  # the position of every stored entry

    def entry_row(bad: np.ndarray) -> int:
        return int(pos[np.flatnonzero(bad)[0]] // L)

    if spec.sorted_ids:  # 1.2: stored ascending (gaps >= 1 after each position's first id)
        if (bad := (top < 0) | ((top < 1) & (rank > 0))).any():
            problems.append(f"{name} row {entry_row(bad)}: {spec.ids_column} not ascending "
                            "within a position (a gap < 1)")
        top, lp = _rank_ordered(top, lp, counts, pos, rank, spec.k)

    if (bad := (top < 0) | (top >= spec.vocab_size)).any():
        problems.append(f"{name} row {entry_row(bad)}: topk id >= vocab {spec.vocab_size}")
    elif (bad := _duplicates(pos, top, spec.vocab_size)).any():
        problems.append(f"{name} row {entry_row(bad)}: an id is stored twice at one position")
    if (bad := ~np.isfinite(lp)).any():
        problems.append(f"{name} row {entry_row(bad)}: non-finite log-probability")
    elif (bad := lp > 0).any():
        problems.append(f"{name} row {entry_row(bad)}: positive log-probability")
    else:
        slack = LOGPROB_SLACK.get(spec.logprob_encoding, 1e-3)
        bad = np.concatenate([[False], (np.diff(lp) > slack) & (pos[1:] == pos[:-1])])
        if bad.any():
            problems.append(f"{name} row {entry_row(bad)}: log-probabilities not descending")
    if (bad := ~((tail >= 0) & (tail <= 1))).any():
        problems.append(f"{name} row {_first_row(bad, L)}: tail mass outside [0, 1]")
    elif spec.loss_mask and (bad := (counts == 0) & (tail != 1)).any():  # 1.3
        problems.append(f"{name} row {_first_row(bad, L)}: tail mass not 1 at a position "
                        "without stored entries (all of the mass is outside the empty set)")
    return problems + _mode_problems(ds, table, name, counts, tail, pos)


def _rank_ordered(deltas, lp, counts, pos, rank, k) -> tuple[np.ndarray, np.ndarray]:
    """1.2 flat entries (deltas, id order) → flat ids and log-probabilities in rank order, as
    every reader returns them (so the checks below read the same values training does)."""
    mask = np.arange(k) < counts[:, None]
    ids = sortedids.ids_from_deltas(ragged.to_padded(deltas, pos, rank, counts.size, k, 0), mask)
    ids, lp = sortedids.rank_order(ids, ragged.to_padded(lp, pos, rank, counts.size, k, 0.0),
                                   mask)
    return ids[mask], lp[mask]


def _duplicates(pos: np.ndarray, ids: np.ndarray, vocab: int) -> np.ndarray:
    """Per entry: is (position, id) stored more than once? (a sort, no per-row Python)"""
    key = pos * vocab + ids
    order = np.argsort(key, kind="stable")
    dup = np.zeros(key.size, dtype=bool)
    dup[order[1:]] = np.diff(key[order]) == 0
    return dup


def _mode_problems(ds: SoftLabelDataset, table: pa.Table, name: str, counts: np.ndarray,
                   tail: np.ndarray, pos: np.ndarray) -> list[str]:
    """1.1: top-p sets reach p (unless max_k cut them) and hold >= min_k entries; sampled
    draws are >= 1 per stored id and sum to N per position; log-norms are finite."""
    spec, L = ds.spec, ds.seq_len
    problems = []
    labeled = counts > 0 if spec.loss_mask else np.ones(counts.shape, dtype=bool)  # 1.3
    if spec.mode == "topp":
        short = (1.0 - tail.astype(np.float64) < spec.top_p - TOPP_SLACK) & (counts < spec.k)
        if (bad := (short | (counts < spec.min_k)) & labeled).any():
            problems.append(f"{name} row {_first_row(bad, L)}: top-p set holds less than "
                            f"top_p {spec.top_p} of the mass (or fewer than min_k entries)")
    if spec.mode == "sampled":
        draws = _flat_values(table.column(spec.sample_counts_column), np.int64)
        total = np.bincount(pos, weights=draws, minlength=counts.size)
        if (bad := draws < 1).any():
            problems.append(f"{name} row {int(pos[np.flatnonzero(bad)[0]] // L)}: a stored "
                            "sampled id has 0 draws")
        elif (bad := (total != spec.samples) & labeled).any():
            problems.append(f"{name} row {_first_row(bad, L)}: sample_counts do not sum to "
                            f"samples = {spec.samples}")
    if spec.tempered:
        log_norm = _flat_values(table.column(S.COL_LOG_NORM), np.float64)
        if (bad := ~np.isfinite(log_norm)).any():
            problems.append(f"{name} row {_first_row(bad, L)}: non-finite proposal_log_norm")
    return problems


def index_problems(ds: SoftLabelDataset, shard: ShardInfo) -> list[str]:
    """The row-group index of a shard whose whole sha256 matched: every segment's sha256 and the
    footer's row counts, so that a wrong index is found here rather than mid-training."""
    if shard.row_groups is None:
        return []
    try:
        pf = ds.open_verified(shard)  # the footer and the row counts
        try:
            for i in range(pf.metadata.num_row_groups):
                pf.file.segment(i)
                pf.file.release()
        finally:
            pf.close()
    except PipelineError as exc:
        return [str(exc)]
    return []


def validate_dataset(root: str | Path, version: int | None = None) -> tuple[list[str], dict]:
    """Return (problems, summary) of the latest version or `version`. Manifest-level problems
    raise PipelineError."""
    ds = SoftLabelDataset(root, version)
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
            problems += check_table(ds, shard, table) + index_problems(ds, shard)
    if ds.store.isfile(TOKENIZER) and ds.store.sha256(TOKENIZER) != ds.tokenizer_sha256:
        problems.append(f"{TOKENIZER}: sha256 differs from manifest tokenizer.sha256")
    return problems, {"shards": shards_checked, "rows": rows}
