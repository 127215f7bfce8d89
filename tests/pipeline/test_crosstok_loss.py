"""The cross-tokenizer loss against dense float64 references (tests/pipeline/test_losses.py
style): with identical vocabularies it is `kl_tail`; unmapped ids join the tail bucket."""

import pytest
import torch

from pipeline.training.crosstok import crosstok_loss, mapped_kl, uld
from pipeline.training.losses import LossSpec, compute_loss
from tests.pipeline.test_losses import _case, _teacher_topk


def _identity_batch(t, k):
    ids, lp, tail = _teacher_topk(t, k)
    b, n = t.shape[:2]
    input_ids = torch.randint(0, t.shape[-1], (b, n), generator=torch.Generator().manual_seed(1))
    ce_mask = torch.ones(b, n, dtype=torch.bool)
    ce_mask[:, -1] = False
    return {"input_ids": input_ids, "topk_ids": ids, "topk_logprobs": lp, "tail_mass": tail,
            "ce_mask": ce_mask, "kd_pos": torch.arange(n).expand(b, n)}


@pytest.mark.parametrize("seed,k,tau", [(0, 5, 1.0), (1, 12, 1.0), (2, 7, 2.0)])
def test_identical_vocabularies_reduce_to_kl_tail(seed, k, tau):
    t, s = _case(seed)
    batch = _identity_batch(t, k)
    spec = LossSpec(kind="crosstok", alpha=0.3, temperature=tau, uld_weight=0.0)
    got = crosstok_loss(s, batch, spec)
    ref = compute_loss(s, batch, LossSpec(kind="kl_tail", alpha=0.3, temperature=tau))
    for part in ("loss", "kd", "ce"):
        torch.testing.assert_close(got[part], ref[part], rtol=1e-5, atol=1e-6)
    assert float(got["unmapped"]) == 0.0


def test_unmapped_ids_are_a_rest_bucket_dense_reference():
    t, s = _case(3, shape=(4,), vocab=30)
    ids, lp, tail = _teacher_topk(t, 6)
    ids = ids.clone()
    ids[:, [1, 4]] = -1  # those teacher tokens have no student spelling
    kl, u = mapped_kl(torch.log_softmax(s, -1), ids, lp, tail)
    p, q = torch.softmax(t.double(), -1), torch.softmax(s.double(), -1)
    for n in range(4):
        m = ids[n] >= 0
        pm = lp[n][m].double().exp()
        pm = pm / pm.sum() * (1 - tail[n].double() - u[n].double())  # the kept top-k mass
        qm = q[n][ids[n][m]]
        p_rest, q_rest = 1 - pm.sum(), 1 - qm.sum()
        ref = (pm * (pm / qm).log()).sum() + p_rest * (p_rest / q_rest).log()
        assert abs(float(kl[n]) - float(ref)) < 1e-4
        assert abs(float(u[n]) - float(p[n][_teacher_topk(t, 6)[0][n][~m]].sum())) < 1e-5


def test_uld_is_sorted_l1_with_tails():
    t_lp = torch.tensor([[0.2, 0.5]]).log()  # unsorted on purpose; tail 0.3
    s_lp = torch.tensor([[0.1, 0.6, 0.3]]).log()
    got = uld(s_lp, t_lp, torch.tensor([0.3]))
    # sorted teacher (0.5, 0.2) vs student top-2 (0.6, 0.3); tails 0.3 vs 0.1
    assert abs(float(got) - (0.1 + 0.1 + 0.2)) < 1e-6


def test_unaligned_positions_get_ce_only():
    t, s = _case(4)
    batch = _identity_batch(t, 5)
    batch["kd_pos"] = torch.full_like(batch["kd_pos"], -1)
    spec = LossSpec(kind="crosstok", alpha=0.5, uld_weight=1.0)
    got = crosstok_loss(s, batch, spec)
    assert float(got["kd"]) == 0.0 and float(got["uld"]) == 0.0
    torch.testing.assert_close(got["loss"], 0.5 * got["ce"])


def test_bits_per_byte_counts_the_bytes_of_each_scored_token():
    import math

    from pipeline.evaluation.metrics import MetricSums

    logits = torch.zeros(1, 3, 4)  # uniform over 4 tokens: 2 bits per token
    sums = MetricSums(byte_len=torch.tensor([1, 2, 4, 1]))
    sums.add(logits, {"input_ids": torch.tensor([[0, 1, 2]])})
    r = sums.result()  # targets 1 and 2: 6 bytes, 4 bits
    assert abs(r["bits_per_byte"] - 4 / 6) < 1e-6
    assert abs(r["byte_perplexity"] - math.exp(2 * math.log(4) / 6)) < 1e-6
