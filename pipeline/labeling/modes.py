"""Label modes beyond top-k (format 1.1): top-p and sampled (RS-KD) labels, and their losses.

Why: top-k with a renormalised loss is biased and hurts calibration (Anshumann et al. 2025,
"Sparse Logit Sampling", arXiv 2503.16870), and a fixed k wastes bytes where the teacher is sure
and truncates where it is not. So users choose, per dataset:

- `topk`: the k most probable ids (pipeline/labeling/forward.py).
- `topp`: per position the smallest set of top ids whose mass reaches p, clamped to
  [min_k, max_k]; variable length, exact tail mass. One `topk(max_k)` + `cumsum` + mask.
- `sampled`: N draws per position from the teacher tempered to T (q ∝ p^(1/T)); the unique ids
  are stored with their teacher log-probabilities, the number of draws that hit each, and (T ≠ 1)
  log Σ_v p_v^(1/T), from which the reader forms plain importance weights
  w = (draws/N)·p/q (pipeline/softlabels/encodings.py). The `sampled` loss −Σ_j w_j s_j is an
  unbiased estimate of the teacher cross-entropy −Σ_v p_v s_v for every T (not self-normalised:
  at T ≠ 1 the weights sum to 1 only in expectation).

Sampling is reproducible and independent of the batch size and device: every row draws its
uniforms from its own CPU `torch.Generator`, seeded by sha256(seed, split, shard, row), and
inverse-CDF sampling (float64 cumsum + searchsorted) turns them into ids.

The module also says which losses fit which labels (`check_loss`): `sampled` labels carry draw
weights, not a truncated distribution, so kl_tail/kl_renorm are refused on them, and the
`sampled` loss is refused on top-k/top-p labels (they have no draw weights).
"""

import hashlib
import math
from dataclasses import replace

import torch

from pipeline.config.toml import read_toml
from pipeline.errors import ConfigError, PipelineError
from pipeline.softlabels import schema as S
from pipeline.softlabels.ragged import PAD_LOGPROB

SAMPLE_POSITIONS = 256  # positions per float64 CDF when sampling (256 × 152k × 8 B = 311 MB)
LOSSES_FOR_MODE = {"topk": ("kl_tail", "kl_renorm", "ce", "crosstok"),
                   "topp": ("kl_tail", "kl_renorm", "ce"),
                   "sampled": ("sampled", "ce"), "none": ("ce",)}


# -- options → LabelSpec ------------------------------------------------------------------------

def check_args(cfg) -> None:
    """How the mode options of a LabelConfig combine (each value's own range is its field's
    rule, pipeline/config/stages.py, checked before this); one line naming the flags."""
    if cfg.mode != "topk" and cfg.top_k == 0:
        raise PipelineError(f"--mode {cfg.mode} needs a teacher; --top-k 0 (tokens only) only "
                            "goes with --mode topk")
    if cfg.mode == "topp" and cfg.min_k > cfg.max_k:
        raise PipelineError(f"--min-k {cfg.min_k} / --max-k {cfg.max_k}: need "
                            "1 <= min-k <= max-k <= 65535")


def build_spec(cfg, vocab_size: int) -> S.LabelSpec:
    """The dataset's LabelSpec from a LabelConfig; top-k options with id_encoding "rank" build
    exactly the 1.0 spec."""
    mode = cfg.mode if cfg.top_k else "none"
    extra: dict = {}
    if cfg.logprob_encoding == "u8" and cfg.top_k:
        extra["logprob_u8_min"] = float(cfg.u8_min_logprob)
    if cfg.top_k and cfg.id_encoding == "sorted_delta":
        extra["id_encoding"] = "sorted_delta"  # format 1.2
    k = cfg.top_k
    if mode == "topp":
        if cfg.max_k > vocab_size:
            raise PipelineError(f"--max-k {cfg.max_k} exceeds the vocabulary size {vocab_size}")
        k = cfg.max_k
        extra.update(top_p=float(cfg.top_p), min_k=int(cfg.min_k))
    elif mode == "sampled":
        k = min(cfg.samples, vocab_size)
        extra.update(samples=int(cfg.samples), seed=int(cfg.seed),
                     proposal_temperature=float(cfg.proposal_temperature))
    return S.LabelSpec(mode, k, vocab_size, S.id_type_for_vocab(vocab_size),
                       cfg.logprob_encoding, **extra)


