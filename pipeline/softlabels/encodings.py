"""Log-probability value encodings (docs/FORMAT.md, "Encodings"): fp32, fp16 and u8.

Ids dominate the bytes of a soft-label shard, log-probabilities come next; `u8` halves them again
after fp16. It is a linear quantisation of the log-probability on [lo, 0] (lo =
`labels.logprob_u8_min`, recorded in the manifest), because KD cares about relative errors of
probabilities, which a log-space grid bounds uniformly:

    code = round(255 * clamp(x, lo, 0) / lo)          (0 ↔ log p = 0, 255 ↔ log p = lo)
    x̂    = code * lo / 255

For x in [lo, 0], |x̂ − x| ≤ |lo| / 510 (half a step), i.e. a relative probability error of at most
e^(|lo|/510) − 1 (3.2 % at the default lo = −16). A value below lo decodes as lo: its probability
p < e^lo is overstated by at most e^lo (1.1e-7 at lo = −16). The code is monotone, so descending
log-probabilities stay descending.
"""

import numpy as np

from pipeline.softlabels import schema as S

U8_LEVELS = 255


def u8_error_bound(lo: float) -> float:
    """Max |decoded − true| log-probability error for values in [lo, 0]."""
    return abs(lo) / (2 * U8_LEVELS)


def encode_logprobs(logprobs: np.ndarray, spec: S.LabelSpec) -> np.ndarray:
    """float log-probabilities → the storage dtype of spec.logprob_encoding."""
    if spec.logprob_encoding == "u8":
        lo = float(spec.logprob_u8_min)
        x = np.clip(np.asarray(logprobs, dtype=np.float64), lo, 0.0)
        return np.rint(x * (U8_LEVELS / lo)).astype(np.uint8)
    arrow_type = S.LOGPROB_ENCODINGS[spec.logprob_encoding]
    return np.asarray(logprobs).astype(S.numpy_dtype(arrow_type))


def decode_logprobs(stored: np.ndarray, spec: S.LabelSpec) -> np.ndarray:
    """Stored values → float32 log-probabilities (a new array; never a view of Arrow memory)."""
    if spec.logprob_encoding == "u8":
        return (stored.astype(np.float32) * np.float32(spec.logprob_u8_min / U8_LEVELS))
    return stored.astype(np.float32)


def importance_weights(draws: np.ndarray, logprobs: np.ndarray, log_norm: np.ndarray | None,
                       spec: S.LabelSpec) -> np.ndarray:
    """Sampled mode: per stored id, w = (draws / N) · p / q, the plain importance weight.

    draws/logprobs: [..., k] (0 draws at padding); log_norm: [...] = log Σ_v p_v^(1/T), or None
    when T = 1 (then q = p and w = draws / N exactly). −Σ_j w_j s_j is then an unbiased estimate
    of the teacher cross-entropy −Σ_v p_v s_v. With T ≠ 1, log p/q = (1 − 1/T)·log p + log_norm
    uses the *stored* log-probabilities, so their encoding error enters the weights.
    """
    w = draws.astype(np.float64) / float(spec.samples)
    if spec.tempered:
        expo = (1.0 - 1.0 / spec.proposal_temperature) * logprobs.astype(np.float64)
        expo = np.where(draws > 0, expo + log_norm[..., None], 0.0)  # padding stays 0
        w = w * np.exp(expo)
    return w.astype(np.float32)
