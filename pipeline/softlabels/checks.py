"""Cheap checks every reader runs on a dataset it did not make.

Teams train on datasets other teams labeled, so manifest.json and every shard are untrusted: a
matching sha256 only proves a shard is the file the manifest lists, not that the manifest or its
writer were right. These checks turn anything malformed into one PipelineError naming the field
or shard (and row) — instead of a KeyError, a reshape error, an out-of-range embedding lookup or
a NaN loss many steps later. They are vectorised: a few reductions per row group, no per-row
Python, so the trainer can afford them on every batch it decodes.
"""

import math

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
    else:
        problem = mode_fields(spec)
    if problem:
        raise PipelineError(f"{path}: {problem}; the dataset is corrupt - re-download or "
                            "relabel it")
    return spec, seq_len


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def mode_fields(spec: S.LabelSpec) -> str | None:
    """The 1.1/1.2 fields (top-p, sampled, u8, id_encoding): present exactly when used, typed
    and in range."""
    want = set()
    if spec.logprob_encoding == "u8":
        want.add("logprob_u8_min")
        if not (_is_num(spec.logprob_u8_min) and spec.logprob_u8_min < 0):
            return f"labels.logprob_u8_min {spec.logprob_u8_min!r} must be a number < 0"
    if spec.id_encoding is not None:
        want.add("id_encoding")
        if spec.id_encoding != "sorted_delta" or not spec.has_labels:
            return (f"labels.id_encoding {spec.id_encoding!r} must be 'sorted_delta' (format "
                    "1.2, labeled datasets only) or absent (ids in rank order)")
    if spec.variable and not spec.k <= min(spec.vocab_size, np.iinfo(np.uint16).max):
        return f"labels.k {spec.k} exceeds the vocabulary (or 65535) for mode {spec.mode!r}"
    if spec.mode == "topp":
        want |= {"top_p", "min_k"}
        if not (_is_num(spec.top_p) and 0 < spec.top_p <= 1):
            return f"labels.top_p {spec.top_p!r} must be in (0, 1]"
        if not (_is_int(spec.min_k) and 1 <= spec.min_k <= spec.k):
            return f"labels.min_k {spec.min_k!r} must be an integer in [1, k = {spec.k}]"
    if spec.mode == "sampled":
        want |= {"samples", "proposal_temperature", "seed"}
        if not (_is_int(spec.samples) and 1 <= spec.samples <= np.iinfo(np.uint16).max
                and spec.k == min(spec.samples, spec.vocab_size)):
            return (f"labels.samples {spec.samples!r} must be an integer in [1, 65535] with "
                    f"k = min(samples, vocab_size) (k is {spec.k!r})")
        if not (_is_num(spec.proposal_temperature) and spec.proposal_temperature > 0):
            return f"labels.proposal_temperature {spec.proposal_temperature!r} must be > 0"
        if not (_is_int(spec.seed) and spec.seed >= 0):
            return f"labels.seed {spec.seed!r} must be an integer >= 0"
    for name in ("loss_mask", "segments"):  # 1.3
        value = getattr(spec, name)
        if value is not None:
            want.add(name)
            if value is not True:
                return f"labels.{name} {value!r} must be true (format 1.3) or absent"
    if extra := sorted(set(spec.extras()) - want):
        return f"labels.{extra[0]} does not belong to mode {spec.mode!r} / {spec.logprob_encoding}"
    return None


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
            "seq_len": str(seq_len), "tokenizer_sha256": tokenizer_sha256, "split": split,
            **{k: str(v) for k, v in spec.extras().items()}}  # 1.1 fields, when used
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
    mask = _format13_columns(table, spec, seq_len, where)
    if spec.variable:
        return _variable_lengths(table, spec, seq_len, where, mask)
    if spec.has_labels:
        widths.update({spec.ids_column: seq_len * spec.k, spec.logprobs_column: seq_len * spec.k,
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


def _lengths(table, name: str, where: str) -> tuple[pa.ListArray, np.ndarray]:
    col = table.column(name)
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if col.null_count or col.values.null_count:
        raise PipelineError(f"{where}: column {name} holds nulls; the shard is corrupt")
    return col, np.diff(np.asarray(col.offsets))


def _format13_columns(table, spec: S.LabelSpec, seq_len: int, where: str) -> np.ndarray | None:
    """1.3: loss_mask and segment_ids hold seq_len values a row; segment ids are >= 0 and
    padding (0) is never trained on. Returns the flat loss mask (None without one)."""
    mask = None
    for name, present in ((S.COL_LOSS_MASK, spec.loss_mask), (S.COL_SEGMENTS, spec.segments)):
        if not present:
            continue
        col, lengths = _lengths(table, name, where)
        if (bad := lengths != seq_len).any():
            row = int(np.flatnonzero(bad)[0])
            raise PipelineError(f"{where} row {row}: column {name} has {lengths[row]} values, "
                                f"expected seq_len {seq_len}")
        values = col.flatten().to_numpy(zero_copy_only=False)
        if name == S.COL_LOSS_MASK:
            mask = values.astype(bool)
        elif (bad := (values < 0) | ((values == 0) & (mask if mask is not None else False))).any():
            raise PipelineError(f"{where} row {int(np.flatnonzero(bad)[0]) // seq_len}: "
                                f"{name} negative, or padding (0) inside the loss mask")
        else:
            _segment_order(values.reshape(-1, seq_len), mask, where)
    return mask


def _segment_order(seg: np.ndarray, mask: np.ndarray | None, where: str) -> None:
    """[rows, seq_len] segment ids number a row's samples 1, 2, ... in order, contiguous, with
    padding (0) only after the last one; a sample's last position is never trained (its next
    token is another sample's, or padding). Otherwise a sample could attend to, or be trained
    on, another one's tokens, which is what the column exists to prevent."""
    prev, nxt = seg[:, :-1], seg[:, 1:]
    step = nxt - prev
    problems = (
        (seg[:, 0] != 1, "does not start at 1"),
        (((prev == 0) & (nxt != 0)).any(axis=1), "has padding (0) before a sample"),
        (((nxt != 0) & (step < 0)).any(axis=1), "decreases (a sample number goes back)"),
        (((nxt != 0) & (step > 1)).any(axis=1), "skips a sample number"))
    for bad, say in problems:
        if bad.any():
            raise PipelineError(f"{where} row {int(np.flatnonzero(bad)[0])}: {S.COL_SEGMENTS} "
                                f"{say}; samples are numbered 1, 2, ... then padding (0)")
    if mask is not None:
        last = np.concatenate([step != 0, np.ones((seg.shape[0], 1), bool)], axis=1) & (seg != 0)
        if (bad := last & mask.reshape(seg.shape)).any():
            raise PipelineError(f"{where} row {int(np.flatnonzero(bad.any(axis=1))[0])}: "
                                f"{S.COL_LOSS_MASK} is true on a sample's last position (its "
                                "next token belongs to another sample or is padding)")


def schema_difference(got: pa.Schema, want: pa.Schema) -> str:
    """The columns a shard lacks, has in excess or types differently: names the 1.3 column a
    manifest claims (or omits) instead of printing two schemas."""
    names, wanted = set(got.names), set(want.names)
    if missing := sorted(wanted - names):
        return f"missing column {', '.join(missing)}"
    if extra := sorted(names - wanted):
        return f"column {', '.join(extra)} not in the manifest's labels"
    typed = [n for n in want.names if got.field(n).type != want.field(n).type]
    return f"column {typed[0]} has type {got.field(typed[0]).type}" if typed else "column order"


def _variable_lengths(table, spec: S.LabelSpec, seq_len: int, where: str,
                      mask: np.ndarray | None = None) -> None:
    """1.1 topp/sampled: seq_len per-position columns; label_counts in [1, k]; each entry
    column holds, per row, exactly the sum of that row's counts. 1.3 masked: 0 outside the
    loss mask, and exactly k inside it for top-k."""
    per_position = [S.COL_INPUT_IDS, S.COL_TAIL, S.COL_COUNTS]
    per_entry = [spec.ids_column, spec.logprobs_column]
    per_position += [S.COL_LOG_NORM] if spec.tempered else []
    per_entry += [spec.sample_counts_column] if spec.mode == "sampled" else []
    for name in per_position:
        _, lengths = _lengths(table, name, where)
        if (bad := lengths != seq_len).any():
            row = int(np.flatnonzero(bad)[0])
            raise PipelineError(f"{where} row {row}: column {name} has {lengths[row]} values, "
                                f"expected seq_len {seq_len}")
    col, _ = _lengths(table, S.COL_COUNTS, where)
    counts = col.flatten().to_numpy(zero_copy_only=False).astype(np.int64)
    lo = 1 if spec.mode in S.VARIABLE_MODES else spec.k
    if mask is None:
        bad, say = (counts < lo) | (counts > spec.k), f"outside [1, k = {spec.k}]"
    else:
        bad = np.where(mask, (counts < lo) | (counts > spec.k), counts != 0)
        say = f"not 0 outside the loss mask and in [{lo}, k = {spec.k}] inside it"
    if bad.any():
        raise PipelineError(f"{where} row {int(np.flatnonzero(bad)[0]) // seq_len}: "
                            f"{S.COL_COUNTS} {say}")
    want = counts.reshape(-1, seq_len).sum(axis=1)
    for name in per_entry:
        _, lengths = _lengths(table, name, where)
        if (bad := lengths != want).any():
            row = int(np.flatnonzero(bad)[0])
            raise PipelineError(f"{where} row {row}: column {name} has {lengths[row]} values, "
                                f"its {S.COL_COUNTS} sum to {want[row]}")


def _within(t: torch.Tensor, lo: float, hi: float) -> bool:
    """All of `t` in [lo, hi], in one reduction pass (aminmax propagates NaN, which fails). The
    reader calls this on every row group it streams, so the common case must be cheap; the
    elementwise masks below only run to name the first bad row."""
    if not t.numel():
        return True
    mn, mx = torch.aminmax(t)
    return bool(mn >= lo) and bool(mx <= hi)


def values(batch: dict[str, torch.Tensor], vocab_size: int, where: str) -> None:
    """Decoded tensors: ids in [0, vocab), log-probabilities finite and <= 0, tail in [0, 1]."""
    for name in ("input_ids", "topk_ids"):
        ids = batch.get(name)
        if ids is not None and not _within(ids, 0, vocab_size - 1):
            bad = (ids < 0) | (ids >= vocab_size)
            raise PipelineError(f"{where} row {_first_row(bad)}: {name} holds an id outside "
                                f"[0, vocab {vocab_size})")
    lp = batch.get("topk_logprobs")
    if lp is not None and not _within(lp, -torch.finfo(lp.dtype).max, 0.0):
        if (bad := ~torch.isfinite(lp)).any():
            raise PipelineError(f"{where} row {_first_row(bad)}: non-finite log-probability")
        raise PipelineError(f"{where} row {_first_row(lp > 0)}: positive log-probability")
    tail = batch.get("tail_mass")
    if tail is not None and not _within(tail, 0.0, 1.0):
        bad = ~((tail >= 0) & (tail <= 1))
        raise PipelineError(f"{where} row {_first_row(bad)}: tail mass outside [0, 1]")
    w = batch.get("sample_weights")
    if w is not None and not _within(w, 0.0, torch.finfo(w.dtype).max):
        bad = ~(torch.isfinite(w) & (w >= 0))
        raise PipelineError(f"{where} row {_first_row(bad)}: sample weight not finite and >= 0")
