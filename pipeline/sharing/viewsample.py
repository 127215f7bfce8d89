"""What `pipeline view` reads: a seeded sample of row groups, never the whole dataset.

Memory stays bounded whatever the dataset's size: at most MAX_ROW_GROUPS row groups are read
(each verified as the trainer verifies it: `SoftLabelDataset.open_verified`), one at a time,
rows are decoded CHUNK_POSITIONS at a time and reduced at once to per-position figures (top-k
mass, entropy), and those stop at STATS_POSITIONS. The browsed rows are picked from the same row
groups, spread over several of them.
"""

import math
from dataclasses import dataclass, field

import numpy as np

from pipeline.errors import PipelineError
from pipeline.sharing.viewtokens import (
    TokenText,
    coarse_entropy,
    position_entries,
    probability_text,
)
from pipeline.softlabels.reader import ShardInfo, SoftLabelDataset

MAX_ROW_GROUPS = 16  # row groups read at most
STATS_POSITIONS = 1 << 18  # labeled positions the histograms show at most
CHUNK_POSITIONS = 1 << 16  # positions decoded at once
ROW_GROUPS_PER_BROWSE = 4  # browsed rows come from at least this many row groups, when there are


@dataclass
class Sample:
    split: str
    row_groups: int = 0
    rows: list[dict] = field(default_factory=list)  # browsed rows, tokens ready for the page
    mass: list[np.ndarray] = field(default_factory=list)  # top-k mass per labeled position
    entropy: list[np.ndarray] = field(default_factory=list)
    column_bytes: dict[str, int] = field(default_factory=dict)  # over the opened shards' footers
    footer_positions: int = 0

    @property
    def positions(self) -> int:
        return sum(a.size for a in self.mass)


def choose_split(ds: SoftLabelDataset, split: str | None) -> str:
    """--split, or validation when there is one (rows no student trained on), else the first."""
    if split is None:
        split = "validation" if ds.shards.get("validation") else next(
            (s for s, shards in ds.shards.items() if shards), None)
    if split not in ds.shards:
        raise PipelineError(f"--split {split}: the dataset has splits {sorted(ds.shards)}")
    if not ds.shards[split]:
        raise PipelineError(f"--split {split}: the split has no shards; pick another of "
                            f"{sorted(ds.shards)}")
    return split


def read_sample(ds: SoftLabelDataset, split: str, rows: int, seed: int,
                text: TokenText) -> Sample:
    rng = np.random.default_rng(seed)
    sample = Sample(split)
    units = _row_groups(ds, ds.split_shards(split), rng, sample)
    browse_groups = min(len(units), ROW_GROUPS_PER_BROWSE)
    for n, (shard, pf, group) in enumerate(units):
        table = pf.read_row_group(group)
        where = f"shard {shard.rel} row group {group}"
        first_row = sum(pf.metadata.row_group(i).num_rows for i in range(group))
        wanted = rows - len(sample.rows)  # spread over the first row groups, the rest in the last
        take = min(math.ceil(wanted / max(1, browse_groups - n)), table.num_rows)
        for r in sorted(rng.choice(table.num_rows, size=take, replace=False).tolist()):
            decoded = ds.decode(table.slice(r, 1), where)
            sample.rows.append(row_view(decoded, 0, text, shard.rel, first_row + r))
        _add_stats(ds, table, where, sample)
        sample.row_groups += 1
        if len(sample.rows) >= rows and sample.positions >= STATS_POSITIONS:
            break
    return sample


def _row_groups(ds: SoftLabelDataset, shards: list[ShardInfo], rng,
                sample: Sample) -> list[tuple]:
    """Up to MAX_ROW_GROUPS (shard, opened file, row group) in a seeded order: one row group of
    each of up to MAX_ROW_GROUPS shards first, then further row groups of those shards in turn."""
    queues = []
    for i in rng.permutation(len(shards))[:MAX_ROW_GROUPS].tolist():
        pf = ds.open_verified(shards[i])
        _add_footer(pf.metadata, ds.seq_len, sample)
        queues.append((shards[i], pf, rng.permutation(pf.metadata.num_row_groups).tolist()))
    units: list[tuple] = []
    while len(units) < MAX_ROW_GROUPS and any(q[2] for q in queues):
        units += [(shard, pf, groups.pop(0)) for shard, pf, groups in queues if groups]
    return units[:MAX_ROW_GROUPS]


