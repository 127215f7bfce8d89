"""Distillation losses from stored top-k soft labels, and which of them are exact.

This module owns the loss formulas (the data flow around them: docs/ARCHITECTURE.md).

Notation at one position: the teacher stored a set S of k token ids with log-probabilities
log p_i and the exact tail mass r = 1 - sum_S p_i. The student has logits z over the whole
vocabulary and log-probabilities s = z - logsumexp(z); its tail is q_r = 1 - sum_S e^{s_i}.

- `kl_tail` (default, **exact**): KL between teacher and student both coarsened to the k + 1
  outcomes S ∪ {tail}:  sum_S p_i (log p_i - s_i) + r (log r - log q_r). By the data-processing
  inequality it never exceeds the full-vocabulary KL, and equals it when k = vocab.
- `kl_renorm` (**biased**): KL between p and s each renormalised over S (what axolotl does). It
  ignores how much mass either model puts outside S, so it miscalibrates (arXiv 2503.16870).
- `ce`: hard next-token cross-entropy on the tokens themselves (exact, needs no labels).
- `sampled` (for `sampled` labels, pipeline/labeling/modes.py): −Σ_j w_j s_j over the stored draws
  with their importance weights; an **unbiased** estimate of the teacher cross-entropy
  −Σ_v p_v s_v = H(p) + KL(p || q) (so it is offset from kl_tail by the teacher entropy).
  Temperature does not apply to it.
- Mix: alpha * KD + (1 - alpha) * CE.

Temperature tau "scales within S": both coarsened distributions keep their S-vs-tail split
(p(S) = 1 - r, q(S) = 1 - q_r) and only their conditionals over S are tempered,
p_S ∝ p_i^(1/tau) and q_S ∝ e^(s_i/tau). The tail's inside is unknown, so tempering it would be
a guess. Because KL over S ∪ {tail} splits exactly into a binary part and a conditional part,

    kl_tail_tau = KL_bin(1 - r || 1 - q_r) + (1 - r) * tau^2 * KL(p_S^tau || q_S^tau)

with Hinton's tau^2 on the tempered part only (it keeps gradient size independent of tau; the
binary part is untempered). At tau = 1 this is exactly the kl_tail formula above. `kl_renorm`
at tau is tau^2 * KL(p_S^tau || q_S^tau). The teacher's stored log-probabilities are
renormalised to mass 1 - r inside S, so fp16 rounding of stored values never makes p a
non-distribution.

Memory: every loss needs only the student's log-probabilities gathered at S and at the next
token. `compute_loss` takes them from full logits (one logsumexp, then a gather: the reference);
training takes them from `pipeline.training.chunked`, which never holds more than one chunk of
positions' logits, and both meet in `loss_from_gathered`.

For other stages (evaluate's fidelity metric): `tail_kl_per_position(student_logprobs_full,
topk_ids, topk_logprobs, tail)` is the exact coarsened KL per position from a full student
log-softmax, with no temperature.
"""

from dataclasses import dataclass

import torch

from pipeline.config.fields import Range, opt
from pipeline.softlabels.ragged import PAD_LOGPROB

KINDS = ("kl_tail", "kl_renorm", "ce", "sampled")
KD_KINDS = ("kl_tail", "kl_renorm", "sampled")
# Smallest student tail mass we take a log of: keeps log q_r (and its gradient) finite when the
# student puts all its mass inside S (k = vocab, or a confident student). Error <= r * 14.
MIN_STUDENT_TAIL = 1e-6
_MAX_LOG_S_MASS = float(torch.log1p(torch.tensor(-MIN_STUDENT_TAIL, dtype=torch.float64)))


