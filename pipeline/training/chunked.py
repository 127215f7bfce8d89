"""The training loss without [batch, seq, vocab] logits: the head runs one chunk of positions at a
time inside a custom autograd function, and the losses see only gathered log-probabilities.

Why: every loss (`kl_tail`, `kl_renorm`, `sampled`, CE, pipeline/training/losses.py) needs, per
position, only the student's log-probabilities at a few ids — the stored ids S and the next
token — s_j = z[id_j] − logsumexp(z). At a 152k vocabulary the full logits of a 16 × 128 batch
are 1.2 GB in fp32, and autograd keeps several such tensors; here the peak is about one fp32
chunk of logits (`chunk_positions()` × V, default 1,024 × V), whatever the batch.

`GatheredLogProbs` computes z = head(h) per chunk in fp32 and keeps only h, the ids and the
logsumexp. Backward recomputes each chunk's logits, turns them into softmax p in place and forms
grad_z = scatter_add(ids, grad_s) − p · Σ_j grad_s in the same buffer (times the soft-cap's
tanh′ = 1 − tanh² when the head has one), then grad_h = grad_z @ W, grad_W += grad_zᵀ @ h and
grad_b += Σ grad_z. Tested against `compute_loss` on full logits for every loss kind and model
family (tests/pipeline/test_chunked.py).
"""

import torch
import torch.nn.functional as F

from pipeline.device import autocast
from pipeline.models.head import CHUNK_POSITIONS, Head, chunk_positions, split_model
from pipeline.training.losses import (
    KD_KINDS,
    LABEL_KEYS,
    LossSpec,
    compute_loss,
    has_target,
    loss_from_gathered,
    masked_loss,
)

SOFTCAP_ROWS = 128  # rows per temporary in the soft-capped backward (one [rows, V] buffer)


def _chunk_logits(h: torch.Tensor, weight: torch.Tensor, bias, scale: float) -> torch.Tensor:
    """fp32 [n, V] pre-soft-cap logits u = scale · (h Wᵀ + b) of one chunk (a fresh buffer)."""
    z = F.linear(h.float(), weight, None if bias is None else bias.float())
    return z.mul_(scale) if scale != 1.0 else z


