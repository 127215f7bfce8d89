"""Teacher logits → top-k soft labels, the numerically careful way.

Top-k is taken on the raw logits, then `logsumexp` is subtracted from just those k values, so the
full log-softmax is never materialised; the logits themselves exist one chunk of positions at a
time (the teacher's head is applied per chunk), never as a [batch, seq, vocab] tensor. The tail
mass (probability outside the stored ids) is computed in float64 from the unrounded values and
stored as float32, so it is exact to storage precision and never re-derived from rounded
log-probabilities.
"""

import numpy as np
import torch

from pipeline.errors import PipelineError
from pipeline.models.head import logit_chunks


def topk_from_logits(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, ...]:
    """[..., V] logits → (ids [..., k], logprobs [..., k] float32, tail [...] float32)."""
    logits = logits.float()
    lse = torch.logsumexp(logits, dim=-1, keepdim=True)
    values, ids = torch.topk(logits, k, dim=-1, sorted=True)
    logprobs = values - lse
    mass = torch.exp(logprobs.double()).sum(dim=-1)
    tail = (1.0 - mass).clamp_(0.0, 1.0).float()
    return ids, logprobs.clamp_(max=0.0), tail


def check_finite(logits: torch.Tensor, row_offset: int, shard_name: str) -> None:
    """Refuse [rows, seq, V] logits holding a NaN or an infinity, naming the rows."""
    bad = ~_finite_positions(logits).all(dim=-1)
    _refuse(torch.nonzero(bad).flatten() + row_offset, shard_name)


def _finite_positions(logits: torch.Tensor) -> torch.Tensor:
    # One fp32 sum per position instead of an elementwise isfinite mask over [B, T, V]: a NaN
    # or an infinity anywhere makes the sum non-finite, and it costs a third of the mask (bench
    # figure 1). fp32 accumulation: fp16 logits would overflow a half-precision sum.
    return torch.isfinite(logits.sum(dim=-1, dtype=torch.float32))


def _refuse(rows: torch.Tensor, shard_name: str) -> None:
    if rows.numel():
        rows = sorted(set(rows.tolist()))
        raise PipelineError(f"teacher produced NaN/inf logits for {shard_name} rows {rows[:10]}; "
                            "refusing the batch - check the teacher weights (or use fp32)")


def topk_selector(k: int):
    """The default `select` of label_tokens: top-k of every chunk."""
    return lambda first_row, rows, seq_len: lambda logits, lo, hi: topk_from_logits(logits, k)


@torch.inference_mode()
def label_tokens(model: torch.nn.Module, tokens: np.ndarray, k: int, batch_size: int,
                 device: torch.device, shard_name: str = "shard",
                 on_batch=None, select=None,
                 chunk: int | None = None,
                 segments: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
    """Run the teacher over [rows, seq] tokens in batches; return numpy ids, logprobs, tail.

    The teacher's head runs `chunk` positions at a time (default: `chunk_positions()`,
    pipeline/models/head.py), so no
    [batch, seq, vocab] tensor exists. `select(first_row, rows, seq_len)` → `pick(logits [n, V],
    lo, hi)` → a tuple of [n, ...] tensors for flat positions lo..hi of the batch replaces top-k
    (the other label modes, pipeline/labeling/modes.py); each element is reshaped to
    [rows, seq, ...] and concatenated over batches (int64 → int32). `segments` [rows, seq]:
    packed samples that must not attend to each other (format 1.3, models/segments.py).

    NaN/inf logits are refused. Top-k (the default) checks its own [n, k] log-probabilities and
    tail: they are `values - logsumexp`, so a NaN or +inf anywhere in a position's logits (or
    all of them -inf) makes them non-finite, at k values per position instead of a pass over
    V (bench figure 1); a -inf logit outside the top k is a probability of exactly 0 and is
    stored as such. The other modes sample from or threshold the distribution, so they check
    the logits themselves (one fp32 sum per position) before picking.
    """
    checked_by_outputs = select is None
    select = select or topk_selector(k)
    seq_len, parts = tokens.shape[1], []
    for lo in range(0, tokens.shape[0], batch_size):
        batch = torch.from_numpy(tokens[lo:lo + batch_size].astype(np.int64)).to(device)
        rows, pick, cols, bad = batch.shape[0], select(lo, batch.shape[0], seq_len), [], []
        seg = None if segments is None else torch.from_numpy(
            segments[lo:lo + batch_size].astype(np.int64)).to(device)
        for a, b, logits in logit_chunks(model, batch, chunk, seg):
            if checked_by_outputs:
                cols.append(pick(logits, a, b))
                finite = torch.isfinite(cols[-1][1]).all(dim=-1) & torch.isfinite(cols[-1][2])
                bad.append(torch.nonzero(~finite).flatten() + a)
            else:
                bad.append(torch.nonzero(~_finite_positions(logits)).flatten() + a)
                if not bad[-1].numel():
                    cols.append(pick(logits, a, b))
        _refuse(torch.cat(bad) // seq_len + lo, shard_name)
        parts.append([_numpy(torch.cat(c).reshape(rows, seq_len, *c[0].shape[1:]))
                      for c in zip(*cols)])
        if on_batch is not None:
            on_batch(batch.numel())
    return tuple(np.concatenate(column) for column in zip(*parts))


def _numpy(t: torch.Tensor) -> np.ndarray:
    return (t.to(torch.int32) if t.dtype == torch.int64 else t).cpu().numpy()
