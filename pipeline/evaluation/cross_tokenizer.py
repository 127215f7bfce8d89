"""Evaluating a model that reads its own tokenizer on a dataset labeled with another one.

Per-token cross-entropy does not compare between tokenizers (a token is a different amount of
text), bits per byte does, so the model is scored on its own re-tokenization of the very
validation rows every other model reads (pipeline/training/alignment.py, as in training):

- **bits per byte over the same bytes**: a teacher-tokenizer model predicts the bytes from the
  end of a row's first token to the row's end (its first token is context only). The
  re-tokenized model predicts the same span: its target j+1 is scored iff position j ends at or
  after that first teacher token's end; each target counts its own bytes (EOS as one virtual
  byte, as for the teacher's tokens). Two small differences remain and are not hidden: a
  student token that straddles the span's start is context, not scored, and a row that ends
  inside a UTF-8 character drops those bytes (alignment.py); the row is never cut where the
  model has no context limit, and is cut at its `context` tokens otherwise. Each row of the
  report says how many bytes it scored (`bytes`).
- **fidelity on aligned positions**: where the student's token ends on a teacher token
  boundary (`kd_pos`), the teacher's stored top-k, its ids mapped to student ids spelled by the
  same bytes (tokenbytes.vocab_map). Approximate, like the crosstok loss (training/crosstok.py):
  a teacher id without a student id is tail mass (it still counts in the KL's rest bucket) and,
  as the teacher's top-1, a disagreement; "next token w" differs between tokenizers that split
  the continuation differently.
- **aligned share**: aligned student positions ÷ the student's real (non-padding) positions.
"""

import numpy as np
import torch
from tokenizers import Tokenizer

from pipeline.errors import PipelineError
from pipeline.evaluation.metrics import MetricSums
from pipeline.models.head import logit_chunks
from pipeline.models.loaded import LoadedModel
from pipeline.models.tokenbytes import byte_lengths, check_all_bytes, token_bytes, vocab_map
from pipeline.models.tokenizer import LoadedTokenizer
from pipeline.softlabels.ragged import PAD_LOGPROB
from pipeline.training.alignment import StudentRows

LABEL_KEYS = ("topk_ids", "topk_logprobs", "tail_mass", "label_mask")


def check_cross_model(m: LoadedModel, ds, dataset_tokenizer: Tokenizer, what: str) -> None:
    """Refuse, in one line naming the file and the fix, a model with its own tokenizer that
    cannot be scored on these rows."""
    where = f"{what} {m.path}"
    if ds.spec.loss_mask:
        raise PipelineError(f"{where}: its tokenizer is not the dataset's and {ds.root} is chat "
                            "data (loss_mask, format 1.3), which is not re-tokenized; evaluate "
                            "it on a dataset labeled with its tokenizer")
    if ds.spec.has_labels and ds.spec.mode != "topk":
        raise PipelineError(f"{where}: its tokenizer is not the dataset's, and fidelity across "
                            f"tokenizers needs fixed top-k labels; {ds.root} has mode "
                            f"{ds.spec.mode!r}: relabel with --mode topk")
    token_bytes(dataset_tokenizer, f"{where}: dataset {ds.root} (tokenizer.json)",
                "evaluate it on a dataset labeled with its tokenizer")
    tok = f"{where} (tokenizer {m.tokenizer.path})"
    token_bytes(m.tokenizer.tokenizer, tok)
    check_all_bytes(m.tokenizer.tokenizer, tok)


