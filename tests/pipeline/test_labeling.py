import numpy as np
import pytest
import torch

from pipeline.errors import PipelineError
from pipeline.labeling.forward import check_finite, label_tokens, topk_from_logits


def test_topk_matches_full_log_softmax_reference():
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 50) * 4
    ids, lp, tail = topk_from_logits(logits, 7)
    ref = torch.log_softmax(logits.double(), -1)
    ref_lp, ref_ids = ref.topk(7, -1)
    assert torch.equal(ids, ref_ids)
    assert torch.allclose(lp.double(), ref_lp, atol=1e-5)
    ref_tail = 1 - ref_lp.exp().sum(-1)
    assert torch.allclose(tail.double(), ref_tail, atol=1e-6)
    assert (lp[..., :-1] >= lp[..., 1:]).all()


def test_full_vocab_has_zero_tail_and_k1_works():
    logits = torch.randn(2, 4, 10)
    _, lp, tail = topk_from_logits(logits, 10)
    assert torch.allclose(tail, torch.zeros_like(tail), atol=1e-6)
    assert (lp <= 0).all()
    ids, lp1, tail1 = topk_from_logits(logits, 1)
    assert ids.shape == (2, 4, 1)
    assert torch.allclose(tail1, 1 - lp1.exp().squeeze(-1), atol=1e-6)


def test_non_finite_logits_refused_naming_rows():
    logits = torch.zeros(4, 3, 5)
    logits[2, 1, 0] = float("nan")
    with pytest.raises(PipelineError, match=r"train/part-00003 rows \[10\]"):
        check_finite(logits, 8, "train/part-00003")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_every_kind_of_non_finite_logit_refused_and_large_finite_ones_kept(dtype):
    logits = torch.full((5, 2, 4096), 60.0, dtype=dtype)  # a half-precision sum would overflow
    check_finite(logits, 0, "ok")
    for row, value in ((0, "nan"), (1, "inf"), (3, "-inf")):
        logits[row, 1, 7] = float(value)
    logits[4, 0, 0], logits[4, 0, 1] = float("inf"), float("-inf")  # the sum alone is NaN
    with pytest.raises(PipelineError, match=r"rows \[0, 1, 3, 4\]"):
        check_finite(logits, 0, "train/part-00000")


def test_label_tokens_batches_match_single_pass():
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Embedding(30, 8), torch.nn.Linear(8, 30))
    tokens = np.random.default_rng(0).integers(0, 30, size=(5, 6)).astype(np.int32)
    a = label_tokens(model, tokens, 4, 2, torch.device("cpu"))
    b = label_tokens(model, tokens, 4, 5, torch.device("cpu"))
    for x, y in zip(a, b):
        assert np.allclose(x, y, atol=1e-6)
    assert a[0].shape == (5, 6, 4) and a[2].shape == (5, 6)


def test_tail_is_never_negative_when_the_stored_mass_rounds_above_one():
    """With k = vocab the stored probabilities sum, in float, to up to ~1e-6 above 1 in many
    rows: the tail must still be a probability (clamped to [0, 1]), never negative."""
    g = torch.Generator().manual_seed(0)
    _, lp, tail = topk_from_logits(torch.randn(2000, 50, generator=g) * 5, 50)
    assert (tail >= 0).all() and (tail <= 1).all() and (lp <= 0).all()
