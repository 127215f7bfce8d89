"""`pipeline audit`: how much of the teacher do the stored labels keep? Measured, not assumed.

Re-runs the labeling teacher on the first N rows of a split (validation by default) and compares,
per position, the teacher's exact distribution p over the whole vocabulary with the distribution
p̂ the stored labels imply (docs/FORMAT.md, "Auditing"):

- stored ids S keep their stored probabilities, renormalised to the stored mass 1 − r (the same
  renormalisation `kl_tail` applies, so encoding error shows up here); for `sampled` labels the
  importance weights take that role: p̂_j = (1 − r) · w_j / Σ w;
- the exact tail mass r is spread uniformly over the V − |S| ids that were not stored (floored at
  1e-12 so a tail that rounded to 0 does not make the KL infinite); with |S| = V there is no tail.

It reports the mean full-vocabulary KL(p ‖ p̂) in nats, the coverage (mean teacher mass on the
stored ids, from the re-run teacher), the mean entries per position, the largest gap between the
stored and the re-computed tail mass (a consistency check), and bytes per position (manifest).
A teacher whose weights differ from the manifest's is refused: the audit would compare labels
with a different model. The teacher's logits exist `AUDIT_POSITIONS` positions at a time
(pipeline/models/head.py), so a 152k-token teacher audits in bounded memory.
"""

import torch

from pipeline.config.check import check_config
from pipeline.config.stages import AuditConfig
from pipeline.device import resolve_device
from pipeline.errors import PipelineError
from pipeline.io.uris import redact
from pipeline.models.head import logit_chunks
from pipeline.models.loader import check_model_exists, load_model_spec
from pipeline.softlabels.reader import SoftLabelDataset

MIN_TAIL = 1e-12
# Positions per chunk: the KL is float64 over the whole vocabulary, a few [n, V] buffers of
# 8 bytes (128 × 152k × 8 B = 156 MB each), so smaller chunks than training's fp32 ones.
AUDIT_POSITIONS = 128


def implied_logprobs(batch: dict[str, torch.Tensor], vocab: int) -> torch.Tensor:
    """log p̂ [..., V] (float64) of the distribution the stored labels imply (module doc), for
    labels [..., k] (a batch [R, L, k] or a chunk of positions [n, k])."""
    ids, tail = batch["topk_ids"], batch["tail_mass"].double().clamp(0.0, 1.0)
    mask = batch.get("label_mask", torch.ones_like(ids, dtype=torch.bool))
    n = mask.sum(-1)
    if "sample_weights" in batch:
        inside = batch["sample_weights"].double()
    else:
        inside = batch["topk_logprobs"].double().exp()
    inside = inside.masked_fill(~mask, 0.0)
    full = n >= vocab  # every id stored: no tail left to spread
    mass = torch.where(full, torch.ones_like(tail), 1.0 - tail)
    stored = torch.log(inside / inside.sum(-1, keepdim=True)) + torch.log(mass).unsqueeze(-1)
    spread = torch.log(tail.clamp(min=MIN_TAIL) / (vocab - n).clamp(min=1))
    out = spread.unsqueeze(-1).expand(*ids.shape[:-1], vocab + 1).clone()
    slot = ids.masked_fill(~mask, vocab)  # padding writes into a spare column, dropped below
    out.scatter_(-1, slot, stored)
    return out[..., :vocab]


def kl_full(teacher_logits: torch.Tensor, implied: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ p̂) per position over the whole vocabulary, p = softmax(teacher_logits)."""
    log_p = torch.log_softmax(teacher_logits.double(), dim=-1)
    return (log_p.exp() * (log_p - implied)).sum(-1)


def _chunks(ds: SoftLabelDataset, cfg: AuditConfig, model, device):
    """(KL, coverage, entries, stored tail) per chunk of the first cfg.rows rows' positions."""
    for decoded in _rows(ds, cfg.split, cfg.rows):
        for lo in range(0, decoded["input_ids"].shape[0], cfg.batch_size):
            batch = {k: v[lo:lo + cfg.batch_size].to(device) for k, v in decoded.items()}
            flat = {k: v.reshape(-1, *v.shape[2:]) for k, v in batch.items()
                    if k not in ("input_ids", "segment_ids")}
            for a, b, logits in logit_chunks(model, batch["input_ids"], AUDIT_POSITIONS,
                                             batch.get("segment_ids")):
                part = {k: v[a:b] for k, v in flat.items()}
                if "loss_mask" in part:  # 1.3: only trained positions hold labels
                    keep = part.pop("loss_mask")
                    logits, part = logits[keep], {k: v[keep] for k, v in part.items()}
                yield *_audit_chunk(logits.float(), part, ds.vocab_size), part["tail_mass"]


