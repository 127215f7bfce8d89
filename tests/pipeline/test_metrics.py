"""Metric functions against values computed by hand (and a dense reference for the tail KL)."""

import math

import pytest
import torch

from pipeline.evaluation.metrics import (
    MetricSums,
    calibration_bins,
    expected_calibration_error,
    mass_on_teacher_topk,
    next_token_nll,
    student_topk_logprobs,
    tail_kl,
    top1_agreement,
    top1_confidence_and_correct,
)


def _labels(p_full: torch.Tensor, k: int):
    """Teacher top-k labels from a full distribution [..., V], as the labeler stores them."""
    probs, ids = p_full.sort(-1, descending=True)
    return ids[..., :k], probs[..., :k].log(), (1 - probs[..., :k].sum(-1)).clamp_min(0)


def test_tail_kl_hand_computed():
    # teacher p = [.5, .3, .15, .05], stored k=2 → S = {0, 1}, tail r = .2; student uniform.
    p = torch.tensor([[[0.5, 0.3, 0.15, 0.05]]])
    ids, lp, tail = _labels(p, 2)
    s = torch.full((1, 1, 4), math.log(0.25))
    kl = tail_kl(lp, tail, student_topk_logprobs(s, ids))
    # .5 ln(.5/.25) + .3 ln(.3/.25) + .2 ln(.2/.5)
    expected = 0.5 * math.log(2) + 0.3 * math.log(1.2) + 0.2 * math.log(0.4)
    assert expected == pytest.approx(0.218012, abs=1e-6)
    assert kl.shape == (1, 1)
    assert kl.item() == pytest.approx(expected, abs=1e-6)


def test_tail_kl_equals_full_kl_when_k_is_vocab_and_bounds_it_otherwise():
    torch.manual_seed(0)
    p = torch.softmax(torch.randn(3, 5, 11) * 2, -1)
    s = torch.log_softmax(torch.randn(3, 5, 11), -1)
    full = (p * (p.log() - s)).sum(-1)
    ids, lp, tail = _labels(p, 11)
    assert torch.allclose(tail_kl(lp, tail, student_topk_logprobs(s, ids)), full, atol=1e-5)
    for k in (1, 3, 7):
        ids, lp, tail = _labels(p, k)
        coarse = tail_kl(lp, tail, student_topk_logprobs(s, ids))
        assert (coarse <= full + 1e-5).all() and (coarse >= -1e-6).all()


def test_tail_kl_zero_for_identical_and_finite_without_tail():
    p = torch.tensor([[[0.7, 0.2, 0.1]]])
    ids, lp, tail = _labels(p, 3)  # k = V: tail 0 → the 0·log 0 term must be 0, not NaN
    kl = tail_kl(lp, tail, student_topk_logprobs(p.log(), ids))
    # ≈ 0 up to the loss's floor on the student tail (MIN_STUDENT_TAIL = 1e-6)
    assert torch.isfinite(kl).all() and kl.abs().item() < 1e-5


def test_agreement_and_mass_on_topk():
    teacher_top1 = torch.tensor([[2, 0]])
    logits = torch.tensor([[[0.0, 1.0, 3.0], [0.0, 5.0, 1.0]]])
    assert top1_agreement(teacher_top1, logits).tolist() == [[1.0, 0.0]]
    s = torch.log(torch.tensor([[[0.1, 0.3, 0.6]]]))
    mass = mass_on_teacher_topk(student_topk_logprobs(s, torch.tensor([[[2, 0]]])))
    assert mass.item() == pytest.approx(0.7, abs=1e-6)


