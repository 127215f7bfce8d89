"""Losses against a dense full-vocabulary reference (small vocabularies, float64 ground truth)."""

import pytest
import torch
import torch.nn.functional as F

from pipeline.softlabels.ragged import PAD_LOGPROB
from pipeline.training.losses import (
    LossSpec,
    compute_loss,
    kl_renorm_from_gathered,
    kl_tail_from_gathered,
    tail_kl_per_position,
)


def _teacher_topk(t_logits: torch.Tensor, k: int):
    """Exact top-k labels as the labeler stores them: ids, log-probs, tail from float64."""
    lp = torch.log_softmax(t_logits.double(), -1)
    vals, ids = torch.topk(lp, k, dim=-1)
    tail = (1.0 - vals.exp().sum(-1)).clamp(0.0, 1.0)
    return ids, vals.float(), tail.float()


def _dense_kl(t_logits, s_logits, tau=1.0):
    lp = torch.log_softmax(t_logits.double() / tau, -1)
    ls = torch.log_softmax(s_logits.double() / tau, -1)
    return (lp.exp() * (lp - ls)).sum(-1)


def _case(seed=0, shape=(3, 5), vocab=40, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(*shape, vocab, generator=g) * scale
    s = torch.randn(*shape, vocab, generator=g) * scale
    return t, s


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kl_tail_equals_dense_kl_when_k_is_vocab(seed):
    t, s = _case(seed)
    ids, lp, tail = _teacher_topk(t, t.shape[-1])
    got = tail_kl_per_position(torch.log_softmax(s, -1), ids, lp, tail)
    torch.testing.assert_close(got.double(), _dense_kl(t, s), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("k", [1, 2, 5, 17, 39])
def test_kl_tail_never_exceeds_dense_kl_and_matches_design_formula(k):
    t, s = _case(k)
    ids, lp, tail = _teacher_topk(t, k)
    ls = torch.log_softmax(s.double(), -1)
    got = tail_kl_per_position(ls.float(), ids, lp, tail).double()
    assert (got <= _dense_kl(t, s) + 1e-5).all()
    assert (got >= -1e-6).all()
    # The kl_tail formula (pipeline/training/losses.py) written out directly in float64.
    si = torch.gather(ls, -1, ids)
    p = lp.double().exp()
    r = tail.double()
    q_r = 1.0 - si.exp().sum(-1)
    direct = (p * (lp.double() - si)).sum(-1) + torch.xlogy(r, r) - r * torch.log(q_r)
    torch.testing.assert_close(got, direct, atol=1e-4, rtol=1e-4)


def test_temperature_scales_within_the_stored_set():
    t, s = _case(3)
    v, tau = t.shape[-1], 2.0
    ids, lp, tail = _teacher_topk(t, v)
    si = torch.gather(torch.log_softmax(s, -1), -1, ids)
    got = kl_tail_from_gathered(si, lp, tail, temperature=tau).double()
    # k = vocab: the tail is empty, so the tempered coarse KL is tau^2 * the tempered dense KL.
    torch.testing.assert_close(got, tau ** 2 * _dense_kl(t, s, tau), atol=1e-4, rtol=1e-4)


def test_kl_renorm_ignores_the_tail():
    t, s = _case(4)
    ids, lp, tail = _teacher_topk(t, 6)
    si = torch.gather(torch.log_softmax(s, -1), -1, ids)
    got = kl_renorm_from_gathered(si, lp)
    p = torch.softmax(lp.double(), -1)
    q = torch.softmax(si.double(), -1)
    torch.testing.assert_close(got.double(), (p * (p.log() - q.log())).sum(-1), atol=1e-5,
                               rtol=1e-5)
    # Same conditional, different tail: renorm cannot tell; kl_tail can.
    torch.testing.assert_close(got, kl_renorm_from_gathered(si - 1.0, lp))
    assert not torch.allclose(kl_tail_from_gathered(si, lp, tail),
                              kl_tail_from_gathered(si - 1.0, lp, tail))


@pytest.mark.parametrize("k,tail_value", [(1, 0.0), (1, None), (4, 0.0)])
def test_gradients_finite_with_k1_and_zero_tail(k, tail_value):
    vocab = 12
    logits = torch.randn(2, 6, vocab) * 20  # confident student: q_r underflows
    logits.requires_grad_(True)
    ids = torch.randint(0, vocab, (2, 6, k))
    lp = torch.log_softmax(torch.randn(2, 6, k), -1) if k > 1 else torch.zeros(2, 6, 1)
    tail = torch.zeros(2, 6) if tail_value == 0.0 else torch.rand(2, 6)
    batch = {"input_ids": torch.randint(0, vocab, (2, 6)), "topk_ids": ids,
             "topk_logprobs": lp, "tail_mass": tail}
    for kind in ("kl_tail", "kl_renorm"):
        out = compute_loss(logits, batch, LossSpec(kind, alpha=0.7, temperature=2.0))
        (grad,) = torch.autograd.grad(out["loss"], logits)
        assert torch.isfinite(out["loss"]) and torch.isfinite(grad).all(), kind


def test_ce_matches_cross_entropy_and_alpha_mixes():
    vocab = 30
    logits = torch.randn(2, 7, vocab)
    ids = torch.randint(0, vocab, (2, 7))
    t = torch.randn(2, 7, vocab)
    tid, tlp, tail = _teacher_topk(t, 5)
    batch = {"input_ids": ids, "topk_ids": tid, "topk_logprobs": tlp, "tail_mass": tail}
    ce = compute_loss(logits, batch, LossSpec("ce"))
    ref = F.cross_entropy(logits[:, :-1].reshape(-1, vocab), ids[:, 1:].reshape(-1))
    torch.testing.assert_close(ce["loss"], ref)
    mixed = compute_loss(logits, batch, LossSpec("kl_tail", alpha=0.25))
    kd = tail_kl_per_position(torch.log_softmax(logits, -1), tid, tlp, tail).mean()
    torch.testing.assert_close(mixed["kd"], kd)
    torch.testing.assert_close(mixed["loss"], 0.25 * kd + 0.75 * ref)


def test_only_one_vocab_sized_tensor_is_kept_for_backward():
    b, seq, vocab = 2, 5, 64
    logits = torch.randn(b, seq, vocab, requires_grad=True)
    tid, tlp, tail = _teacher_topk(torch.randn(b, seq, vocab), 4)
    batch = {"input_ids": torch.randint(0, vocab, (b, seq)), "topk_ids": tid,
             "topk_logprobs": tlp, "tail_mass": tail}
    big = set()

    def pack(x):
        if x.numel() >= b * seq * vocab:
            big.add(x.untyped_storage().data_ptr())
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        compute_loss(logits, batch, LossSpec("kl_tail", alpha=0.5))
    assert len(big) <= 1


@pytest.mark.parametrize("k,tau", [(3, 2.0), (7, 0.5), (1, 3.0)])
def test_tempered_kl_tail_with_a_tail_is_the_documented_formula(k, tau):
    """README "Losses": KL_bin(1−r ‖ 1−q_r) + (1−r)·τ²·KL(p_S^τ ‖ q_S^τ), written out in float64
    from the dense distributions (not from the code's own helpers): τ² on the tempered
    conditional only, never on the binary stored-set-vs-tail part."""
    t, s = _case(10 + k)
    p_full, q_full = torch.softmax(t.double(), -1), torch.softmax(s.double(), -1)
    ids, lp, tail = _teacher_topk(t, k)
    p, q = torch.gather(p_full, -1, ids), torch.gather(q_full, -1, ids)
    r, q_r = 1.0 - p.sum(-1), 1.0 - q.sum(-1)
    binary = (1 - r) * torch.log((1 - r) / (1 - q_r)) + r * torch.log(r / q_r)
    p_tau = p ** (1 / tau) / (p ** (1 / tau)).sum(-1, keepdim=True)
    q_tau = q ** (1 / tau) / (q ** (1 / tau)).sum(-1, keepdim=True)
    conditional = (p_tau * torch.log(p_tau / q_tau)).sum(-1)
    want = binary + (1 - r) * tau ** 2 * conditional

    si = torch.gather(torch.log_softmax(s, -1), -1, ids)
    got = kl_tail_from_gathered(si, lp, tail, temperature=tau).double()
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    # the test can tell: τ² on the binary part too would be off by far more than the tolerance
    wrong = tau ** 2 * binary + (1 - r) * tau ** 2 * conditional
    assert ((wrong - want).abs() > 1e-2).any()
    # and so is the mean over positions compute_loss trains on (alpha = 1: KD only)
    batch = {"input_ids": torch.zeros(t.shape[:-1], dtype=torch.long), "topk_ids": ids,
             "topk_logprobs": lp, "tail_mass": tail}
    out = compute_loss(s, batch, LossSpec("kl_tail", alpha=1.0, temperature=tau))
    torch.testing.assert_close(out["loss"].double(), want.mean(), atol=1e-4, rtol=1e-4)


def test_tempered_kl_renorm_and_compute_loss_pass_the_temperature_and_report_ce():
    """kl_renorm at τ is τ²·KL of the two renormalised, tempered sets (README "Losses"), and
    compute_loss reports the hard CE beside the KD part whatever the kind."""
    t, s = _case(5)
    ids, lp, tail = _teacher_topk(t, 6)
    tau = 2.0
    si = torch.gather(torch.log_softmax(s, -1), -1, ids)
    p, q = torch.softmax(lp.double() / tau, -1), torch.softmax(si.double() / tau, -1)
    want = tau ** 2 * (p * (p.log() - q.log())).sum(-1)
    got = kl_renorm_from_gathered(si, lp, temperature=tau)
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)
    targets = t.argmax(-1)
    batch = {"input_ids": targets, "topk_ids": ids, "topk_logprobs": lp, "tail_mass": tail}
    out = compute_loss(s, batch, LossSpec("kl_renorm", alpha=1.0, temperature=tau))
    torch.testing.assert_close(out["kd"].double(), want.mean(), atol=1e-5, rtol=1e-5)
    ce = F.cross_entropy(s[:, :-1].reshape(-1, s.shape[-1]), targets[:, 1:].reshape(-1))
    torch.testing.assert_close(out["ce"], ce)


@pytest.mark.parametrize("kind", ["kl_tail", "kl_renorm"])
def test_masked_padding_entries_carry_no_weight(kind):
    """Variable-length labels (topp) pad every position to k entries (id 0, PAD_LOGPROB) and
    send a mask: the loss must equal the loss on the unpadded entries alone."""
    t, s = _case(6, vocab=30)
    ids, lp, _ = _teacher_topk(t, 5)
    m = 3
    tail = (1.0 - lp[..., :m].double().exp().sum(-1)).float()
    mask = torch.zeros(ids.shape, dtype=torch.bool)
    mask[..., :m] = True
    padded = {"input_ids": t.argmax(-1), "topk_ids": ids.masked_fill(~mask, 0),
              "topk_logprobs": lp.masked_fill(~mask, PAD_LOGPROB), "tail_mass": tail,
              "label_mask": mask}
    plain = {"input_ids": t.argmax(-1), "topk_ids": ids[..., :m], "topk_logprobs": lp[..., :m],
             "tail_mass": tail}
    spec = LossSpec(kind, alpha=1.0, temperature=1.5)
    torch.testing.assert_close(compute_loss(s, padded, spec)["kd"],
                               compute_loss(s, plain, spec)["kd"], atol=1e-5, rtol=1e-5)