@dataclass(frozen=True)
class LossSpec:
    """A student file's [loss]: loss = alpha·KD + (1 − alpha)·CE (`kind` checked by students.py,
    whose message lists the losses)."""

    kind: str = opt("kl_tail", help="kl_tail, kl_renorm, ce or sampled")
    alpha: float = opt(0.5, help="weight of the KD term", check=Range(0, 1))
    temperature: float = opt(1.0, help="KD temperature", check=Range(0.01, 100))

    @property
    def uses_labels(self) -> bool:
        return self.kind in KD_KINDS


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - e^x) for x <= 0 without cancellation (Mächler 2012)."""
    return torch.where(x > -0.6931471805599453, torch.log(-torch.expm1(x)),
                       torch.log1p(-torch.exp(x)))


def _conditional_kl(teacher_lp: torch.Tensor, student_s: torch.Tensor,
                    temperature: float) -> torch.Tensor:
    """KL(softmax(teacher_lp/tau) || softmax(student_s/tau)) over the last (k) axis."""
    log_p = torch.log_softmax(teacher_lp / temperature, dim=-1)
    log_q = torch.log_softmax(student_s / temperature, dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def kl_tail_from_gathered(student_s: torch.Tensor, topk_logprobs: torch.Tensor,
                          tail: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Exact KL over S ∪ {tail} per position, from the student's log-probs gathered at S.

    student_s, topk_logprobs: [..., k]; tail: [...]. Returns [...] (float32).
    """
    student_s, topk_logprobs = student_s.float(), topk_logprobs.float()
    r = tail.float().clamp(0.0, 1.0)
    p_in = 1.0 - r
    log_q_in = torch.logsumexp(student_s, dim=-1).clamp(max=_MAX_LOG_S_MASS)
    log_q_tail = _log1mexp(log_q_in)
    binary = (torch.xlogy(p_in, p_in) - p_in * log_q_in) + (torch.xlogy(r, r) - r * log_q_tail)
    cond = _conditional_kl(topk_logprobs, student_s, temperature)
    return binary + p_in * (temperature ** 2) * cond


def kl_renorm_from_gathered(student_s: torch.Tensor, topk_logprobs: torch.Tensor,
                            temperature: float = 1.0) -> torch.Tensor:
    """Biased: KL between teacher and student each renormalised over S. Returns [...]."""
    return (temperature ** 2) * _conditional_kl(topk_logprobs.float(), student_s.float(),
                                                temperature)


def tail_kl_per_position(student_logprobs_full: torch.Tensor, topk_ids: torch.Tensor,
                         topk_logprobs: torch.Tensor, tail: torch.Tensor) -> torch.Tensor:
    """Exact KL(teacher || student) over S ∪ {tail} per position, temperature 1.

    student_logprobs_full: [..., V] log-softmax of the student; topk_ids/topk_logprobs: [..., k];
    tail: [...]. Returns [...]. Used by evaluate as the fidelity metric.
    """
    s = torch.gather(student_logprobs_full, -1, topk_ids.long())
    return kl_tail_from_gathered(s, topk_logprobs, tail)


def _student_logprobs_at(logits: torch.Tensor, lse: torch.Tensor,
                         ids: torch.Tensor) -> torch.Tensor:
    return torch.gather(logits, -1, ids.long()) - lse.unsqueeze(-1)


def compute_loss(logits: torch.Tensor, batch: dict[str, torch.Tensor],
                 spec: LossSpec) -> dict[str, torch.Tensor]:
    """Training loss for one batch: {"loss": total, "kd": ..., "ce": ...} (scalars).

    logits: [B, L, V] student output for batch["input_ids"] [B, L]. KD kinds also need
    batch["topk_ids"] [B, L, k], batch["topk_logprobs"] [B, L, k], batch["tail_mass"] [B, L].
    CE uses positions 0..L-2 (the last position has no in-row target); KD uses all L.
    The full-logit reference; training applies the head per chunk of positions instead
    (pipeline/training/chunked.py) and meets here in `loss_from_gathered`.
    """
    logits = logits.float()
    lse = torch.logsumexp(logits, dim=-1)  # [B, L]: the one pass over the vocabulary
    input_ids = batch["input_ids"]
    targets = input_ids[:, 1:].unsqueeze(-1)
    s_target = _student_logprobs_at(logits[:, :-1], lse[:, :-1], targets).squeeze(-1)
    s = None
    if spec.kind in KD_KINDS:
        s = _student_logprobs_at(logits, lse, batch["topk_ids"])
    return loss_from_gathered(s, s_target, batch, spec)


