"""Tokenize documents and pack them into fixed-length rows, grouped into planned shards.

Documents are split by a hash of their id, tokenized in batches, joined with the EOS id and cut
into rows of `seq_len` tokens; every `shard_rows` rows of a split form one shard. Each shard's
input is summarised by a hash of its tokens and document ids, so the plan (the list of these
hashes plus the labeling parameters) fingerprints exactly what would be labeled. The last
incomplete row of each split (< seq_len tokens) is dropped and counted.
"""

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import numpy as np

from pipeline.io.hashing import sha256_bytes, sha256_json
from pipeline.labeling.corpus import CorpusSpec, CorpusStats, iter_documents, split_of
from pipeline.models.tokenizer import LoadedTokenizer

SPLITS = ("train", "validation")
TOKENIZE_BATCH = 256


@dataclass
class ShardInput:
    split: str
    index: int
    tokens: np.ndarray  # [rows, seq_len] int32
    doc_ids: list[list[str]]
    mask: np.ndarray | None = None  # 1.3: [rows, seq_len] bool, positions trained on
    segments: np.ndarray | None = None  # 1.3: [rows, seq_len] int32, sample number (0: pad)

    @property
    def input_sha256(self) -> str:
        extra = {name: sha256_bytes(np.ascontiguousarray(value).tobytes())
                 for name, value in (("mask", self.mask), ("segments", self.segments))
                 if value is not None}  # absent for 1.0-1.2 inputs: their hashes stay
        return sha256_json({"tokens": sha256_bytes(self.tokens.tobytes()),
                            "docs": self.doc_ids, **extra})


class ShardSpill:
    """Planned shard inputs parked on local disk between the labeler's two passes.

    Why: every shard is planned (the whole run is fingerprinted) before any is labeled, and
    reading and tokenizing the corpus a second time cost about a tenth of a CPU labeling run
    (bench figure 1). Memory stays one shard: tokens go to .npy (uint16 when the vocabulary
    fits: 2 bytes per token), document ids to JSON; nothing is pickled.
    """

    def __init__(self, root: Path):
        self.root = Path(root)

    def _base(self, split: str, index: int) -> Path:
        return self.root / f"{split}-{index:05d}"

    def put(self, shard: ShardInput) -> None:
        small = shard.tokens.size == 0 or int(shard.tokens.max()) < 2 ** 16
        base = self._base(shard.split, shard.index)
        np.save(base.with_suffix(".npy"), shard.tokens.astype(np.uint16 if small else np.int32),
                allow_pickle=False)
        base.with_suffix(".json").write_text(json.dumps(shard.doc_ids))
        for name, value in (("mask", shard.mask), ("segments", shard.segments)):
            if value is not None:
                np.save(base.with_name(f"{base.name}-{name}.npy"), value, allow_pickle=False)

    def get(self, split: str, index: int) -> ShardInput:
        base = self._base(split, index)
        tokens = np.load(base.with_suffix(".npy"), allow_pickle=False).astype(np.int32)
        extra = {}
        for name in ("mask", "segments"):
            path = base.with_name(f"{base.name}-{name}.npy")
            extra[name] = np.load(path, allow_pickle=False) if path.is_file() else None
        return ShardInput(split, index, tokens, json.loads(base.with_suffix(".json").read_text()),
                          **extra)


@dataclass
class _SplitBuffer:
    tokens: list[int] = field(default_factory=list)
    docs: list[tuple[int, int, str]] = field(default_factory=list)  # (start, end, id) in tokens
    rows: list[np.ndarray] = field(default_factory=list)
    row_docs: list[list[str]] = field(default_factory=list)
    shards_emitted: int = 0

    def add(self, doc_id: str, ids: list[int], eos_id: int) -> None:
        start = len(self.tokens)
        self.tokens.extend(ids)
        self.tokens.append(eos_id)
        self.docs.append((start, len(self.tokens), doc_id))


def _cut_rows(buf: _SplitBuffer, seq_len: int) -> None:
    """Move every complete row out of the token buffer, keeping document provenance."""
    n_rows = len(buf.tokens) // seq_len
    if not n_rows:
        return
    cut = n_rows * seq_len
    buf.rows.extend(np.asarray(buf.tokens[:cut], dtype=np.int32).reshape(n_rows, seq_len))
    for lo in range(0, cut, seq_len):
        buf.row_docs.append([d for s, e, d in buf.docs if s < lo + seq_len and e > lo])
    del buf.tokens[:cut]
    buf.docs = [(max(s - cut, 0), e - cut, d) for s, e, d in buf.docs if e > cut]


def _emit(buf: _SplitBuffer, split: str, n: int) -> ShardInput:
    shard = ShardInput(split, buf.shards_emitted, np.stack(buf.rows[:n]), buf.row_docs[:n])
    del buf.rows[:n], buf.row_docs[:n]
    buf.shards_emitted += 1
    return shard


def iter_shard_inputs(corpus: CorpusSpec, tokenizer: LoadedTokenizer, seq_len: int,
                      shard_rows: int, validation_fraction: float, limit_docs: int | None = None,
                      stats: CorpusStats | None = None) -> Iterator[ShardInput]:
    """Yield planned shards in a deterministic order; memory is bounded by one shard per split."""
    stats = stats if stats is not None else CorpusStats()
    bufs = {s: _SplitBuffer() for s in SPLITS}
    pending: list[tuple[str, str]] = []

    def flush() -> Iterator[ShardInput]:
        encoded = tokenizer.encode_batch([t for _, t in pending])
        for (doc_id, _), ids in zip(pending, encoded):
            split = split_of(doc_id, validation_fraction)
            stats.by_split[split] = stats.by_split.get(split, 0) + 1
            buf = bufs[split]
            buf.add(doc_id, ids, tokenizer.eos_id)
            _cut_rows(buf, seq_len)
            while len(buf.rows) >= shard_rows:
                yield _emit(buf, split, shard_rows)
        pending.clear()

    for doc in islice(iter_documents(corpus, stats), limit_docs):
        pending.append(doc)
        if len(pending) >= TOKENIZE_BATCH:
            yield from flush()
    yield from flush()
    for split, buf in bufs.items():
        stats.tokens_dropped += len(buf.tokens)
        if buf.rows:
            yield _emit(buf, split, len(buf.rows))
