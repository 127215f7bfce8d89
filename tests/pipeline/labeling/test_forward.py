"""Teacher logits → stored labels (pipeline/labeling/forward.py), with stand-in teachers whose
logits are chosen here: which logits are refused (NaN, +inf, a position with no finite logit,
naming the rows) and which are kept (huge but finite values, -inf outside the top k), and the
types label_tokens hands the writer. Behaviour only: how finiteness is detected is free.
"""

import math

import numpy as np
import pytest
import torch

from pipeline.errors import PipelineError
from pipeline.labeling import modes as M
from pipeline.labeling.forward import check_finite, label_tokens, topk_from_logits
from pipeline.softlabels import schema as S

CPU = torch.device("cpu")
V = 6


class Table(torch.nn.Module):
    """A teacher whose logits at a position are row `token` of a fixed table."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = table

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.table[ids]


def table(**rows) -> torch.Tensor:
    """Token t's logits: log of (t + 1, 1, 2, 3, 4, 5), then the overrides token=logits."""
    t = torch.log(torch.arange(1.0, V + 1)).repeat(V, 1)
    t[:, 0] = torch.log(torch.arange(1.0, V + 1))
    for token, logits in rows.items():
        t[int(token[1:])] = torch.tensor(logits)
    return t


def tokens(*rows) -> np.ndarray:
    return np.array(rows, dtype=np.int32)


def test_check_finite_names_every_row_with_a_bad_logit_plus_the_offset():
    logits = torch.zeros(5, 3, 4)
    logits[1, 2, 3], logits[3, 0, 0], logits[4, 1, 1] = math.nan, math.inf, -math.inf
    with pytest.raises(PipelineError, match=r"^teacher produced NaN/inf logits for train/part-1 "
                                            r"rows \[11, 13, 14\]; refusing the batch"):
        check_finite(logits, 10, "train/part-1")


def test_check_finite_keeps_huge_finite_logits():
    """2e38 at the same vocabulary index of every position: finite (fp32 max is 3.4e38), even
    though three of them add up to more than that."""
    logits = torch.zeros(2, 3, 4)
    logits[..., 0] = 2e38
    check_finite(logits, 0, "ok")
    check_finite(torch.full((2, 3, 4096), 65504.0, dtype=torch.float16), 0, "ok")


def test_label_tokens_stores_the_top_k_of_each_position():
    t = table()
    ids, lp, tail = label_tokens(Table(t), tokens([0, 5], [2, 3]), 2, 1, CPU)
    want_ids, want_lp, want_tail = topk_from_logits(t[torch.tensor([[0, 5], [2, 3]])], 2)
    assert ids.dtype == np.int32 and lp.dtype == np.float32 and tail.dtype == np.float32
    assert ids.shape == (2, 2, 2) and tail.shape == (2, 2)
    np.testing.assert_array_equal(ids, want_ids.numpy())
    np.testing.assert_array_equal(lp, want_lp.numpy())
    np.testing.assert_array_equal(tail, want_tail.numpy())
    assert ids[0, 0].tolist() == [5, 4]  # token 0's logits: log(1..6), largest last


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_label_tokens_refuses_a_nan_or_inf_logit_naming_its_row(bad):
    t = table(t4=[0.0, 1.0, bad, 0.5, 0.0, 0.0])
    rows = tokens([0, 1], [2, 3], [1, 4], [4, 4], [0, 0])
    with pytest.raises(PipelineError, match=r"for shard-x rows \[2, 3\];"):
        label_tokens(Table(t), rows, 2, 2, CPU, "shard-x")


def test_label_tokens_refuses_a_position_without_a_finite_logit():
    t = table(t1=[-math.inf] * V)
    with pytest.raises(PipelineError, match=r"rows \[1\]"):
        label_tokens(Table(t), tokens([0, 0], [0, 1]), 2, 8, CPU)


def test_a_minus_infinity_logit_outside_the_top_k_is_a_probability_of_zero():
    t = table(t2=[0.0, -math.inf, 1.0, 2.0, -math.inf, 0.5])
    ids, lp, tail = label_tokens(Table(t), tokens([2, 2]), 4, 1, CPU)
    assert ids[0, 0].tolist() == [3, 2, 5, 0] and np.isfinite(lp).all()
    assert tail[0, 0] == pytest.approx(0.0, abs=1e-6)  # the two -inf hold no mass


@pytest.mark.parametrize("chunk", [1, 3, 0])
def test_label_tokens_is_the_same_for_every_batch_size_and_chunk(chunk):
    rows = tokens([0, 1, 2], [3, 4, 5], [5, 4, 3], [1, 1, 0])
    whole = label_tokens(Table(table()), rows, 3, 4, CPU, chunk=0)
    parts = label_tokens(Table(table()), rows, 3, 3, CPU, chunk=chunk)
    for a, b in zip(whole, parts):
        np.testing.assert_array_equal(a, b)


def test_label_tokens_reports_the_tokens_of_each_batch():
    seen = []
    label_tokens(Table(table()), tokens([0, 1], [2, 3], [4, 5]), 2, 2, CPU, on_batch=seen.append)
    assert seen == [4, 2]


def test_other_modes_refuse_non_finite_logits_before_picking():
    spec = S.LabelSpec("topp", 3, V, "uint16", top_p=0.9, min_k=1)
    t = table(t3=[0.0, math.nan, 0.0, 0.0, 0.0, 0.0])
    with pytest.raises(PipelineError, match=r"rows \[1\]"):
        label_tokens(Table(t), tokens([0, 1], [3, 0]), 3, 2, CPU,
                     select=M.selector(spec, "train", 0))


def test_sampled_mode_outputs_are_int32_counts_and_float32_values():
    spec = S.LabelSpec("sampled", 4, V, "uint16", samples=4, proposal_temperature=2.0, seed=1)
    out = label_tokens(Table(table()), tokens([0, 1], [2, 3]), 4, 1, CPU,
                       select=M.selector(spec, "train", 0))
    ids, lp, tail, counts, hits, log_norm = out
    assert [a.dtype for a in out] == [np.int32, np.float32, np.float32, np.int32, np.int32,
                                      np.float32]
    assert counts.shape == (2, 2) and hits.sum(-1).tolist() == [[4, 4], [4, 4]]
