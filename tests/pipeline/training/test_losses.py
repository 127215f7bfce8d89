"""Edges of the loss formulas (pipeline/training/losses.py) against float64 references written
here: log(1 - e^x) at both ends of its range, tails a rounding error outside [0, 1], and the
format 1.3 loss mask — only trained positions count, in both terms, whatever the other
positions hold. (The formulas themselves: tests/pipeline/test_losses.py.)
"""

import math

import pytest
import torch

from pipeline.training.losses import (
    LossSpec,
    _log1mexp,
    compute_loss,
    kl_tail_from_gathered,
    loss_from_gathered,
)


@pytest.mark.parametrize("x", [-1e-7, -1e-6, -1e-3, -0.5, -0.6931, -0.7, -2.0, -20.0, -80.0])
def test_log1mexp_keeps_its_relative_precision_at_both_ends(x):
    """Near 0, 1 - e^x cancels (log1p(-e^x) is off by %); far below, e^x vanishes next to 1
    (log(-expm1(x)) rounds to 0): each formula is used where it is exact."""
    got = float(_log1mexp(torch.tensor([x]))[0])
    assert got == pytest.approx(math.log(-math.expm1(x)), rel=1e-6)


def reference_kl_tail(s: torch.Tensor, lp: torch.Tensor, r: float) -> float:
    """KL over S ∪ {tail} at one position, float64: p renormalised to 1 - r inside S."""
    s, lp = s.double(), lp.double()
    p = lp.exp() / lp.exp().sum() * (1 - r)
    q = s.exp()
    q_tail = 1 - q.sum()
    inside = float((torch.xlogy(p, p) - p * q.log()).sum())  # 0 log 0 = 0
    return inside + (r * math.log(r / float(q_tail)) if r > 0 else 0.0)


@pytest.mark.parametrize("stored, r", [(-1e-7, 0.0), (0.0, 0.0), (1.0 + 1e-7, 1.0),
                                       (1.0, 1.0), (0.25, 0.25)])
def test_a_tail_a_rounding_error_outside_zero_one_counts_as_its_edge(stored, r):
    s = torch.log(torch.tensor([0.5, 0.2, 0.1]))
    lp = torch.log(torch.tensor([0.6, 0.3, 0.1]))
    got = kl_tail_from_gathered(s, lp, torch.tensor(stored))
    assert math.isfinite(float(got))
    assert float(got) == pytest.approx(reference_kl_tail(s, lp, r), rel=1e-5, abs=1e-6)


# -- the 1.3 loss mask ----------------------------------------------------------------------------

B, L, V = 2, 5, 6


def masked_batch(seed: int = 0):
    """Labels with k = vocab (kl_tail is then the dense KL), a loss mask, and garbage (NaN) in
    every label of an untrained position: nothing there may reach the loss."""
    g = torch.Generator().manual_seed(seed)
    teacher = torch.randn(B, L, V, generator=g) * 2
    student = torch.randn(B, L, V, generator=g) * 2
    lp = torch.log_softmax(teacher.double(), -1)
    values, ids = lp.topk(V, -1)
    mask = torch.tensor([[True, False, True, True, True], [False, True, False, False, False]])
    batch = {"input_ids": torch.randint(0, V, (B, L), generator=g), "topk_ids": ids,
             "topk_logprobs": values.float().masked_fill(~mask[..., None], math.nan),
             "tail_mass": torch.zeros(B, L).masked_fill(~mask, math.nan), "loss_mask": mask}
    return teacher, student, batch


def dense_parts(teacher, student, batch):
    """The expected CE and KD: means over trained positions (CE also needs the next token in
    the row, so never at the last position)."""
    t, s = torch.log_softmax(teacher.double(), -1), torch.log_softmax(student.double(), -1)
    mask = batch["loss_mask"]
    kl = (t.exp() * (t - s)).sum(-1)[mask]
    nxt = s[:, :-1].gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
    ce_mask = mask.clone()
    ce_mask[:, -1] = False
    return float(-nxt[ce_mask[:, :-1]].mean()), float(kl.mean())


@pytest.mark.parametrize("alpha", [1.0, 0.3])
def test_only_trained_positions_count_in_both_terms(alpha):
    teacher, student, batch = masked_batch()
    ce, kd = dense_parts(teacher, student, batch)
    out = compute_loss(student, batch, LossSpec("kl_tail", alpha=alpha))
    assert float(out["ce"]) == pytest.approx(ce, rel=1e-5)
    assert float(out["kd"]) == pytest.approx(kd, rel=1e-5)
    assert float(out["loss"]) == pytest.approx(alpha * kd + (1 - alpha) * ce, rel=1e-5)


def test_a_ce_only_student_uses_the_mask_too():
    teacher, student, batch = masked_batch(1)
    ce, _ = dense_parts(teacher, student, batch)
    out = compute_loss(student, batch, LossSpec("ce"))
    assert set(out) == {"ce", "loss"} and float(out["loss"]) == pytest.approx(ce, rel=1e-5)


def test_a_single_trained_position_is_the_whole_mean():
    teacher, student, batch = masked_batch(3)
    batch["loss_mask"] = torch.zeros(B, L, dtype=torch.bool)
    batch["loss_mask"][1, 1] = True  # trained in masked_batch too: its labels are real
    ce, kd = dense_parts(teacher, student, batch)
    out = compute_loss(student, batch, LossSpec("kl_tail", alpha=0.5))
    assert float(out["kd"]) == pytest.approx(kd, rel=1e-5)
    assert float(out["ce"]) == pytest.approx(ce, rel=1e-5)


def test_a_batch_without_trained_positions_has_a_zero_loss_with_a_gradient():
    _, student, batch = masked_batch(2)
    batch["loss_mask"] = torch.zeros(B, L, dtype=torch.bool)
    student.requires_grad_(True)
    out = compute_loss(student, batch, LossSpec("kl_tail", alpha=0.5))
    assert [out[k].item() for k in ("loss", "kd", "ce")] == [0.0, 0.0, 0.0]
    out["loss"].backward()
    assert student.grad is not None and float(student.grad.abs().sum()) == 0.0


def test_gathered_next_token_log_probabilities_may_include_the_last_position():
    """Chunked training hands s_target [B, L]: its last column has no target and is ignored,
    with or without a mask."""
    s = torch.full((B, L, 1), -0.5)
    labels = {"topk_logprobs": torch.zeros(B, L, 1), "tail_mass": torch.zeros(B, L)}
    s_target = torch.full((B, L), -2.0)
    s_target[:, -1] = -1e6
    for mask in (None, torch.ones(B, L, dtype=torch.bool)):
        batch = {"input_ids": torch.zeros(B, L, dtype=torch.long), **labels}
        if mask is not None:
            batch["loss_mask"] = mask
        for target in (s_target, s_target[:, :-1]):
            out = loss_from_gathered(s, target, batch, LossSpec("kl_tail", alpha=0.0))
            assert float(out["ce"]) == pytest.approx(2.0)
