"""Tokens as the viewer shows them: readable text for every id, and what the teacher said about
each token of a row (`pipeline view`, pipeline/sharing/view.py).

Why bytes and not `tokenizer.decode([id])`: a byte-level BPE token may be a fragment of a
multi-byte UTF-8 character, which `decode` turns into U+FFFD and so hides which bytes it was.
The viewer decodes each token's own bytes (pipeline/models/tokenbytes.py) and shows a fragment as
its bytes in hex (`⟨e2 80⟩`), control characters as visible escapes, and special tokens by name.
Other tokenizer families fall back to `decode`; a dataset without its tokenizer shows ids.

Semantics (docs/FORMAT.md): position t's labels are the teacher's distribution of token t + 1,
so token t is shaded by the labels of position t − 1. The first token of a row has no label that
predicts it; with a loss mask, a token whose predicting position is outside the mask has none.
"""

import math
from dataclasses import dataclass

import numpy as np
from tokenizers import Tokenizer

from pipeline.models.tokenbytes import family_problem, token_bytes

# Characters a token may hold that would be invisible or break the layout: shown as escapes.
VISIBLE = {"\n": "↵\n", "\t": "→\t", "\r": "␍"}


@dataclass(frozen=True, slots=True)
class Shown:
    """One token's display: `text` as on the page, `kind` one of text/special/bytes/id."""

    text: str
    kind: str


def visible_text(text: str) -> str:
    """Control characters made visible (newline keeps its line break after a ↵ mark)."""
    return "".join(VISIBLE.get(c, f"\\x{ord(c):02x}" if ord(c) < 0x20 or ord(c) == 0x7F
                               else c) for c in text)


def show_bytes(data: bytes) -> Shown:
    """A byte-level token: its UTF-8 text, or its bytes in hex when they are not whole UTF-8
    characters (a fragment of a multi-byte character)."""
    try:
        return Shown(visible_text(data.decode("utf-8")), "text")
    except UnicodeDecodeError:
        return Shown("⟨" + " ".join(f"{b:02x}" for b in data) + "⟩", "bytes")


class TokenText:
    """id → Shown for one tokenizer (None: the dataset has no tokenizer.json: ids are shown)."""

    def __init__(self, tokenizer: Tokenizer | None):
        self.tokenizer = tokenizer
        self._bytes = (token_bytes(tokenizer, "tokenizer.json")
                       if tokenizer is not None and family_problem(tokenizer) is None else None)
        self._cache: dict[int, Shown] = {}

    def __call__(self, token_id: int) -> Shown:
        if token_id not in self._cache:
            self._cache[token_id] = self._show(token_id)
        return self._cache[token_id]

    def _show(self, token_id: int) -> Shown:
        if self.tokenizer is None:
            return Shown(f"#{token_id}", "id")
        if self._bytes is not None and token_id < len(self._bytes):
            data = self._bytes[token_id]
            if data is not None:
                return show_bytes(data)
        name = self.tokenizer.id_to_token(token_id)
        if name is None:  # an id past the tokenizer (a model's padded vocabulary)
            return Shown(f"#{token_id}", "id")
        if self._bytes is not None:  # a special token of a byte-level tokenizer
            return Shown(name, "special")
        return Shown(visible_text(self.tokenizer.decode([token_id],
                                                        skip_special_tokens=False)), "text")


def probability_text(p: float) -> str:
    """How the page prints a probability: 4 significant digits, never 0 for a stored entry."""
    return f"{p:.4g}"


def position_entries(ids: np.ndarray, logprobs: np.ndarray,
                     stored: np.ndarray | None) -> list[tuple[int, float]]:
    """(id, p) of one position's stored entries in rank order (padding of ragged modes out)."""
    keep = range(len(ids)) if stored is None else np.flatnonzero(stored)
    return [(int(ids[j]), math.exp(float(logprobs[j]))) for j in keep]


def coarse_entropy(p: np.ndarray, tail: np.ndarray) -> np.ndarray:
    """Entropy in nats over the stored entries plus the tail as one outcome, per position: a
    lower bound of the teacher's entropy (the tail's mass spread over many ids only adds)."""
    p = p.astype(np.float64)
    tail = np.clip(tail.astype(np.float64), 0.0, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.where(p > 0, p * np.log(p), 0.0).sum(-1)
        h -= np.where(tail > 0, tail * np.log(tail), 0.0)
    return h
