"""`pipeline import SRC OUT --from jsonl --tokenizer FILE --teacher NAME`: labels another tool
made (or `pipeline export` wrote) into a validated dataset.

Two streaming passes over the file, so memory holds one shard of rows, never the file: the
first checks every row (pipeline/sharing/jsonrows.py) and learns the shape the dataset needs
(seq_len, k, whether any position is untrained, whether a tail mass is given), so a refusal
writes nothing; the second writes the shards through the format's one writer
(pipeline/softlabels/writer.py), then tokenizer.json and the card, and manifest.json last.

The teacher and tokenizer are what the user says they are: the tokenizer is hashed and copied
in (ids are checked against its vocabulary), the teacher is recorded by name (and sha256 when
given). A file without `tail_mass` gets the derived tail `1 − Σ stored` (exact only when the
file's values are the teacher's exact probabilities), and the manifest says so
(`labels.tail_mass_source = "derived"`), as `inspect` and both cards do.
"""

import hashlib
import json
from dataclasses import dataclass, field

import numpy as np

from pipeline.errors import PipelineError
from pipeline.io.hashing import sha256_json
from pipeline.io.storage import Store
from pipeline.io.uris import redact
from pipeline.models.tokenizer import load_tokenizer
from pipeline.sharing.imported import imported_manifest
from pipeline.sharing.jsonrows import Row, derived_tail, parse_row
from pipeline.softlabels import layout
from pipeline.softlabels import schema as S
from pipeline.softlabels.card import write_card
from pipeline.softlabels.writer import ShardLabels, build_table, write_shard

FORMATS = ("jsonl",)


@dataclass
class Shape:
    """What the first pass learns: one seq_len and k for every file, untrained positions, and
    whether the files give a tail mass (all of them, or none)."""

    seq_len: int | None = None
    k: int | None = None
    masked: bool = False
    has_tail: bool | None = None
    rows: dict = field(default_factory=dict)  # split → rows
    sha256: dict = field(default_factory=dict)  # split → sha256 of its file


def _lines(src: str):
    """(line number, bytes) of a local or remote file, streamed."""
    parent, _, name = str(src).rstrip("/").rpartition("/")
    store = Store(parent or ".")
    if not store.isfile(name):
        raise PipelineError(f"{redact(src)} does not exist; pass the JSONL file to import")
    with store.open(name, "rb") as raw:
        yield from enumerate(raw, 1)


def _rows(src: str, vocab: int):
    """(line number, checked Row, raw line) for each non-blank line, in file order."""
    for n, line in _lines(src):
        if not line.strip():
            continue
        where = f"{redact(src)} row {n}"
        try:
            value = json.loads(line)  # bytes: UTF-8 is checked here (UnicodeDecodeError)
        except ValueError as exc:
            raise PipelineError(f"{where}: not valid JSON ({exc.args[0][:80]}); each line must "
                                "be one JSON object") from None
        yield n, parse_row(value, vocab, where, f"row-{n}"), line


def _learn(shape: Shape, row: Row, where: str) -> None:
    """Fold one row into the shape, refusing one that disagrees with the rows before it."""
    entries = row.counts[row.counts > 0]
    k = int(entries[0]) if entries.size else None
    if shape.seq_len is None:
        shape.seq_len = row.tokens.size
    if row.tokens.size != shape.seq_len:
        raise PipelineError(f"{where} column input_ids: {row.tokens.size} tokens, the rows "
                            f"before it {shape.seq_len}; every row of a dataset has one length")
    if k is not None and shape.k is None:
        shape.k = k
    if entries.size and (entries != shape.k).any():
        t = int(np.flatnonzero((row.counts > 0) & (row.counts != shape.k))[0])
        raise PipelineError(f"{where} column topk_ids: position {t} holds {row.counts[t]} "
                            f"entries, other positions {shape.k}; import takes top-k rows (the "
                            "same k at every position, or none where a position is not trained)")
    shape.masked |= bool((row.counts == 0).any())
    if shape.has_tail is None:
        shape.has_tail = row.tail is not None
    if shape.has_tail != (row.tail is not None):
        raise PipelineError(f"{where} column tail_mass: given on some rows and not others; give "
                            "it on every row (exact) or on none (derived as 1 − Σ stored)")


def check_sources(sources: dict, vocab: int) -> Shape:
    """The first pass: every row of every file checked; the shape the dataset needs."""
    shape = Shape()
    for split, src in sources.items():
        digest, rows = hashlib.sha256(), 0
        for n, row, line in _rows(src, vocab):
            _learn(shape, row, f"{redact(src)} row {n}")
            digest.update(line)
            rows += 1
        if not rows:
            raise PipelineError(f"{redact(src)} holds no rows; nothing to import")
        shape.rows[split], shape.sha256[split] = rows, digest.hexdigest()
    if shape.k is None:
        raise PipelineError("no position of the input holds a teacher entry; nothing to import")
    return shape


def label_spec(shape: Shape, vocab: int, encoding: str) -> S.LabelSpec:
    return S.LabelSpec(mode="topk", k=shape.k, vocab_size=vocab,
                       id_type=S.id_type_for_vocab(vocab), logprob_encoding=encoding,
                       id_encoding="sorted_delta", loss_mask=True if shape.masked else None)