def test_next_token_nll_and_top1_accuracy():
    probs = torch.tensor([[[0.1, 0.2, 0.7], [0.5, 0.4, 0.1], [0.3, 0.3, 0.4]]])
    ids = torch.tensor([[0, 2, 1]])  # targets: position 0 → 2, position 1 → 1; last has none
    nll = next_token_nll(probs.log(), ids)
    assert nll.shape == (1, 2)
    assert nll[0].tolist() == pytest.approx([-math.log(0.7), -math.log(0.4)], abs=1e-6)
    conf, correct = top1_confidence_and_correct(probs.log(), ids)
    assert conf[0].tolist() == pytest.approx([0.7, 0.5], abs=1e-6)
    assert correct.tolist() == [[1.0, 0.0]]


def test_ece_hand_computed():
    conf = torch.tensor([0.95, 0.95, 0.55, 0.55, 0.25])
    correct = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0])
    # bins (15): .95 → 14, .55 → 8, .25 → 3.
    # |.95 − .5|·2/5 + |.55 − 1|·2/5 + |.25 − 0|·1/5 = .18 + .18 + .05
    assert expected_calibration_error(conf, correct) == pytest.approx(0.41, abs=1e-6)
    bins = calibration_bins(conf, correct)
    assert bins[0].tolist() == [0, 0, 0, 1, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 2]


def test_ece_edges_and_perfect_calibration():
    # confidence 1.0 goes in the last bin; 0.0 in the first
    bins = calibration_bins(torch.tensor([1.0, 0.0]), torch.tensor([1.0, 0.0]))
    assert bins[0, -1] == 1 and bins[0, 0] == 1
    # a bin whose accuracy equals its mean confidence contributes nothing
    conf = torch.full((10,), 0.7)
    correct = torch.tensor([1.0] * 7 + [0.0] * 3)
    assert expected_calibration_error(conf, correct) == pytest.approx(0.0, abs=1e-6)
    assert math.isnan(expected_calibration_error(torch.tensor([]), torch.tensor([])))


def test_metric_sums_match_reference_over_batches():
    torch.manual_seed(1)
    V, K = 9, 3
    logits = torch.randn(4, 6, V)
    ids = torch.randint(0, V, (4, 6))
    p = torch.softmax(torch.randn(4, 6, V), -1)
    t_ids, t_lp, t_tail = _labels(p, K)
    batch = {"input_ids": ids, "topk_ids": t_ids, "topk_logprobs": t_lp, "tail_mass": t_tail}
    sums = MetricSums()
    for lo in (0, 2):  # two batches of rows: sums must equal one pass over all rows
        sums.add(logits[lo:lo + 2], {k: v[lo:lo + 2] for k, v in batch.items()})
    res = sums.result()
    ce = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, V), ids[:, 1:].reshape(-1))
    assert res["ce"] == pytest.approx(ce.item(), abs=1e-5)
    assert res["perplexity"] == pytest.approx(math.exp(ce.item()), rel=1e-5)
    assert res["positions"] == 4 * 5 and res["fidelity_positions"] == 4 * 6
    s = torch.log_softmax(logits, -1)
    assert res["kl_tail"] == pytest.approx(
        tail_kl(t_lp, t_tail, student_topk_logprobs(s, t_ids)).mean().item(), abs=1e-5)
    assert res["top1_agreement"] == pytest.approx(
        (logits.argmax(-1) == t_ids[..., 0]).float().mean().item())


def test_metric_sums_teacher_row_and_tokens_only():
    p = torch.softmax(torch.randn(2, 4, 7), -1)
    t_ids, t_lp, t_tail = _labels(p, 2)
    batch = {"input_ids": torch.randint(0, 7, (2, 4)), "topk_ids": t_ids,
             "topk_logprobs": t_lp, "tail_mass": t_tail}
    teacher = MetricSums()
    teacher.add(p.log(), batch, is_teacher=True)
    res = teacher.result()
    assert res["kl_tail"] == 0.0 and res["top1_agreement"] == 1.0
    assert res["topk_mass"] == pytest.approx((1 - t_tail).mean().item(), abs=1e-6)
    plain = MetricSums()
    plain.add(p.log(), {"input_ids": batch["input_ids"]})
    assert plain.result()["kl_tail"] is None and plain.result()["ce"] > 0