# -- selection from teacher logits --------------------------------------------------------------

def topp_from_logits(logits: torch.Tensor, top_p: float, min_k: int,
                     max_k: int) -> tuple[torch.Tensor, ...]:
    """[..., V] logits → (ids [..., max_k], logprobs, tail [...], counts [...]).

    counts = the smallest n with Σ_{i<n} p_i >= top_p, clamped to [min_k, max_k]; entries past
    counts are padding (id 0, PAD_LOGPROB). Tail = 1 − mass of the kept entries, in float64.
    """
    logits = logits.float()
    lse = torch.logsumexp(logits, dim=-1, keepdim=True)
    values, ids = torch.topk(logits, max_k, dim=-1, sorted=True)
    logprobs = (values - lse).clamp_(max=0.0)
    cum = torch.exp(logprobs.double()).cumsum(dim=-1)
    counts = ((cum < top_p).sum(dim=-1) + 1).clamp_(min_k, max_k)
    mass = cum.gather(-1, (counts - 1).unsqueeze(-1)).squeeze(-1)
    tail = (1.0 - mass).clamp_(0.0, 1.0).float()
    keep = torch.arange(max_k, device=logits.device) < counts.unsqueeze(-1)
    return ids.masked_fill(~keep, 0), logprobs.masked_fill(~keep, PAD_LOGPROB), tail, counts


def row_seed(seed: int, split: str, shard: int, row: int) -> int:
    """A 63-bit seed per (dataset seed, split, shard, row): the same row always draws the same."""
    digest = hashlib.sha256(f"{seed}/{split}/{shard}/{row}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def row_uniforms(seed: int, split: str, shard: int, first_row: int, rows: int, seq_len: int,
                 samples: int) -> torch.Tensor:
    """[rows, seq_len, samples] float64 uniforms in [0, 1), one CPU generator per row."""
    out = torch.empty(rows, seq_len, samples, dtype=torch.float64)
    for r in range(rows):  # per row, not per position: keeps draws independent of batch size
        gen = torch.Generator().manual_seed(row_seed(seed, split, shard, first_row + r))
        out[r] = torch.rand(seq_len, samples, generator=gen, dtype=torch.float64)
    return out


