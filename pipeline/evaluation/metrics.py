"""Evaluation metrics: how faithful a student is to the teacher, and how good it is on real text.

Every function is vectorised over [rows, positions] and returns per-position values (or bin
sums), so the evaluator can stream batches and sum them; `MetricSums` does that summing in
float64 and turns the sums into the reported means at the end. It takes a model's logits one
chunk of positions at a time (`add_chunks`, fed by pipeline.models.head.logit_chunks): at a
152k vocabulary a batch's [rows, positions, vocab] logits would be GBs.

Fidelity uses only the stored labels (teacher top-k ids, log-probabilities and exact tail mass),
so the teacher is never re-run: the KL is the exact KL between the two distributions coarsened
to S ∪ {tail} (`kl_tail`, defined in pipeline/training/losses.py), never larger than the full KL.
"""

import math
from dataclasses import dataclass, field

import torch

from pipeline.softlabels.ragged import PAD_LOGPROB
from pipeline.training.losses import kl_tail_from_gathered

ECE_BINS = 15


def student_topk_logprobs(student_logprobs: torch.Tensor, topk_ids: torch.Tensor) -> torch.Tensor:
    """Student log-probabilities [R, L, V] gathered at the teacher's ids [R, L, K] → [R, L, K]."""
    return torch.gather(student_logprobs, -1, topk_ids)


def tail_kl(topk_logprobs: torch.Tensor, tail_mass: torch.Tensor,
            student_on_topk: torch.Tensor) -> torch.Tensor:
    """KL(teacher ‖ student) over S ∪ {tail}, per position [R, L], in nats.

    Σ_{i∈S} p_i (log p_i − s_i) + r (log r − log q_r), with q_r = 1 − Σ_{i∈S} e^{s_i};
    `student_on_topk` holds the student's log-probabilities s_i at the teacher's ids. This is
    the training loss's own function at temperature 1 (pipeline.training.losses), so the metric
    and the `kl_tail` objective cannot disagree.
    """
    return kl_tail_from_gathered(student_on_topk, topk_logprobs, tail_mass)