def _add_footer(meta, seq_len: int, sample: Sample) -> None:
    """Stored bytes per column (compressed column chunks), for the bytes-per-position plot."""
    for g in range(meta.num_row_groups):
        rg = meta.row_group(g)
        sample.footer_positions += rg.num_rows * seq_len
        for c in range(rg.num_columns):
            col = rg.column(c)
            name = col.path_in_schema.split(".")[0]
            sample.column_bytes[name] = sample.column_bytes.get(name, 0) + \
                col.total_compressed_size


def _add_stats(ds: SoftLabelDataset, table, where: str, sample: Sample) -> None:
    """Top-k mass and coarse entropy of the labeled positions, a chunk of rows at a time."""
    if not ds.spec.has_labels:
        return
    chunk = max(1, CHUNK_POSITIONS // ds.seq_len)
    for start in range(0, table.num_rows, chunk):
        if sample.positions >= STATS_POSITIONS:
            return
        d = ds.decode(table.slice(start, chunk), where)
        labeled = d["loss_mask"] if "loss_mask" in d else np.ones(d["tail_mass"].shape, bool)
        labeled = np.asarray(labeled, bool)
        tail = d["tail_mass"].numpy()[labeled]
        p = np.exp(d["topk_logprobs"].numpy()[labeled].astype(np.float64))
        if "label_mask" in d:
            p = np.where(d["label_mask"].numpy()[labeled], p, 0.0)
        room = STATS_POSITIONS - sample.positions
        sample.mass.append((1.0 - tail.astype(np.float64))[:room])
        sample.entropy.append(coarse_entropy(p, tail)[:room])


def row_view(decoded: dict, r: int, text: TokenText, shard_rel: str, row: int) -> dict:
    """Row r of a decoded batch as the page shows it: one dict per token (see `token_view`)."""
    ids = decoded["input_ids"][r].tolist()
    trained = decoded["loss_mask"][r].tolist() if "loss_mask" in decoded else None
    segments = decoded["segment_ids"][r].tolist() if "segment_ids" in decoded else None
    tokens = [token_view(decoded, r, t, ids[t], text, trained) for t in range(len(ids))]
    if segments is not None:
        for t, tok in enumerate(tokens):
            tok["seg"] = segments[t]
    return {"shard": shard_rel, "row": row, "tokens": tokens,
            "masked": trained is not None, "segments": segments is not None}


def token_view(decoded: dict, r: int, t: int, token_id: int, text: TokenText,
               trained: list[bool] | None) -> dict:
    """Token t of row r: its text, and the teacher's probability of it from position t − 1.

    state: "p" (the token is among the stored entries), "tail" (it is not: p ≤ tail mass),
    "first" (no position predicts a row's first token), "untrained" (the predicting position
    is outside the loss mask: nothing stored), "none" (a tokens-only dataset)."""
    shown = text(token_id)
    tok = {"id": token_id, "text": shown.text, "kind": shown.kind}
    if "topk_ids" not in decoded:
        return {**tok, "state": "none"}
    if t == 0:
        return {**tok, "state": "first"}
    if trained is not None and not trained[t - 1]:
        return {**tok, "state": "untrained"}
    stored = decoded["label_mask"][r, t - 1].numpy() if "label_mask" in decoded else None
    entries = position_entries(decoded["topk_ids"][r, t - 1].numpy(),
                               decoded["topk_logprobs"][r, t - 1].numpy(), stored)
    tail = float(decoded["tail_mass"][r, t - 1])
    p = next((q for i, q in entries if i == token_id), None)
    alts = [{"id": i, "text": text(i).text, "kind": text(i).kind, "p": q,
             "p_text": probability_text(q)} for i, q in entries]
    tok.update(tail=tail, tail_text=probability_text(tail), alts=alts)
    if p is None:
        return {**tok, "state": "tail", "p": None, "p_text": f"p ≤ tail ({probability_text(tail)})"}
    return {**tok, "state": "p", "p": p, "p_text": probability_text(p)}
