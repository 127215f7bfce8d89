"""A count-based bigram language model (interpolated Kneser-Ney), the bar a teacher must clear.

A teacher that cannot beat token-pair counts on held-out text has learned nothing worth
distilling, so `make teacher` and the tests compare the bundled teacher against this baseline on
the same validation split. Fitting and scoring are vectorised over sorted pair codes.

On a masked dataset (format 1.3: chat data trained on assistant tokens) a pair (token t, token
t + 1) counts only where `loss_mask[t]` is true, both when fitting and when scoring: the students
and the teacher are scored on those positions only, so the bar must be too (an unmasked bigram
would be fitted and judged mostly on prompts, template markers and padding, never across two
packed samples either, since the mask never holds a sample's last position).
"""

from dataclasses import dataclass

import numpy as np


@dataclass
class BigramModel:
    vocab_size: int
    pair_codes: np.ndarray      # sorted unique prev*V + next
    pair_counts: np.ndarray
    prev_counts: np.ndarray     # c(p)
    prev_types: np.ndarray      # N1+(p •): distinct successors of p
    continuation: np.ndarray    # smoothed P_cont(n)
    discount: float = 0.75


def _pairs(rows: np.ndarray, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(prev, next) pairs inside each row, matching next-token CE on positions 0..L-2; with a
    [rows, L] loss mask, only the pairs whose first position is in it."""
    rows = np.asarray(rows, dtype=np.int64)
    prev, nxt = rows[:, :-1], rows[:, 1:]
    if mask is None:
        return prev.reshape(-1), nxt.reshape(-1)
    keep = np.asarray(mask, dtype=bool)[:, :-1]
    return prev[keep], nxt[keep]


def fit_bigram(rows: np.ndarray, vocab_size: int, discount: float = 0.75,
               mask: np.ndarray | None = None) -> BigramModel:
    prev, nxt = _pairs(rows, mask)
    codes, counts = np.unique(prev * vocab_size + nxt, return_counts=True)
    p_of, n_of = codes // vocab_size, codes % vocab_size
    prev_counts = np.bincount(p_of, weights=counts, minlength=vocab_size)
    prev_types = np.bincount(p_of, minlength=vocab_size).astype(np.float64)
    cont = np.bincount(n_of, minlength=vocab_size).astype(np.float64) + 1.0  # +1: never zero
    return BigramModel(vocab_size, codes, counts.astype(np.float64), prev_counts, prev_types,
                       cont / cont.sum(), discount)


def bigram_cross_entropy(model: BigramModel, rows: np.ndarray,
                         mask: np.ndarray | None = None) -> float:
    """Mean next-token cross-entropy (nats) of the bigram model on [rows, L] tokens (at the
    positions of `mask` when given; NaN when there are none)."""
    prev, nxt = _pairs(rows, mask)
    if not prev.size:
        return float("nan")
    V, d = model.vocab_size, model.discount
    codes = prev * V + nxt
    c = np.zeros(codes.shape)
    if model.pair_codes.size:  # fitted on no pair (an empty mask): every history is unseen
        idx = np.clip(np.searchsorted(model.pair_codes, codes), 0, len(model.pair_codes) - 1)
        c = np.where(model.pair_codes[idx] == codes, model.pair_counts[idx], 0.0)
    cp = model.prev_counts[prev]
    seen = cp > 0
    safe = np.where(seen, cp, 1.0)
    backoff_weight = np.where(seen, d * model.prev_types[prev] / safe, 1.0)
    discounted = np.where(seen, np.maximum(c - d, 0.0) / safe, 0.0)
    p = discounted + backoff_weight * model.continuation[nxt]
    return float(-np.log(p).mean())


def split_rows(dataset, split: str, max_rows: int | None = None) -> np.ndarray:
    """All token rows of one split of a SoftLabelDataset (checksums verified), as [rows, L]."""
    return split_rows_and_mask(dataset, split, max_rows)[0]


def split_rows_and_mask(dataset, split: str, max_rows: int | None = None
                        ) -> tuple[np.ndarray, np.ndarray | None]:
    """[rows, L] tokens of one split and their loss mask (None: every position is trained)."""
    parts, masks, n = [], [], 0
    for shard in dataset.split_shards(split):
        if max_rows is not None and n >= max_rows:
            break
        batch = dataset.decode(dataset.read_table(shard), f"shard {shard.rel}")
        parts.append(batch["input_ids"].numpy())
        if "loss_mask" in batch:
            masks.append(batch["loss_mask"].numpy())
        n += len(parts[-1])
    mask = np.concatenate(masks)[:max_rows] if masks else None
    return np.concatenate(parts)[:max_rows], mask
