"""Rows for an incremental version: pack pieces of documents, remembering where each one lies.

Why spans: a packed row's labels depend on every token before them in the row, so when a
document is removed or changed, each row holding any of its tokens leaves the dataset, and the
other documents' tokens in those rows ("fragments") must be labeled again in a new context. To
cut exactly those tokens out, every row records `[doc_id, start, end]` for each document in it
(the version's document index, pipeline/softlabels/versions.py). Only fragments are relabeled,
never the whole neighbouring document: relabeling it whole would drop its other rows too, and
the next neighbour's, down the whole split.

Packing is the legacy text packing (pipeline/labeling/packing.py: a document's tokens then EOS,
back to back, cut every seq_len tokens) fed with pieces: leftover tokens of the last version
first, then fragments, then the new and changed documents in corpus order. Tokens that do not
fill a last row are not dropped as in a full labeling but carried to the next version (`tails`),
so a document added a few tokens at a time is still labeled once enough arrive.
"""

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow.parquet as pq

from pipeline.labeling.packing import SPLITS, ShardInput
from pipeline.softlabels import schema as S
from pipeline.softlabels.layout import shard_relpath

Span = list  # [doc_id, start, end] within one row


@dataclass
class _Buf:
    tokens: list[int] = field(default_factory=list)
    docs: list[tuple[int, int, str]] = field(default_factory=list)  # (start, end, id)
    rows: list[np.ndarray] = field(default_factory=list)
    spans: list[list[Span]] = field(default_factory=list)


class Packer:
    """Pieces in, planned shards out (per split, at `next_index[split]` onwards); `spans`
    holds every emitted row's document spans by shard path."""

    def __init__(self, seq_len: int, shard_rows: int, next_index: dict[str, int]):
        self.seq_len, self.shard_rows = seq_len, shard_rows
        self.next_index = {s: int(next_index.get(s, 0)) for s in SPLITS}
        self.bufs = {s: _Buf() for s in SPLITS}
        self.spans: dict[str, list[list[Span]]] = {}

    def add(self, split: str, doc_id: str, tokens) -> Iterator[ShardInput]:
        buf = self.bufs[split]
        start = len(buf.tokens)
        buf.tokens.extend(int(t) for t in tokens)
        buf.docs.append((start, len(buf.tokens), doc_id))
        self._cut(buf)
        while len(buf.rows) >= self.shard_rows:
            yield self._emit(split, self.shard_rows)

    def _cut(self, buf: _Buf) -> None:
        n = len(buf.tokens) // self.seq_len
        if not n:
            return
        cut, L = n * self.seq_len, self.seq_len
        buf.rows.extend(np.asarray(buf.tokens[:cut], dtype=np.int32).reshape(n, L))
        for lo in range(0, cut, L):
            buf.spans.append(_merged([[d, max(s - lo, 0), min(e - lo, L)]
                                      for s, e, d in buf.docs if s < lo + L and e > lo]))
        del buf.tokens[:cut]
        buf.docs = [(max(s - cut, 0), e - cut, d) for s, e, d in buf.docs if e > cut]

    def _emit(self, split: str, n: int) -> ShardInput:
        buf, index = self.bufs[split], self.next_index[split]
        spans = buf.spans[:n]
        shard = ShardInput(split, index, np.stack(buf.rows[:n]),
                           [list(dict.fromkeys(s[0] for s in row)) for row in spans])
        del buf.rows[:n], buf.spans[:n]
        self.spans[shard_relpath(split, index)] = spans
        self.next_index[split] += 1
        return shard

    def finish(self) -> Iterator[ShardInput]:
        for split, buf in self.bufs.items():
            if buf.rows:
                yield self._emit(split, len(buf.rows))

    def tails(self) -> dict[str, list]:
        """The tokens that did not fill a row, as pieces [doc_id, [tokens]] per split."""
        return {split: [[d, buf.tokens[s:e]] for s, e, d in buf.docs]
                for split, buf in self.bufs.items() if buf.tokens}


def _merged(spans: list[Span]) -> list[Span]:
    """Adjacent spans of one document (two fragments of it, back to back) as one."""
    out: list[Span] = []
    for span in spans:
        if out and out[-1][0] == span[0] and out[-1][2] == span[1]:
            out[-1][2] = span[2]
        else:
            out.append(span)
    return out


def affected_rows(index_rows: dict[str, list[list[Span]]], gone: set[str]) -> dict[str, list[int]]:
    """Per live shard, the rows holding any token of a removed or changed document."""
    out = {}
    for rel, rows in index_rows.items():
        hit = [i for i, row in enumerate(rows) if any(span[0] in gone for span in row)]
        if hit:
            out[rel] = hit
    return out


def read_tokens(store, rel: str) -> np.ndarray:
    """A shard's input_ids as [rows, seq_len] (no label column is read)."""
    table = pq.read_table(store.input_file(rel), columns=[S.COL_INPUT_IDS])
    col = table.column(S.COL_INPUT_IDS).combine_chunks()
    return col.flatten().to_numpy().reshape(table.num_rows, -1)


def fragments(tokens: np.ndarray, rows: list[list[Span]], hit: Iterable[int],
              gone: set[str]) -> list[tuple[str, np.ndarray]]:
    """The tokens of the surviving documents in the rows that leave: to be labeled again."""
    return [(d, tokens[i, s:e]) for i in hit for d, s, e in rows[i] if d not in gone]
