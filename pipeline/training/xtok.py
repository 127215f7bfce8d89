"""Students with their own tokenizer: checks before any step, and the per-batch re-tokenization.

A cross-tokenizer student (its `tokenizer` differs from the dataset's) reads the same stream as
every other student: in the DataLoader workers each batch of teacher rows also becomes a batch
of student rows (`StudentBatches`, one per distinct student tokenizer and row length), stored
under a prefix so students sharing the read pass each take their own view (`view`). The stored
teacher labels are gathered at the aligned positions and their ids mapped to student ids there,
so the training process does no per-row work. Row cutting, padding and masking:
pipeline/training/alignment.py; the loss: pipeline/training/crosstok.py.
"""

import hashlib
from pathlib import Path

import numpy as np
import torch

from pipeline.errors import ConfigError, PipelineError
from pipeline.io.cache import cache_dir
from pipeline.io.hashing import sha256_file
from pipeline.models.tokenbytes import (
    DATASET_FIX,
    byte_lengths,
    check_all_bytes,
    token_bytes,
    vocab_map,
)
from pipeline.models.tokenizer import load_tokenizer
from pipeline.softlabels.layout import TOKENIZER
from pipeline.training.alignment import StudentRows
from pipeline.training.losses import SHARED_ID_KINDS
from pipeline.training.students import StudentSpec

LABELS = ("topk_ids", "topk_logprobs", "tail_mass")


def is_cross(spec: StudentSpec, dataset_sha256: str, kind: str = "") -> bool:
    """A student reading re-tokenized rows: its tokenizer is not the dataset's, or its loss is
    `crosstok` (then with the dataset's own tokenizer too: the identity re-tokenization)."""
    if kind == "crosstok" and not spec.tokenizer:
        raise ConfigError(f"{spec.path}: [loss] kind \"crosstok\" needs the student's "
                          "tokenizer: add `tokenizer = \"path/to/tokenizer.json\"`")
    return bool(spec.tokenizer) and (kind == "crosstok" or
                                     load_tokenizer(spec.tokenizer).sha256 != dataset_sha256)


def dataset_tokenizer(ds) -> Path:
    """The dataset's tokenizer.json as a local file, checked against the manifest (a remote
    dataset's is downloaded once into the cache, named by its sha256)."""
    cached = cache_dir() / "tokenizers" / f"{ds.tokenizer_sha256}.json"
    tok = ds.store.fetch(TOKENIZER, cached, ds.tokenizer_sha256)
    if not tok.is_file() or sha256_file(tok) != ds.tokenizer_sha256:
        raise PipelineError(f"{ds.store.locate(TOKENIZER)} is missing or differs from the "
                            "manifest's tokenizer sha256; the dataset is incomplete - relabel it")
    return tok


def student_vocab(spec: StudentSpec) -> int:
    return load_tokenizer(spec.tokenizer).vocab_size


def check_student(spec: StudentSpec, ds, teacher_tokenizer: Path) -> None:
    """Refuse, in one line naming the file and the fix, what cross-tokenizer training cannot
    do: a loss that compares ids, labels other than fixed top-k, chat (1.3) data, a tokenizer
    whose bytes cannot be aligned."""
    where = spec.path
    if spec.loss.kind in SHARED_ID_KINDS:
        raise ConfigError(f"{where}: [loss] kind {spec.loss.kind!r} compares token ids, but this "
                          f"student's tokenizer {spec.tokenizer} is not the dataset's; set [loss] "
                          "kind = \"crosstok\" (or \"ce\")")
    if ds.spec.loss_mask:
        raise ConfigError(f"{where}: dataset {ds.root} is chat data (loss_mask, format 1.3); "
                          "cross-tokenizer students need plain packed text - drop `tokenizer`")
    if ds.spec.has_labels and ds.spec.mode != "topk":
        raise ConfigError(f"{where}: cross-tokenizer training needs fixed top-k labels, dataset "
                          f"{ds.root} has mode {ds.spec.mode!r}; relabel with --mode topk")
    student = load_tokenizer(spec.tokenizer)
    token_bytes(load_tokenizer(teacher_tokenizer).tokenizer,
                f"{where}: dataset {ds.root} ({TOKENIZER})", DATASET_FIX)
    token_bytes(student.tokenizer, f"{where} (tokenizer {spec.tokenizer})")
    check_all_bytes(student.tokenizer, f"{where} (tokenizer {spec.tokenizer})")


def row_length(spec: StudentSpec, seq_len: int) -> int:
    return int(spec.model.get("context", seq_len))


def prefix(spec: StudentSpec, seq_len: int) -> str:
    sha = hashlib.sha256(Path(spec.tokenizer).read_bytes()).hexdigest()[:12]
    return f"xt-{sha}-{row_length(spec, seq_len)}/"


class StudentBatches:
    """teacher batch → the same batch plus `prefix` + student keys (picklable)."""

    def __init__(self, spec: StudentSpec, teacher_tokenizer: Path, seq_len: int):
        teacher, student = load_tokenizer(teacher_tokenizer), load_tokenizer(spec.tokenizer)
        t_bytes = token_bytes(teacher.tokenizer, str(teacher_tokenizer))
        s_bytes = token_bytes(student.tokenizer, spec.tokenizer)
        self.prefix = prefix(spec, seq_len)
        self.rows = StudentRows(t_bytes, student.tokenizer, byte_lengths(s_bytes),
                                student.eos_id, row_length(spec, seq_len))
        self.map = vocab_map(t_bytes, s_bytes, teacher.eos_id, student.eos_id)

    def __call__(self, batch: dict) -> dict:
        out = self.rows.rows(batch["input_ids"].numpy())
        if "topk_ids" in batch:
            at = np.maximum(out["kd_pos"], 0)
            rows = np.arange(len(at))[:, None]
            ids = batch["topk_ids"].numpy()[rows, at]
            out["topk_ids"] = self.map[ids]
            out["topk_logprobs"] = batch["topk_logprobs"].numpy()[rows, at]
            out["tail_mass"] = batch["tail_mass"].numpy()[rows, at]
        return {**batch, **{self.prefix + k: torch.from_numpy(np.ascontiguousarray(v))
                            for k, v in out.items()}}


def view(batch: dict, key_prefix: str | None) -> dict:
    """The batch a student trains on: its own prefixed keys, or the teacher rows."""
    if key_prefix is None:
        return {k: v for k, v in batch.items() if not k.startswith("xt-")}
    n = len(key_prefix)
    return {k[n:]: v for k, v in batch.items() if k.startswith(key_prefix)}


def apply_all(transforms, batch: dict) -> dict:
    for t in transforms:
        batch = t(batch)
    return batch


def transforms_for(specs: list[StudentSpec], dataset_sha256: str, teacher_tokenizer: Path,
                   seq_len: int) -> tuple[dict[str, str | None], tuple]:
    """({student name: its key prefix or None}, the distinct StudentBatches the reader runs)."""
    prefixes, transforms = {}, {}
    for spec in specs:
        if not is_cross(spec, dataset_sha256, spec.loss.kind):
            prefixes[spec.name] = None
            continue
        p = prefixes[spec.name] = prefix(spec, seq_len)
        if p not in transforms:
            transforms[p] = StudentBatches(spec, teacher_tokenizer, seq_len)
    return prefixes, tuple(transforms.values())