def top1_agreement(teacher_top1: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """1.0 where the student's argmax is the teacher's top-1 id (stored rank 0), per position."""
    return (student_logits.argmax(-1) == teacher_top1).float()


def mass_on_teacher_topk(student_on_topk: torch.Tensor) -> torch.Tensor:
    """Probability the student puts on the teacher's top-k ids, per position."""
    return student_on_topk.double().exp().sum(-1).float()


def next_token_nll(student_logprobs: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """−log p(x_{t+1}) at positions 0..L−2 → [R, L−1] (the last position has no in-row target)."""
    targets = input_ids[:, 1:]
    return -torch.gather(student_logprobs[:, :-1], -1, targets.unsqueeze(-1)).squeeze(-1)


def top1_confidence_and_correct(student_logprobs: torch.Tensor,
                                input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-1 probability and whether the top-1 is the true next token, at positions 0..L−2."""
    conf_log, pred = student_logprobs[:, :-1].max(-1)
    return conf_log.exp(), (pred == input_ids[:, 1:]).float()


def calibration_bins(confidence: torch.Tensor, correct: torch.Tensor,
                     n_bins: int = ECE_BINS) -> torch.Tensor:
    """Per-bin sums [3, n_bins] (count, Σ confidence, Σ correct) over equal-width bins of [0, 1].

    Bin b holds confidences in [b/n, (b+1)/n); confidence 1.0 goes in the last bin.
    """
    conf = confidence.reshape(-1).double()
    idx = (conf * n_bins).floor().long().clamp_(0, n_bins - 1)
    sums = torch.zeros(3, n_bins, dtype=torch.float64, device=conf.device)
    sums[0].index_add_(0, idx, torch.ones_like(conf))
    sums[1].index_add_(0, idx, conf)
    sums[2].index_add_(0, idx, correct.reshape(-1).double())
    return sums


def ece_from_bins(bins: torch.Tensor) -> float:
    """ECE = Σ_b (n_b / N) · |accuracy_b − confidence_b|, from `calibration_bins` sums."""
    count, conf_sum, correct_sum = bins
    total = float(count.sum())
    if total == 0:
        return math.nan
    return float((conf_sum - correct_sum).abs().sum() / total)


def expected_calibration_error(confidence: torch.Tensor, correct: torch.Tensor,
                               n_bins: int = ECE_BINS) -> float:
    """Expected calibration error of top-1 predictions (15 equal-width bins by default)."""
    return ece_from_bins(calibration_bins(confidence, correct, n_bins))


@dataclass
class MetricSums:
    """Running float64 sums over every evaluated position of one model, batch by batch."""

    kl: float = 0.0
    agree: float = 0.0
    mass: float = 0.0
    fid_positions: int = 0
    nll: float = 0.0
    correct: float = 0.0
    positions: int = 0
    # bytes of each scored next token ([V] table, pipeline/models/tokenbytes.py): per-token CE
    # is not comparable across tokenizers, bits per byte is. None: a family without byte spans
    byte_len: torch.Tensor | None = None
    bytes: float = 0.0
    bins: torch.Tensor = field(default_factory=lambda: torch.zeros(3, ECE_BINS,
                                                                   dtype=torch.float64))

    @torch.inference_mode()
    def add(self, logits: torch.Tensor, batch: dict[str, torch.Tensor],
            is_teacher: bool = False) -> None:
        """Add one batch from its full logits [R, L, V] (small vocabularies, tests)."""
        flat = logits.reshape(-1, logits.shape[-1])
        self.add_chunks([(0, flat.shape[0], flat)], batch, is_teacher)

    @torch.inference_mode()
    def add_chunks(self, chunks, batch: dict[str, torch.Tensor], is_teacher: bool = False) -> None:
        """Add one batch from its logits as (lo, hi, [hi − lo, V]) chunks of the R·L positions
        (pipeline.models.head.logit_chunks), so no [R, L, V] tensor is needed; batch from
        `decode_batch` (same device).

        For the teacher that labeled the dataset, fidelity holds by definition (KL 0, agreement
        1, mass on its own top-k = Σ p_i), so it is taken from the labels, not re-measured.
        """
        flat = _flat_positions(batch, fidelity="topk_ids" in batch and not is_teacher)
        for lo, hi, logits in chunks:
            self._add_chunk(logits.float(), {k: v[lo:hi] for k, v in flat.items()})
        self.positions += int(flat["has_target"].sum())
        # 1.3: only trained positions hold labels and count; else every position does
        trained = batch.get("loss_mask", torch.ones_like(batch["input_ids"], dtype=torch.bool))
        if "topk_ids" in batch and is_teacher:
            self.agree += int(trained.sum())
            self.mass += float(batch["topk_logprobs"][trained].double().exp().sum())
            self.fid_positions += int(trained.sum())
        elif "topk_ids" in batch:
            self.fid_positions += int(trained.sum())

    def _add_chunk(self, logits: torch.Tensor, part: dict[str, torch.Tensor]) -> None:
        """Sums over one chunk of positions: logits [n, V], `part` the same positions' labels."""
        lse = torch.logsumexp(logits, dim=-1)
        top, pred = logits.max(dim=-1)
        has = part["has_target"]
        nll = (lse - logits.gather(-1, part["target"].unsqueeze(-1)).squeeze(-1))[has]
        conf, correct = (top - lse)[has].exp(), (pred == part["target"])[has].float()
        self.nll += float(nll.double().sum())
        if self.byte_len is not None:
            table = self.byte_len.to(part["target"].device)
            self.bytes += float(table[part["target"][has]].sum())
        self.correct += float(correct.sum())
        self.bins += calibration_bins(conf, correct).cpu()
        if "topk_ids" not in part:
            return
        if "trained" in part:  # 1.3: fidelity at the trained (labeled) positions only
            sel = part["trained"]
            logits, lse, pred = logits[sel], lse[sel], pred[sel]
            part = {k: v[sel] for k, v in part.items()}
        on_topk = logits.gather(-1, part["topk_ids"]) - lse.unsqueeze(-1)
        if "label_mask" in part:  # topp/sampled padding: p = 0 for teacher and student
            on_topk = on_topk.masked_fill(~part["label_mask"], PAD_LOGPROB)
        self.kl += float(tail_kl(part["topk_logprobs"], part["tail_mass"], on_topk).double().sum())
        agree = pred == part["topk_ids"][..., 0]
        if "label_mask" in part:  # a top-1 without a student id (cross_tokenizer.py) never agrees
            agree &= part["label_mask"][..., 0]
        self.agree += float(agree.sum())
        self.mass += float(mass_on_teacher_topk(on_topk).double().sum())

    def fresh(self) -> "MetricSums":
        """Empty sums of the same kind (the same byte table), for another set of rows."""
        return MetricSums(byte_len=self.byte_len)

    def result(self) -> dict[str, float | None]:
        """Means per position. Fidelity is None on a dataset without soft labels."""
        fid = self.fid_positions
        ce = self.nll / self.positions if self.positions else math.nan
        return {
            "kl_tail": self.kl / fid if fid else None,
            "top1_agreement": self.agree / fid if fid else None,
            "topk_mass": self.mass / fid if fid else None,
            "ce": ce, "perplexity": math.exp(min(ce, 700.0)),
            "bits_per_byte": self.nll / self.bytes / math.log(2) if self.bytes else None,
            "byte_perplexity": math.exp(min(self.nll / self.bytes, 700.0)) if self.bytes
            else None,
            "top1_accuracy": self.correct / self.positions if self.positions else math.nan,
            "ece": ece_from_bins(self.bins),
            "positions": self.positions, "fidelity_positions": fid,
            "bytes": int(self.bytes) if self.byte_len is not None else None,
        }


def _flat_positions(batch: dict[str, torch.Tensor], fidelity: bool) -> dict[str, torch.Tensor]:
    """Per position (row-major, R·L): the next token and whether it is scored (not at a row's
    last position; with a 1.3 loss mask, only trained positions), and with `fidelity` the
    stored labels (and `trained`, where they are)."""
    ids = batch["input_ids"]
    target = torch.nn.functional.pad(ids[:, 1:], (0, 1))
    has = torch.ones_like(ids, dtype=torch.bool)
    has[:, -1] = False
    if "loss_mask" in batch:
        has &= batch["loss_mask"]
    out = {"target": target.reshape(-1), "has_target": has.reshape(-1)}
    if fidelity and "loss_mask" in batch:
        out["trained"] = batch["loss_mask"].reshape(-1)
    if fidelity:
        for key in ("topk_ids", "topk_logprobs", "tail_mass", "label_mask"):
            if key in batch:
                value = batch[key]
                out[key] = value.reshape(-1, *value.shape[2:])
    return out
