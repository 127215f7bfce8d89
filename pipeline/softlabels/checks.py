"""Cheap checks every reader runs on a dataset it did not make.

Teams train on datasets other teams labeled, so manifest.json and every shard are untrusted: a
matching sha256 only proves a shard is the file the manifest lists, not that the manifest or its
writer were right. These checks turn anything malformed into one PipelineError naming the field
or shard (and row) — instead of a KeyError, a reshape error, an out-of-range embedding lookup or
a NaN loss many steps later. They are vectorised: a few reductions per row group, no per-row
Python, so the trainer can afford them on every batch it decodes.
"""

import numpy as np
import pyarrow as pa
import torch

from pipeline.errors import PipelineError
from pipeline.softlabels import schema as S


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def manifest_fields(manifest: dict, path) -> tuple[S.LabelSpec, int]:
    """The manifest's label spec and seq_len, with every field the reader relies on checked."""
    try:
        labels, tok, seq_len = manifest["labels"], manifest["tokenizer"], manifest["seq_len"]
        spec = S.LabelSpec.from_dict(labels)
        vocab, sha = tok["vocab_size"], tok["sha256"]
    except (KeyError, TypeError) as exc:
        raise PipelineError(f"{path}: manifest field {exc} is missing or malformed; the dataset "
                            "is corrupt - re-download or relabel it") from None
    problem = None
    if spec.mode not in S.MODES:
        problem = f"labels.mode {spec.mode!r} is not one of {list(S.MODES)}"
    elif spec.id_type not in S.ID_TYPES:
        problem = f"labels.id_type {spec.id_type!r} is not one of {sorted(S.ID_TYPES)}"
    elif spec.logprob_encoding not in S.LOGPROB_ENCODINGS:
        problem = (f"labels.logprob_encoding {spec.logprob_encoding!r} is not one of "
                   f"{sorted(S.LOGPROB_ENCODINGS)}")
    elif not _is_int(spec.k) or spec.k < (1 if spec.has_labels else 0):
        problem = f"labels.k {spec.k!r} is not a valid k for mode {spec.mode!r}"
    elif not _is_int(vocab) or vocab < 1 or spec.vocab_size != vocab:
        problem = f"labels.vocab_size {spec.vocab_size!r} != tokenizer.vocab_size {vocab!r}"
    elif not _is_int(seq_len) or seq_len < 1:
        problem = f"seq_len {seq_len!r} must be a positive integer"
    elif not isinstance(sha, str):
        problem = f"tokenizer.sha256 {sha!r} must be a string"
    if problem:
        raise PipelineError(f"{path}: {problem}; the dataset is corrupt - re-download or "
                            "relabel it")
    return spec, seq_len


def shard_entry(entry: dict, split: str, path) -> None:
    """One manifest shard entry: exact types, so `int()` never silently rounds a bad value."""
    ok = (isinstance(entry["path"], str) and isinstance(entry["sha256"], str)
          and _is_int(entry["rows"]) and entry["rows"] >= 0
          and _is_int(entry["bytes"]) and entry["bytes"] >= 0)
    if not ok:
        raise PipelineError(f"{path}: shard entry {entry.get('path')!r} of split {split!r} has a "
                            "malformed path/rows/bytes/sha256; the dataset is corrupt")


def shard_metadata(metadata: dict | None, rel: str, split: str, spec: S.LabelSpec,
                   seq_len: int, tokenizer_sha256: str) -> None:
    """A shard's own key-value metadata (docs/FORMAT.md) must agree with the manifest."""
    meta = {k.decode(errors="replace"): v.decode(errors="replace")
            for k, v in (metadata or {}).items()}
    version = meta.get("softlabels.format_version", "")
    if version.split(".")[0] != str(S.FORMAT_MAJOR):
        raise PipelineError(f"shard {rel}: format_version {version!r} in its metadata is not "
                            f"supported (this reader reads major version {S.FORMAT_MAJOR}); "
                            "upgrade softlabel-pipeline or relabel")
    want = {"mode": spec.mode, "k": str(spec.k), "vocab_size": str(spec.vocab_size),
            "id_type": spec.id_type, "logprob_encoding": spec.logprob_encoding,
            "seq_len": str(seq_len), "tokenizer_sha256": tokenizer_sha256, "split": split}
    for key, value in want.items():
        got = meta.get(f"softlabels.{key}")
        if got != value:
            raise PipelineError(f"shard {rel}: its metadata says {key} = {got!r} but manifest.json "
                                f"says {value!r}; the shard does not belong to this dataset")


def _first_row(bad: torch.Tensor) -> int:
    return int(torch.nonzero(bad.reshape(bad.shape[0], -1).any(dim=1))[0, 0])


def row_lengths(table: pa.Table | pa.RecordBatch, spec: S.LabelSpec, seq_len: int,
                where: str) -> None:
    """Every row holds exactly seq_len positions (x k entries): rows cannot shift into each
    other even when the flat totals add up."""
    widths = {S.COL_INPUT_IDS: seq_len}
    if spec.has_labels:
        widths.update({S.COL_TOPK_IDS: seq_len * spec.k, S.COL_TOPK_LOGPROBS: seq_len * spec.k,
                       S.COL_TAIL: seq_len})
    for name, width in widths.items():
        col = table.column(name)
        if isinstance(col, pa.ChunkedArray):
            col = col.combine_chunks()
        if col.null_count or col.values.null_count:
            raise PipelineError(f"{where}: column {name} holds nulls; the shard is corrupt")
        lengths = np.diff(np.asarray(col.offsets))
        if (bad := lengths != width).any():
            row = int(np.flatnonzero(bad)[0])
            raise PipelineError(f"{where} row {row}: column {name} has {lengths[row]} values, "
                                f"expected {width} (seq_len {seq_len}, k {spec.k})")


def values(batch: dict[str, torch.Tensor], vocab_size: int, where: str) -> None:
    """Decoded tensors: ids in [0, vocab), log-probabilities finite and <= 0, tail in [0, 1]."""
    for name in ("input_ids", "topk_ids"):
        ids = batch.get(name)
        if ids is not None and ids.numel() and (bad := (ids < 0) | (ids >= vocab_size)).any():
            raise PipelineError(f"{where} row {_first_row(bad)}: {name} holds an id outside "
                                f"[0, vocab {vocab_size})")
    lp = batch.get("topk_logprobs")
    if lp is not None and lp.numel():
        if (bad := ~torch.isfinite(lp)).any():
            raise PipelineError(f"{where} row {_first_row(bad)}: non-finite log-probability")
        if (bad := lp > 0).any():
            raise PipelineError(f"{where} row {_first_row(bad)}: positive log-probability")
    tail = batch.get("tail_mass")
    if tail is not None and tail.numel() and (bad := ~((tail >= 0) & (tail <= 1))).any():
        raise PipelineError(f"{where} row {_first_row(bad)}: tail mass outside [0, 1]")