def _unique_counts(draws: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[..., N] draws → (unique ids [..., N], draws per id [..., N], n unique [...]), padded."""
    s, _ = draws.sort(dim=-1)
    new = torch.ones_like(s, dtype=torch.bool)
    new[..., 1:] = s[..., 1:] != s[..., :-1]
    slot = new.long().cumsum(dim=-1) - 1  # which unique id each sorted draw belongs to
    uniq = torch.zeros_like(s).scatter_(-1, slot, s)  # equal values land on one slot
    hits = torch.zeros_like(s).scatter_add_(-1, slot, torch.ones_like(s))
    return uniq, hits, new.sum(dim=-1)


def sample_from_logits(logits: torch.Tensor, samples: int, temperature: float,
                       uniforms: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """[..., V] logits + [..., N] uniforms → (ids [..., k], teacher logprobs [..., k], tail [...],
    counts [...], draws per id [..., k], and log Σ p^(1/T) [...] when T ≠ 1); k = min(N, V).

    Stored ids are the unique draws, most probable (under the teacher) first.
    """
    logits = logits.float()
    vocab = logits.shape[-1]
    logprobs = logits - torch.logsumexp(logits, dim=-1, keepdim=True)
    log_norm = None
    if temperature == 1.0:
        q_log = logprobs.double()
    else:
        scaled = logprobs.double() / temperature
        log_norm = torch.logsumexp(scaled, dim=-1)
        q_log = scaled - log_norm.unsqueeze(-1)
    cdf = torch.exp(q_log).cumsum_(dim=-1)
    del q_log
    targets = uniforms.to(cdf.device) * cdf[..., -1:]
    draws = torch.searchsorted(cdf, targets, right=True).clamp_(max=vocab - 1)
    del cdf
    uniq, hits, counts = _unique_counts(draws)
    keep = torch.arange(samples, device=logits.device) < counts.unsqueeze(-1)
    lp = logprobs.gather(-1, uniq).clamp_(max=0.0).masked_fill(~keep, -math.inf)
    lp, order = lp.sort(dim=-1, descending=True, stable=True)
    k = min(samples, vocab)
    ids, hits, lp, keep = (t[..., :k] for t in (uniq.gather(-1, order), hits.gather(-1, order),
                                                lp, keep.gather(-1, order)))
    tail = (1.0 - torch.exp(lp.double()).sum(dim=-1)).clamp_(0.0, 1.0).float()
    out = (ids.masked_fill(~keep, 0), lp.masked_fill(~keep, PAD_LOGPROB), tail, counts,
           hits.masked_fill(~keep, 0))
    return out if log_norm is None else (*out, log_norm.float())


def selector(spec: S.LabelSpec, split: str, shard: int):
    """`select(first_row, rows, seq_len)` → `pick(logits [n, V], lo, hi)` for
    pipeline.labeling.forward.label_tokens (flat positions lo..hi of a batch), or None for
    top-k. Sampled draws come from the rows' own uniforms, so chunking changes nothing."""
    if spec.mode == "topp":
        def pick_topp(logits, lo, hi):
            return topp_from_logits(logits, spec.top_p, spec.min_k, spec.k)
        return lambda first_row, rows, seq_len: pick_topp
    if spec.mode == "sampled":
        def select(first_row, rows, seq_len):
            u = row_uniforms(spec.seed, split, shard, first_row, rows, seq_len, spec.samples)
            u = u.view(rows * seq_len, spec.samples)
            return lambda logits, lo, hi: _sample_rows(logits, spec, u[lo:hi])
        return select
    return None


def _sample_rows(logits: torch.Tensor, spec: S.LabelSpec, u: torch.Tensor) -> tuple:
    """sample_from_logits over [n, V] logits, SAMPLE_POSITIONS at a time: its float64 CDF
    is 8 bytes per logit, so a whole chunk at a wide vocabulary would cost GBs."""
    parts = [sample_from_logits(logits[lo:lo + SAMPLE_POSITIONS], spec.samples,
                                spec.proposal_temperature, u[lo:lo + SAMPLE_POSITIONS])
             for lo in range(0, logits.shape[0], SAMPLE_POSITIONS)]
    return tuple(torch.cat(column) for column in zip(*parts))


# -- which loss fits which labels ---------------------------------------------------------------

def check_loss(kind: str, temperature: float, labels: S.LabelSpec, where: str) -> None:
    """Refuse a loss the dataset's labels cannot feed, in one line naming the fix."""
    fits = LOSSES_FOR_MODE.get(labels.mode, ())
    if kind not in fits:
        raise ConfigError(f"{where}: [loss] kind {kind!r} does not fit labels mode "
                          f"{labels.mode!r} (valid: {', '.join(fits)}); set [loss] kind = "
                          f"\"{fits[0]}\" or relabel with another --mode")
    if kind == "sampled" and temperature != 1.0:
        raise ConfigError(f"{where}: [loss] temperature {temperature} with kind 'sampled': "
                          "sampled weights estimate the teacher at T = 1; set temperature = 1.0")


def match_loss(student, labels: S.LabelSpec):
    """A student file that does not choose [loss] kind gets the one its labels need (`sampled`
    for sampled labels); a chosen kind that does not fit is refused. Returns the StudentSpec."""
    chosen = True
    try:
        chosen = "kind" in read_toml(student.path, "student file", "").get("loss", {})
    except (ConfigError, AttributeError, TypeError):
        pass  # not from a readable file: keep its kind as given
    loss = student.loss
    if not chosen and labels.mode == "sampled" and loss.kind != "sampled":
        loss = replace(loss, kind="sampled")
    check_loss(loss.kind, loss.temperature, labels, student.path)
    return replace(student, loss=loss)


def summary_extras(spec: S.LabelSpec, records: list[dict], nbytes: int) -> dict:
    """Manifest summary fields of the variable modes (none for a 1.0 top-k dataset)."""
    if not spec.variable:
        return {}
    entries = sum(r.get("entries", 0) for r in records)
    positions = sum(r["positions"] for r in records)
    return {"mean_entries_per_position": entries / max(positions, 1),
            "bytes_per_entry": nbytes / max(entries, 1)}
