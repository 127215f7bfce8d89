"""Teacher logits → top-k soft labels, the numerically careful way.

Top-k is taken on the raw logits, then `logsumexp` is subtracted from just those k values, so the
full [batch, seq, vocab] log-softmax is never materialised. The tail mass (probability outside the
stored ids) is computed in float64 from the unrounded values and stored as float32, so it is exact
to storage precision and never re-derived from rounded log-probabilities.
"""

import numpy as np
import torch

from pipeline.device import autocast
from pipeline.errors import PipelineError


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
    # One fp32 sum per position instead of an elementwise isfinite mask over [B, T, V]: a NaN
    # or an infinity anywhere makes the sum non-finite, and it costs a third of the mask (bench
    # figure 1). fp32 accumulation: fp16 logits would overflow a half-precision sum.
    bad = ~torch.isfinite(logits.sum(dim=-1, dtype=torch.float32)).all(dim=-1)
    if bad.any():
        rows = (torch.nonzero(bad).flatten() + row_offset).tolist()
        raise PipelineError(f"teacher produced NaN/inf logits for {shard_name} rows {rows[:10]}; "
                            "refusing the batch - check the teacher weights (or use fp32)")


@torch.inference_mode()
def label_tokens(model: torch.nn.Module, tokens: np.ndarray, k: int, batch_size: int,
                 device: torch.device, shard_name: str = "shard",
                 on_batch=None, select=None) -> tuple[np.ndarray, ...]:
    """Run the teacher over [rows, seq] tokens in batches; return numpy ids, logprobs, tail.

    `select(logits, first_row)` → a tuple of tensors replaces top-k (the other label modes,
    pipeline/labeling/modes.py); each element is concatenated over batches (int64 → int32).
    """
    if select is None:
        def select(logits, _):
            return topk_from_logits(logits, k)
    parts = []
    for lo in range(0, tokens.shape[0], batch_size):
        batch = torch.from_numpy(tokens[lo:lo + batch_size].astype(np.int64)).to(device)
        with autocast(device):
            logits = model(batch)
        check_finite(logits, lo, shard_name)
        parts.append([(t.to(torch.int32) if t.dtype == torch.int64 else t).cpu().numpy()
                      for t in select(logits, lo)])
        if on_batch is not None:
            on_batch(batch.numel())
    return tuple(np.concatenate(column) for column in zip(*parts))