class CrossTokenizerSums(MetricSums):
    """MetricSums of a model with its own tokenizer, fed teacher-tokenized batches."""

    def __init__(self, model_tokenizer: LoadedTokenizer, dataset_tokenizer: LoadedTokenizer,
                 context: int | None):
        self._args = (model_tokenizer, dataset_tokenizer, context)
        t_bytes = token_bytes(dataset_tokenizer.tokenizer, str(dataset_tokenizer.path))
        s_bytes = token_bytes(model_tokenizer.tokenizer, str(model_tokenizer.path))
        s_len = byte_lengths(s_bytes)
        super().__init__(byte_len=torch.from_numpy(s_len))
        self.first_len = byte_lengths(t_bytes)
        self.context = context
        self.map = vocab_map(t_bytes, s_bytes, dataset_tokenizer.eos_id, model_tokenizer.eos_id)
        self._rows_args = (t_bytes, model_tokenizer.tokenizer, s_len, model_tokenizer.eos_id)
        self.aligned = 0
        self.student_positions = 0

    def student_batch(self, batch: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        """The student's rows [B, n] for teacher rows, with the scored and aligned masks and
        the teacher's labels gathered at the aligned positions, ids mapped."""
        ids = batch["input_ids"].cpu().numpy()
        # no context limit: room for one student token per coordinate of the longest row
        length = self.context or int(self.first_len.max()) * ids.shape[1]
        out = StudentRows(*self._rows_args, length).rows(ids, with_ends=True)
        real = out["ends"] >= 0
        n = int(real.sum(1).max())
        out = {k: v[:, :n] for k, v in out.items()}
        start = self.first_len[ids[:, 0]]  # where the teacher's scored bytes begin
        s = {"input_ids": out["input_ids"], "real": real[:, :n],
             "scored": out["ce_mask"] & (out["ends"] >= start[:, None]),
             "aligned": out["kd_pos"] >= 0}
        if "topk_ids" in batch:
            s.update(self._mapped_labels(batch, out["kd_pos"]))
        return s

    def _mapped_labels(self, batch, kd_pos: np.ndarray) -> dict[str, np.ndarray]:
        """Teacher labels at each student position's aligned teacher position, ids mapped; an
        unmapped id becomes a padded entry (p = 0) whose mass moves into the tail."""
        rows, at = np.arange(len(kd_pos))[:, None], np.maximum(kd_pos, 0)
        mapped = self.map[batch["topk_ids"].cpu().numpy()[rows, at]]
        logprobs = batch["topk_logprobs"].cpu().numpy()[rows, at].astype(np.float32)
        tail = batch["tail_mass"].cpu().numpy()[rows, at].astype(np.float32)
        unmapped = mapped < 0
        tail = np.clip(tail + (np.exp(logprobs) * unmapped).sum(-1), 0.0, 1.0)
        return {"topk_ids": np.where(unmapped, 0, mapped), "tail_mass": tail,
                "topk_logprobs": np.where(unmapped, PAD_LOGPROB, logprobs),
                "label_mask": ~unmapped}

    @torch.inference_mode()
    def add_model_batch(self, model: torch.nn.Module, batch: dict[str, torch.Tensor],
                        device: torch.device) -> None:
        """Score one teacher-tokenized batch with the model on its own tokenization."""
        s = self.student_batch(batch)
        ids = torch.from_numpy(s["input_ids"]).to(device)
        part = {"target": torch.nn.functional.pad(ids[:, 1:], (0, 1)).reshape(-1),
                "has_target": torch.from_numpy(s["scored"]).to(device).reshape(-1)}
        if "topk_ids" in s:
            part["trained"] = torch.from_numpy(s["aligned"]).to(device).reshape(-1)
            for key in LABEL_KEYS:
                value = torch.from_numpy(np.ascontiguousarray(s[key])).to(device)
                part[key] = value.reshape(-1, *value.shape[2:])
        for lo, hi, logits in logit_chunks(model, ids):
            self._add_chunk(logits.float(), {k: v[lo:hi] for k, v in part.items()})
        self.positions += int(s["scored"].sum())
        self.aligned += int(s["aligned"].sum())
        self.student_positions += int(s["real"].sum())
        if "topk_ids" in s:
            self.fid_positions += int(s["aligned"].sum())

    def fresh(self) -> "CrossTokenizerSums":
        return CrossTokenizerSums(*self._args)

    def result(self) -> dict:
        out = super().result()
        out["aligned_share"] = (self.aligned / self.student_positions
                                if self.student_positions else None)
        return out


def model_context(m: LoadedModel) -> int | None:
    """The longest row the model can read (a GPT's positions); None: no limit (GRU)."""
    return m.config.get("context")


def is_cross(m: LoadedModel, dataset_sha256: str) -> bool:
    return m.tokenizer.sha256 != dataset_sha256


def fresh_sums(m: LoadedModel, dataset_tokenizer: LoadedTokenizer | None,
               byte_table: torch.Tensor | None) -> MetricSums:
    """Empty sums for one model: cross-tokenizer ones when it reads its own tokenizer."""
    if dataset_tokenizer is not None and is_cross(m, dataset_tokenizer.sha256):
        return CrossTokenizerSums(m.tokenizer, dataset_tokenizer, model_context(m))
    return MetricSums(byte_len=byte_table)


def add_batch(sums: MetricSums, m: LoadedModel, batch: dict, is_teacher: bool,
              device: torch.device) -> None:
    """One batch into a model's sums, on its own tokenization where it has one."""
    if isinstance(sums, CrossTokenizerSums):
        sums.add_model_batch(m.model, batch, device)
    else:
        sums.add_chunks(logit_chunks(m.model, batch["input_ids"],
                                     segment_ids=batch.get("segment_ids")), batch,
                        is_teacher=is_teacher)