def loss_from_gathered(s: torch.Tensor | None, s_target: torch.Tensor,
                       batch: dict[str, torch.Tensor], spec: LossSpec) -> dict[str, torch.Tensor]:
    """The loss parts from the student's log-probabilities at the stored ids, s [B, L, k] (None
    for `ce`), and at the next token, s_target [B, L-1] (or [B, L]: the last is ignored).
    With a 1.3 `loss_mask` only its positions count (`masked_loss`)."""
    length = batch["input_ids"].shape[1]
    if "loss_mask" in batch:
        mask = batch["loss_mask"]
        if s_target.shape[1] < length:
            s_target = torch.nn.functional.pad(s_target, (0, length - s_target.shape[1]))
        labels = {k: v[mask] for k, v in batch.items() if k in LABEL_KEYS}
        return masked_loss(None if s is None else s[mask], s_target[mask], labels,
                           has_target(mask)[mask], spec)
    ce = (-s_target[:, :length - 1]).mean()
    out = {"ce": ce}
    if spec.kind == "ce":
        out["loss"] = ce
        return out
    out["kd"] = _kd_per_position(s, batch, spec).mean()
    out["loss"] = spec.alpha * out["kd"] + (1.0 - spec.alpha) * ce
    return out


LABEL_KEYS = ("topk_ids", "topk_logprobs", "tail_mass", "label_mask", "sample_weights")


def has_target(mask: torch.Tensor) -> torch.Tensor:
    """[B, L] positions whose next token is in the row (all but the last): where CE applies."""
    out = torch.ones_like(mask, dtype=torch.bool)
    out[:, -1] = False
    return out


def _mean(x: torch.Tensor) -> torch.Tensor:
    """Mean that is 0 (with a gradient) over no positions: a batch may hold no trained one."""
    return x.sum() / max(x.numel(), 1)


def masked_loss(s: torch.Tensor | None, s_target: torch.Tensor, labels: dict[str, torch.Tensor],
                ce_ok: torch.Tensor, spec: LossSpec) -> dict[str, torch.Tensor]:
    """The loss parts over the trained positions only, flat: s [N, k], s_target [N], labels
    [N, ...], ce_ok [N] (the next token is in the row). Positions outside the mask store no
    labels (format 1.3), so they take no part in either term."""
    ce = _mean(-s_target[ce_ok])
    out = {"ce": ce}
    if spec.kind == "ce":
        out["loss"] = ce
        return out
    out["kd"] = _mean(_kd_per_position(s, labels, spec))
    out["loss"] = spec.alpha * out["kd"] + (1.0 - spec.alpha) * ce
    return out


def _kd_per_position(s: torch.Tensor, batch: dict[str, torch.Tensor],
                     spec: LossSpec) -> torch.Tensor:
    """The KD term at every position of s [..., k] (its labels in `batch`, same leading shape)."""
    if spec.kind not in KD_KINDS:
        raise ValueError(f"unknown loss kind {spec.kind!r}: valid are {KINDS}")
    if "label_mask" in batch:  # variable-length labels (topp, sampled): padding counts as p = 0
        s = s.masked_fill(~batch["label_mask"], PAD_LOGPROB)
    if spec.kind == "sampled":
        return -(batch["sample_weights"] * s).sum(-1)
    if spec.kind == "kl_tail":
        return kl_tail_from_gathered(s, batch["topk_logprobs"], batch["tail_mass"],
                                     spec.temperature)
    return kl_renorm_from_gathered(s, batch["topk_logprobs"], spec.temperature)