def _logsumexp_(z: torch.Tensor) -> torch.Tensor:
    """logsumexp over the last axis, destroying z (no second [n, V] buffer)."""
    m = z.amax(dim=-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    return m.squeeze(-1) + z.sub_(m).exp_().sum(dim=-1).log_()


class GatheredLogProbs(torch.autograd.Function):
    """s [N, J] = log_softmax(head(h))[n, ids[n, j]] for h [N, D], ids [N, J], chunk by chunk."""

    @staticmethod
    def forward(ctx, h, weight, bias, ids, scale: float, softcap, chunk: int):
        w = weight.float()
        s = torch.empty(ids.shape, dtype=torch.float32, device=h.device)
        lse = torch.empty(h.shape[0], dtype=torch.float32, device=h.device)
        with torch.autocast(h.device.type, enabled=False):
            for lo in range(0, h.shape[0], chunk):
                z = _chunk_logits(h[lo:lo + chunk], w, bias, scale)
                if softcap is not None:
                    z.div_(softcap).tanh_().mul_(softcap)
                s[lo:lo + chunk] = z.gather(1, ids[lo:lo + chunk])
                lse[lo:lo + chunk] = _logsumexp_(z)
                del z
        ctx.save_for_backward(h, weight, bias, ids, lse)
        ctx.scale, ctx.softcap, ctx.chunk = scale, softcap, chunk
        return s.sub_(lse.unsqueeze(-1))

    @staticmethod
    def backward(ctx, grad_s):
        h, weight, bias, ids, lse = ctx.saved_tensors
        w, grad_s = weight.float(), grad_s.float().contiguous()
        want_h, want_w, want_b = ctx.needs_input_grad[:3]
        grad_h = torch.empty(h.shape, dtype=torch.float32, device=h.device) if want_h else None
        grad_w = torch.zeros_like(w) if want_w else None
        grad_b = torch.zeros(w.shape[0], device=h.device) if want_b and bias is not None else None
        total = grad_s.sum(-1, keepdim=True)
        with torch.autocast(h.device.type, enabled=False):
            for lo in range(0, h.shape[0], ctx.chunk):
                hi = min(lo + ctx.chunk, h.shape[0])
                g = _grad_logits(_chunk_logits(h[lo:hi], w, bias, ctx.scale), ctx.softcap,
                                 lse[lo:hi], ids[lo:hi], grad_s[lo:hi], total[lo:hi])
                if ctx.scale != 1.0:
                    g.mul_(ctx.scale)
                if grad_h is not None:
                    torch.mm(g, w, out=grad_h[lo:hi])
                if grad_w is not None:
                    grad_w.addmm_(g.t(), h[lo:hi].float())
                if grad_b is not None:
                    grad_b.add_(g.sum(0))
                del g
        return (None if grad_h is None else grad_h.to(h.dtype),
                None if grad_w is None else grad_w.to(weight.dtype),
                None if grad_b is None else grad_b.to(bias.dtype), None, None, None, None)


def _grad_logits(u: torch.Tensor, softcap, lse, ids, grad_s, total) -> torch.Tensor:
    """d loss / d u in u's own buffer: scatter_add(ids, grad_s) − p · Σ_j grad_s, through the
    soft-cap z = c · tanh(u / c) when there is one (dz/du = 1 − tanh²)."""
    if softcap is None:
        u.sub_(lse.unsqueeze(-1)).exp_().mul_(total.neg())
        return u.scatter_add_(1, ids, grad_s)
    t = u.div_(softcap).tanh_()
    t_ids = t.gather(1, ids)
    for lo in range(0, t.shape[0], SOFTCAP_ROWS):
        rows = t[lo:lo + SOFTCAP_ROWS]
        p = (rows * softcap).sub_(lse[lo:lo + SOFTCAP_ROWS].unsqueeze(-1)).exp_()
        rows.square_().neg_().add_(1.0).mul_(p).mul_(total[lo:lo + SOFTCAP_ROWS].neg())
        del p
    return t.scatter_add_(1, ids, grad_s * (1.0 - t_ids.square()))


def gathered_logprobs(h: torch.Tensor, head: Head, ids: torch.Tensor,
                      chunk: int = CHUNK_POSITIONS) -> torch.Tensor:
    """Student log-probabilities [N, J] at ids [N, J] from hidden states [N, D] (module doc)."""
    return GatheredLogProbs.apply(h, head.weight, head.bias, ids.long(), head.scale,
                                  head.softcap, chunk)


def chunked_loss(h: torch.Tensor, head: Head, batch: dict[str, torch.Tensor], spec: LossSpec,
                 chunk: int = CHUNK_POSITIONS) -> dict[str, torch.Tensor]:
    """`compute_loss(head.logits(h), batch, spec)` without the logits: hidden states [B, L, D]
    and the stored ids plus the next token (one more column) go through `gathered_logprobs`."""
    ids = batch["input_ids"]
    b, length = ids.shape
    targets = F.pad(ids[:, 1:], (0, 1)).unsqueeze(-1)  # the last position has no target
    kd = spec.kind in KD_KINDS
    cols = torch.cat([batch["topk_ids"].long(), targets], -1) if kd else targets
    if "loss_mask" in batch:  # 1.3: the head runs at trained positions only
        mask = batch["loss_mask"]
        s = gathered_logprobs(h[mask], head, cols[mask], chunk)
        labels = {k: v[mask] for k, v in batch.items() if k in LABEL_KEYS}
        return masked_loss(s[:, :-1] if kd else None, s[:, -1], labels, has_target(mask)[mask],
                           spec)
    s = gathered_logprobs(h.reshape(b * length, -1), head, cols.reshape(b * length, -1), chunk)
    s = s.view(b, length, -1)
    return loss_from_gathered(s[..., :-1] if kd else None, s[..., -1], batch, spec)


def model_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor], spec: LossSpec,
               device: torch.device, chunk: int | None = None) -> dict[str, torch.Tensor]:
    """The model's loss on the batch: its body under the device's autocast, then the chunked
    head and loss in fp32, `chunk` positions at a time (default `chunk_positions()`). `chunk`
    0, or a model without a separable head: full logits and `compute_loss` (the reference)."""
    chunk = chunk_positions() if chunk is None else chunk
    head = split_model(model) if chunk else None
    kw = {"segment_ids": batch["segment_ids"]} if "segment_ids" in batch else {}  # 1.3 packed
    if head is None:
        with autocast(device):
            logits = model(batch["input_ids"], **kw)
        return compute_loss(logits, batch, spec)
    with autocast(device):
        h = model(batch["input_ids"], hidden_only=True, **kw)
    return chunked_loss(h, head, batch, spec, chunk)