def _shard(rows: list[Row], shape: Shape) -> tuple[np.ndarray, ShardLabels, np.ndarray]:
    """tokens [R, L], labels [R, L, k] (untrained positions padded, the writer drops them) and
    the trained-position mask [R, L] of one shard's rows."""
    R, L, k = len(rows), shape.seq_len, shape.k
    tokens = np.stack([r.tokens for r in rows])
    ids, lps = np.zeros((R, L, k), np.int64), np.zeros((R, L, k), np.float32)
    mask = np.stack([r.counts > 0 for r in rows])
    for i, r in enumerate(rows):
        ids[i, mask[i]] = r.ids.reshape(-1, k)
        lps[i, mask[i]] = r.logprobs.reshape(-1, k)
    tail = np.stack([r.tail if r.tail is not None else derived_tail(r) for r in rows])
    return tokens, ShardLabels(ids, lps, tail.astype(np.float32)), mask


@dataclass
class Target:
    """Where and how the shards are written (the writer's arguments that do not change)."""

    store: Store
    spec: S.LabelSpec
    shape: Shape
    kv: dict  # each shard's key-value metadata
    shard_rows: int
    row_group_rows: int


def _write_split(target: Target, split: str, src: str, vocab: int) -> list[dict]:
    """The second pass over one file: shards of `shard_rows` rows; their completion records."""
    records, buffer = [], []

    def flush():
        tokens, labels, mask = _shard(buffer, target.shape)
        table = build_table(target.spec, tokens, [r.doc_ids for r in buffer], labels,
                            mask if target.spec.loss_mask else None)
        index = len(records)
        records.append(write_shard(target.store, split, index, table, target.kv,
                                   target.row_group_rows,
                                   sha256_json([target.shape.sha256[split], split, index])))
        buffer.clear()

    for _, row, _ in _rows(src, vocab):
        buffer.append(row)
        if len(buffer) == target.shard_rows:
            flush()
    if buffer:
        flush()
    return records


@dataclass
class Provenance:
    """What the user says the labels are: the teacher by name (and weights sha256), the corpus
    by name; each stored redacted."""

    teacher: str
    teacher_sha256: str | None = None
    corpus: str | None = None


def _prepare_out(store: Store) -> None:
    """OUT must be new, empty, or what a killed import of ours left (no manifest yet: removed,
    it is only ours by name and content, softlabels/layout.py); never a dataset or anything
    else."""
    if store.exists() and not store.isdir():
        raise PipelineError(f"{store.uri} is a file; import into a new folder")
    if store.isfile(layout.MANIFEST):
        raise PipelineError(f"{store.uri} already holds a dataset; import into a new folder, "
                            "nothing was written")
    if foreign := layout.foreign_files(store):
        raise PipelineError(f"{store.uri} holds files this tool did not write (e.g. "
                            f"{foreign[0]}); import into a new or empty folder, nothing was "
                            "written")
    for name in layout.owned_entries(store):
        store.remove(name)
    store.makedirs()


def import_jsonl(sources: dict, out: str, tokenizer_path: str, who: Provenance,
                 vocab_size: int | None = None, logprob_encoding: str = "fp16",
                 shard_rows: int = 512, row_group_rows: int = 128) -> dict:
    """Import {split: JSONL file} into a new dataset OUT; returns its manifest."""
    tokenizer = load_tokenizer(tokenizer_path)
    if vocab_size is not None:
        if vocab_size < tokenizer.vocab_size:
            raise PipelineError(f"--vocab-size {vocab_size} is smaller than the tokenizer's "
                                f"{tokenizer.vocab_size}; give the teacher's logit width")
        tokenizer.tokenizer_size, tokenizer.vocab_size = tokenizer.vocab_size, vocab_size
    shape = check_sources(sources, tokenizer.vocab_size)
    spec = label_spec(shape, tokenizer.vocab_size, logprob_encoding)
    params = {"imported": {s: shape.sha256[s] for s in sources}, "labels": spec.as_dict(),
              "seq_len": shape.seq_len, "shard_rows": shard_rows,
              "tokenizer_sha256": tokenizer.sha256, "teacher": redact(who.teacher)}
    fingerprint = sha256_json(params)
    store = Store(out)
    _prepare_out(store)
    store.write_json(layout.PLAN, {"params": params, "shards": [], "fingerprint": fingerprint})
    kv = {"format_version": spec.format_version, **spec.extras(), "mode": spec.mode,
          "k": spec.k, "vocab_size": spec.vocab_size, "id_type": spec.id_type,
          "logprob_encoding": spec.logprob_encoding, "seq_len": shape.seq_len,
          "tokenizer_sha256": tokenizer.sha256, "teacher_sha256": who.teacher_sha256 or "",
          "plan_fingerprint": fingerprint}
    target = Target(store, spec, shape, kv, shard_rows, row_group_rows)
    records = {split: _write_split(target, split, src, tokenizer.vocab_size)
               for split, src in sources.items()}
    store.put_file(tokenizer.path, layout.TOKENIZER)
    manifest = imported_manifest(shape, spec, tokenizer, who, sources, records, fingerprint)
    write_card(store, manifest)
    store.write_json(layout.MANIFEST, manifest)  # the commit point: last
    return manifest