def _audit_chunk(logits: torch.Tensor, part: dict[str, torch.Tensor], vocab: int):
    """KL [n], teacher mass on the stored ids [n] and the entry count of n positions."""
    kl = kl_full(logits, implied_logprobs(part, vocab))
    mask = part.get("label_mask", torch.ones_like(part["topk_ids"], dtype=torch.bool))
    lse = torch.logsumexp(logits.double(), -1, keepdim=True)
    p_stored = (logits.gather(-1, part["topk_ids"]).double() - lse).exp()
    return kl, p_stored.masked_fill(~mask, 0.0).sum(-1), float(mask.sum())


def _rows(ds: SoftLabelDataset, split: str, n: int) -> list[dict]:
    """Decoded batches holding the first n rows of the split, in shard order."""
    out, left = [], n
    for shard in ds.split_shards(split):
        if left <= 0:
            break
        table = ds.read_table(shard).slice(0, left)
        batch = ds.decode(table, f"shard {shard.rel}")
        out.append(batch)
        left -= table.num_rows
    return out


def _check(ds: SoftLabelDataset, cfg: AuditConfig, teacher) -> None:
    if cfg.rows < 1 or cfg.batch_size < 1:
        raise PipelineError("--rows and --batch-size must be >= 1")
    if not ds.spec.has_labels:
        raise PipelineError(f"{ds.root} holds no soft labels (labels mode 'none'); nothing to "
                            "audit")
    want = (ds.manifest.get("teacher") or {}).get("sha256")
    if teacher.weights_sha256 != want:
        raise PipelineError(f"--teacher {cfg.teacher}: weights sha256 "
                            f"{teacher.weights_sha256[:12]} differ from the teacher that labeled "
                            f"{ds.root} ({str(want)[:12]}); pass that teacher's directory")
    if teacher.tokenizer.sha256 != ds.tokenizer_sha256:
        raise PipelineError(f"--teacher {cfg.teacher}: tokenizer differs from the dataset's")


def _split_rows(ds: SoftLabelDataset, split: str) -> int:
    return sum(s.rows for s in ds.split_shards(split))


@torch.inference_mode()
def run(cfg: AuditConfig) -> dict:
    """Audit one dataset against its teacher; return the report as a dict."""
    check_config(cfg)
    check_model_exists(cfg.teacher, "--teacher")
    ds = SoftLabelDataset(cfg.labels)
    device = resolve_device(cfg.device)
    teacher = load_model_spec(cfg.teacher, device)  # native, hf:, HF folder or URI
    _check(ds, cfg, teacher)
    sums = {"kl": 0.0, "coverage": 0.0, "entries": 0.0}
    kl_max, tail_gap, positions = 0.0, 0.0, 0
    for kl, covered, entries, tail in _chunks(ds, cfg, teacher.model, device):
        sums["kl"] += float(kl.sum())
        sums["coverage"] += float(covered.sum())
        sums["entries"] += entries
        kl_max = max(kl_max, float(kl.max()))
        tail_gap = max(tail_gap, float((1.0 - covered - tail).abs().max()))
        positions += kl.numel()
    if positions == 0:
        raise PipelineError(f"{ds.root}: split {cfg.split!r} has no rows to audit; try "
                            "--split train")
    summary = ds.manifest.get("summary", {})
    # redacted: `publish --audit` puts this report in a card (pipeline/io/uris.py)
    return {"labels": redact(ds.root), "teacher": redact(cfg.teacher), "split": cfg.split,
            "rows": min(cfg.rows, _split_rows(ds, cfg.split)), "positions": positions,
            **ds.spec.as_dict(),
            "kl_mean": sums["kl"] / positions, "kl_max": kl_max,
            "coverage": sums["coverage"] / positions,
            "entries_per_position": sums["entries"] / positions,
            "tail_mass_max_error": tail_gap,
            "bytes_per_position": summary.get("bytes_per_position")}
