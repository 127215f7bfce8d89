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


class _FixedLogits(torch.nn.Module):
    """A 'teacher' whose logits for token t are row t of a given table."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = table

    def forward(self, ids):
        return self.table[ids]


def test_label_tokens_refuses_each_non_finite_position_and_stores_a_lone_minus_inf_as_zero():
    """The top-k path checks its own outputs: NaN, +inf, +inf with -inf, and an all -inf
    position are refused by row; a -inf outside the top k is a probability of exactly 0."""
    table = torch.log(torch.tensor([[0.5, 0.3, 0.2, 0.0]] * 6))  # token 0: a -inf at id 3
    table[1, 2] = float("nan")
    table[2, 0] = float("inf")
    table[3, 0], table[3, 1] = float("inf"), float("-inf")
    table[4] = float("-inf")
    teacher = _FixedLogits(table)
    ids, lp, tail = label_tokens(teacher, np.array([[0, 5, 0]], np.int32), 2, 1,
                                 torch.device("cpu"), "train/part-00001")
    assert ids[0, 0].tolist() == [0, 1]
    assert np.allclose(np.exp(lp[0, 0]), [0.5, 0.3]) and np.isclose(tail[0, 0], 0.2)
    for bad in (1, 2, 3, 4):
        tokens = np.array([[0, 0], [0, 0], [5, bad]], np.int32)
        with pytest.raises(PipelineError, match=r"train/part-00001 rows \[2\]"):
            label_tokens(teacher, tokens, 2, 2, torch.device("cpu"), "train/part-00001")


def test_label_tokens_other_modes_check_the_logits_before_picking():
    table = torch.zeros(3, 5)
    table[2, 4] = float("-inf")  # finite outputs would not reveal it: the modes refuse it
    picked = []

    def select(first_row, rows, seq_len):
        return lambda logits, lo, hi: picked.append(lo) or (logits[:, :1],)

    with pytest.raises(PipelineError, match=r"shard rows \[1\]"):
        label_tokens(_FixedLogits(table), np.array([[0, 1], [2, 0]], np.int32), 1, 2,
                     torch.device("cpu"), select=select)
    assert picked == []


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
