"""A model's output head, kept apart from its body so logits exist one chunk of positions at a
time.

Why: at a 152k-token vocabulary a [batch, seq, vocab] fp32 logits tensor of 16 × 128 positions is
1.2 GB, and every consumer (top-k labels, logsumexp, metrics, the loss) only needs a few numbers
per position. So models expose `hidden(ids)` → final hidden states [B, L, D] and
`output_head()` → a `Head` (weight [V, D], bias, and the model's own output transform), and the
stages apply the head to `chunk_positions()` positions at a time (`logit_chunks`; default
1,024, env SOFTLABELS_CHUNK_POSITIONS); training does the same inside a custom autograd
function (pipeline/training/chunked.py).

`Head.logits` applies exactly the ops the model's forward applies, in the same order and dtype
(a linear layer, then e.g. Cohere's `logit_scale`, Granite's `/ logits_scaling`, Gemma's
`final_logit_softcapping`), so a chunk's logits are the model's logits at those positions. A
module without `hidden`/`output_head` (or whose head is None: a transform we do not know) is run
whole and its logits sliced: correct, just not memory-bounded.
"""

import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pipeline.device import autocast
from pipeline.errors import PipelineError

CHUNK_POSITIONS = 1024  # positions whose logits exist at once: 1024 × 152k fp32 = 622 MB
CHUNK_ENV = "SOFTLABELS_CHUNK_POSITIONS"


def chunk_positions() -> int:
    """Positions per chunk: $SOFTLABELS_CHUNK_POSITIONS or 1,024. 0 = a whole batch at once
    (full logits: the pre-chunking path, for comparison). Larger chunks trade memory for fewer,
    bigger matmuls (a GPU may prefer 4,096)."""
    raw = os.environ.get(CHUNK_ENV, "").strip()
    if not raw:
        return CHUNK_POSITIONS
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise PipelineError(f"{CHUNK_ENV}={raw!r}: give a number of positions >= 1 (or 0 for "
                            "full logits)")
    return value


@dataclass(frozen=True)
class Head:
    """logits = softcap(transform(h @ weightᵀ + bias)); transform = × multiplier or ÷ divisor."""

    weight: torch.Tensor  # [V, D]
    bias: torch.Tensor | None = None
    multiplier: float | None = None
    divisor: float | None = None
    softcap: float | None = None

    @property
    def scale(self) -> float:
        """The transform as one factor (for the loss's own fp32 arithmetic)."""
        return (self.multiplier or 1.0) / (self.divisor or 1.0)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """[..., D] hidden states → [..., V] logits, op for op as the model computes them."""
        z = F.linear(h, self.weight, self.bias)
        if self.multiplier is not None:
            z = z * self.multiplier
        if self.divisor is not None:
            z = z / self.divisor
        if self.softcap is not None:
            z = torch.tanh(z / self.softcap) * self.softcap
        return z


def split_model(model: torch.nn.Module) -> Head | None:
    """The model's Head when it has `hidden` and a known `output_head`, else None."""
    model = getattr(model, "module", model)  # DistributedDataParallel
    if not (hasattr(model, "hidden") and hasattr(model, "output_head")):
        return None
    return model.output_head()


def logit_chunks(model: torch.nn.Module, input_ids: torch.Tensor, chunk: int | None = None,
                 segment_ids: torch.Tensor | None = None
                 ) -> Iterator[tuple[int, int, torch.Tensor]]:
    """(lo, hi, logits [hi − lo, V]) over the B·L positions of `input_ids` (row-major), `chunk`
    (default `chunk_positions()`; 0: all) at a time, under the device's autocast; a model
    without a separable head runs whole. `segment_ids` [B, L] (format 1.3 packed rows) keep
    each sample's attention inside it (pipeline/models/segments.py)."""
    chunk = chunk_positions() if chunk is None else chunk
    chunk = chunk or input_ids.numel()
    head, device = split_model(model), input_ids.device
    kw = {} if segment_ids is None else {"segment_ids": segment_ids}
    with autocast(device):
        flat = model(input_ids, **kw) if head is None else getattr(model, "module", model).hidden(
            input_ids, **kw)
    flat = flat.reshape(-1, flat.shape[-1])
    for lo in range(0, flat.shape[0], chunk):
        hi = min(lo + chunk, flat.shape[0])
        if head is None:
            yield lo, hi, flat[lo:hi]
            continue
        with autocast(device):
            z = head.logits(flat[lo:hi])
        yield lo, hi, z
