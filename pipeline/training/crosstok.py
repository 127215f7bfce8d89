"""The cross-tokenizer loss: a student with its own tokenizer learns from stored teacher labels.

At a student position j aligned to teacher position t (pipeline/training/alignment.py: both
have read the same bytes), the teacher stored top-k ids S with log-probs log p_i and tail mass
r. Each teacher id spelled by bytes the student vocabulary also has maps to that student id
(M ⊆ S, mapped ids m(i)); the rest of S is the unmapped mass u = Σ_{S∖M} p_i. With the student's
log-probs s over its own vocabulary:

- KL (direct): the teacher coarsened to M ∪ {rest} with rest = r + u, the student to the mapped
  ids ∪ {its mass elsewhere}: `kl_tail` with S := M and r := r + u. Exact as a KL between the
  two coarsened distributions; **approximate** as distillation, because "the next teacher token
  is w" and "the next student token is w" are different events when the tokenizers split the
  continuation differently (the student may spell w as a prefix of a longer token).
  Tail and unmapped mass are kept as explicit teacher buckets (the `unmapped` metric reports u);
  the student has no split of its rest between them, so both are compared to its one rest mass.
- ULD (vocabulary-free, Boizard et al. 2024): Σ_i |p_(i) − q_(i)| over the sorted teacher top-k
  and the sorted student top-k, plus |r − (1 − Σ q_(i))| for the tails. **Approximate**: the
  teacher's tail is one bucket, its inside unknown.
- CE: the student's own next-token cross-entropy on its re-tokenized row (exact).

loss = alpha · (KL + uld_weight · ULD) + (1 − alpha) · CE, KL and ULD averaged over aligned
positions, CE over positions with a next token; positions with no shared boundary get CE only.
With identical vocabularies (M = S, u = 0), identity alignment and uld_weight = 0 this is
`kl_tail` (tests/pipeline/test_crosstok_loss.py checks it against the dense reference).
"""

import torch

from pipeline.softlabels.ragged import PAD_LOGPROB
from pipeline.training.losses import LossSpec, kl_tail_from_gathered

KEYS = ("input_ids", "ce_mask", "kd_pos", "topk_ids", "topk_logprobs", "tail_mass")


def _mean(x: torch.Tensor) -> torch.Tensor:
    return x.sum() / max(x.numel(), 1)


def mapped_kl(lp: torch.Tensor, ids: torch.Tensor, t_lp: torch.Tensor, tail: torch.Tensor,
              temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(KL over M ∪ {rest}, unmapped mass u) per position; lp [N, V] student log-probs, ids
    [N, k] student ids or -1, t_lp [N, k] teacher log-probs, tail [N]."""
    unmapped = ids < 0
    s = torch.gather(lp, -1, ids.clamp(min=0)).masked_fill(unmapped, PAD_LOGPROB)
    u = (t_lp.float().exp() * unmapped).sum(-1)
    t = t_lp.float().masked_fill(unmapped, PAD_LOGPROB)
    rest = (tail.float() + u).clamp(0.0, 1.0)
    return kl_tail_from_gathered(s, t, rest, temperature), u


def uld(lp: torch.Tensor, t_lp: torch.Tensor, tail: torch.Tensor) -> torch.Tensor:
    """Σ |sorted teacher top-k − sorted student top-k| + |teacher tail − student tail|, [N]."""
    k = t_lp.shape[-1]
    p = torch.sort(t_lp.float().exp(), dim=-1, descending=True).values
    q = torch.topk(lp, k, dim=-1).values.exp()
    q_tail = (1.0 - q.sum(-1)).clamp(min=0.0)
    return (p - q).abs().sum(-1) + (tail.float() - q_tail).abs()


def crosstok_loss(logits: torch.Tensor, batch: dict[str, torch.Tensor],
                  spec: LossSpec) -> dict[str, torch.Tensor]:
    """Loss parts {"loss", "ce", "kd", "uld", "aligned", "unmapped"} from student logits
    [B, L, V] and the student's batch (alignment.StudentRows keys plus mapped labels)."""
    lp = torch.log_softmax(logits.float(), dim=-1)
    ids = batch["input_ids"]
    target = torch.gather(lp[:, :-1], -1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    ce = _mean(-target[batch["ce_mask"][:, :-1]])
    out = {"ce": ce}
    if spec.kind == "ce":
        out["loss"] = ce
        return out
    at = batch["kd_pos"] >= 0
    lp_at = lp[at]
    kl, u = mapped_kl(lp_at, batch["topk_ids"][at], batch["topk_logprobs"][at],
                      batch["tail_mass"][at], spec.temperature)
    out["kd"] = _mean(kl)
    out["uld"] = _mean(uld(lp_at, batch["topk_logprobs"][at], batch["tail_mass"][at]))
    out["aligned"] = at.sum() / max(int(batch["ce_mask"].sum()) + len(ids), 1)
    out["unmapped"] = _mean(u).detach()
    kd = out["kd"] + spec.uld_weight * out["uld"]
    out["loss"] = spec.alpha * kd + (1.0 - spec.alpha) * ce
    return out
