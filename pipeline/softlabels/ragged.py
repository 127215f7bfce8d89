"""Variable entries per position (format 1.1 `topp`/`sampled`): flat storage ↔ padded tensors.

On disk a row's entries are flattened position-major with a per-position count (`label_counts`),
so nothing is stored for padding. In memory the trainer wants fixed shapes, so a row group
decodes to [positions, k] arrays plus a mask. Both directions are pure offsets arithmetic
(`np.repeat`, `cumsum`): no per-row or per-position Python, whatever the row group size.
"""

import numpy as np

# Decoded padding entries carry id 0 and this log-probability: finite (so checks and sums stay
# NaN-free) and far below any real value (exp underflows to exactly 0 in float32).
PAD_LOGPROB = -1.0e4


def pack(padded: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """[..., k] padded values + [...] counts → the flat valid values, position-major."""
    width = padded.shape[-1]
    keep = np.arange(width) < counts[..., None]
    return padded[keep]


def row_offsets(counts: np.ndarray) -> np.ndarray:
    """[rows, seq] counts → int32 list offsets [rows + 1] of the flattened entry columns."""
    per_row = counts.reshape(counts.shape[0], -1).sum(axis=1, dtype=np.int64)
    return np.concatenate([[0], np.cumsum(per_row)]).astype(np.int32)


def entry_positions(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For flat entries laid out by `counts` [P]: (position of each entry, rank within it)."""
    counts = counts.astype(np.int64, copy=False)
    positions = np.repeat(np.arange(counts.size), counts)
    starts = np.cumsum(counts) - counts
    ranks = np.arange(positions.size) - np.repeat(starts, counts)
    return positions, ranks


def unpad_index(counts: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(positions, ranks, mask [P, width]) to scatter flat entries into padded arrays."""
    positions, ranks = entry_positions(counts)
    mask = np.arange(width) < counts.astype(np.int64)[:, None]
    return positions, ranks, mask


def to_padded(flat: np.ndarray, positions: np.ndarray, ranks: np.ndarray, n_positions: int,
              width: int, fill) -> np.ndarray:
    """Scatter flat entries into a [n_positions, width] array filled with `fill`."""
    out = np.full((n_positions, width), fill, dtype=flat.dtype)
    out[positions, ranks] = flat
    return out
