"""Label selection beyond top-k (pipeline/labeling/modes.py), unit by unit and without a teacher:
how options become a LabelSpec, which `pick` each mode hands label_tokens, where the uniforms of
sampled labels come from, and the edges of top-p and sampling that random logits never reach
(a set that reaches p exactly, a token of probability 0, ties, more draws than tokens).

Expectations come from the documented rules (README "Label modes", docs/FORMAT.md), from
torch's own generator seeded as documented, or from hand-made distributions.
"""

import math

import pytest
import torch

from pipeline.config.stages import LabelConfig
from pipeline.errors import ConfigError, PipelineError
from pipeline.labeling import modes as M
from pipeline.softlabels import schema as S


def cfg(**kw) -> LabelConfig:
    return LabelConfig(**{"corpus": "c.jsonl", "out": "o", **kw})


# -- options → LabelSpec ------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["topp", "sampled"])
def test_variable_modes_need_a_teacher(mode):
    with pytest.raises(PipelineError, match=f"^--mode {mode} needs a teacher; --top-k 0 "
                                            r"\(tokens only\) only goes with --mode topk$"):
        M.check_args(cfg(mode=mode, top_k=0))


def test_tokens_only_goes_with_topk_and_min_k_may_equal_max_k():
    M.check_args(cfg(mode="topk", top_k=0))
    M.check_args(cfg(mode="topp", min_k=4, max_k=4))
    M.check_args(cfg(mode="sampled", min_k=9, max_k=4))  # top-p options do not bind sampled


def test_min_k_above_max_k_is_refused_for_topp():
    with pytest.raises(PipelineError, match=r"^--min-k 5 / --max-k 4: need 1 <= min-k <= max-k "
                                            "<= 65535$"):
        M.check_args(cfg(mode="topp", min_k=5, max_k=4))


def test_top_k_options_build_the_format_1_2_spec():
    assert M.build_spec(cfg(top_k=8), 320) == S.LabelSpec(
        "topk", 8, 320, "uint16", "fp16", id_encoding="sorted_delta")
    assert M.build_spec(cfg(top_k=8, id_encoding="rank", logprob_encoding="fp32"), 70000) == \
        S.LabelSpec("topk", 8, 70000, "int32", "fp32")  # exactly the 1.0 spec


def test_u8_records_its_lowest_log_probability():
    spec = M.build_spec(cfg(top_k=4, logprob_encoding="u8", u8_min_logprob=-12), 320)
    assert spec.logprob_u8_min == -12.0 and isinstance(spec.logprob_u8_min, float)


def test_tokens_only_is_mode_none_without_label_fields():
    spec = M.build_spec(cfg(top_k=0, mode="topk", logprob_encoding="u8"), 320)
    assert spec == S.LabelSpec("none", 0, 320, "uint16", "u8")


def test_topp_stores_up_to_max_k_entries():
    spec = M.build_spec(cfg(mode="topp", top_p=0.5, min_k=2, max_k=320, id_encoding="rank"), 320)
    assert spec == S.LabelSpec("topp", 320, 320, "uint16", "fp16", top_p=0.5, min_k=2)
    assert isinstance(spec.top_p, float) and isinstance(spec.min_k, int)


def test_topp_max_k_beyond_the_vocabulary_is_refused():
    with pytest.raises(PipelineError, match="^--max-k 321 exceeds the vocabulary size 320$"):
        M.build_spec(cfg(mode="topp", max_k=321), 320)


@pytest.mark.parametrize("samples, k", [(8, 8), (320, 320), (500, 320)])
def test_sampled_stores_at_most_min_of_samples_and_vocabulary(samples, k):
    spec = M.build_spec(cfg(mode="sampled", samples=samples, seed=7, proposal_temperature=2,
                            id_encoding="rank"), 320)
    assert spec == S.LabelSpec("sampled", k, 320, "uint16", "fp16", samples=samples,
                               proposal_temperature=2.0, seed=7)
    assert isinstance(spec.proposal_temperature, float)


# -- top-p edges --------------------------------------------------------------------------------

def test_topp_keeps_the_entry_that_reaches_p_exactly():
    """The smallest set whose mass is >= p: when two entries hold exactly p, it has two."""
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0, -1.0]])
    _, lp, _, _ = M.topp_from_logits(logits, 1.0, 1, 5)
    p = float(torch.exp(lp[0, :2].double()).sum())  # the mass of the top two, as stored
    ids, lp2, tail, counts = M.topp_from_logits(logits, p, 1, 5)
    assert counts.tolist() == [2] and ids[0, :2].tolist() == [0, 1]
    assert float(tail[0]) == pytest.approx(1 - p, abs=1e-7)


def test_topp_stores_the_most_probable_ids_and_pads_the_rest():
    logits = torch.tensor([[0.0, 5.0, 1.0, 4.0, -2.0, 3.0]])
    ids, lp, tail, counts = M.topp_from_logits(logits, 0.9, 1, 4)
    n = int(counts[0])
    assert ids[0, :n].tolist() == [1, 3, 5, 2][:n] and ids[0, n:].tolist() == [0] * (4 - n)
    ref = torch.log_softmax(logits.double(), -1)[0, [1, 3, 5, 2]]
    assert torch.allclose(lp[0, :n].double(), ref[:n], atol=1e-6)
    assert lp[0, n:].tolist() == [M.PAD_LOGPROB] * (4 - n)


# -- where the draws come from ------------------------------------------------------------------

def documented_uniforms(seed, split, shard, row, seq_len, samples) -> torch.Tensor:
    """README: each row draws from its own CPU torch.Generator seeded with row_seed(...)."""
    g = torch.Generator().manual_seed(M.row_seed(seed, split, shard, row))
    return torch.rand(seq_len, samples, generator=g, dtype=torch.float64)


def test_row_uniforms_are_each_rows_own_generator():
    u = M.row_uniforms(5, "validation", 2, 3, 2, 4, 3)
    assert u.shape == (2, 4, 3) and u.dtype == torch.float64
    for r in range(2):
        assert torch.equal(u[r], documented_uniforms(5, "validation", 2, 3 + r, 4, 3))


def test_row_uniforms_depend_on_every_part_of_the_seed():
    base = M.row_uniforms(5, "train", 2, 3, 1, 4, 3)
    for other in (M.row_uniforms(6, "train", 2, 3, 1, 4, 3),
                  M.row_uniforms(5, "validation", 2, 3, 1, 4, 3),
                  M.row_uniforms(5, "train", 1, 3, 1, 4, 3),
                  M.row_uniforms(5, "train", 2, 4, 1, 4, 3)):
        assert not torch.equal(base, other)


def sampled_spec(samples=4, temperature=1.0, vocab=7) -> S.LabelSpec:
    return S.LabelSpec("sampled", min(samples, vocab), vocab, "uint16", "fp32", samples=samples,
                       proposal_temperature=temperature, seed=11)


def test_topk_has_no_selector_and_topp_picks_top_p_sets():
    """min_k binds: one entry alone holds more than top_p of these peaked distributions."""
    assert M.selector(S.LabelSpec("topk", 4, 7, "uint16"), "train", 0) is None
    spec = S.LabelSpec("topp", 5, 7, "uint16", top_p=0.6, min_k=3)
    pick = M.selector(spec, "train", 0)(0, 2, 3)
    logits = torch.randn(4, 7, generator=torch.Generator().manual_seed(0))
    logits[:, 2] = 20.0
    got = pick(logits, 2, 6)
    assert got[3].tolist() == [3, 3, 3, 3]
    for a, b in zip(got, M.topp_from_logits(logits, 0.6, 3, 5)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_sampled_pick_draws_with_the_uniforms_of_its_rows_and_positions(temperature):
    """Rows 4..6 of shard 3, seq_len 4: flat positions 5..10 of the batch use the uniforms of
    row 5 positions 1..3 and row 6 positions 0..2."""
    spec = sampled_spec(temperature=temperature)
    pick = M.selector(spec, "train", 3)(4, 3, 4)
    u = torch.cat([documented_uniforms(11, "train", 3, row, 4, 4) for row in (4, 5, 6)])
    logits = torch.randn(6, 7, generator=torch.Generator().manual_seed(1)) * 2
    got = pick(logits, 5, 11)
    want = M.sample_from_logits(logits, 4, temperature, u[5:11])
    assert len(got) == len(want) == (5 if temperature == 1.0 else 6)
    for a, b in zip(got, want):
        assert torch.equal(a, b)


def test_sampling_in_slices_of_positions_equals_one_pass():
    """_sample_rows cuts long chunks into SAMPLE_POSITIONS positions; positions are
    independent, so the result is the one-pass result."""
    n = M.SAMPLE_POSITIONS + 44
    logits = torch.randn(n, 7, generator=torch.Generator().manual_seed(2))
    u = torch.rand(n, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    for temperature in (1.0, 2.0):
        got = M._sample_rows(logits, sampled_spec(temperature=temperature), u)
        want = M.sample_from_logits(logits, 4, temperature, u)
        assert len(got) == len(want) and all(torch.equal(a, b) for a, b in zip(got, want))


# -- sampling edges -----------------------------------------------------------------------------

def test_a_token_of_probability_zero_is_never_drawn():
    """Inverse-CDF sampling takes the first token whose CDF exceeds the target: a uniform of
    exactly 0 must draw token 1, not token 0, whose probability (and CDF step) is 0."""
    logits = torch.tensor([[-math.inf, 0.0, 0.0, -math.inf]])
    u = torch.tensor([[0.0, 0.5, 0.999999]], dtype=torch.float64)
    ids, lp, tail, counts, hits = M.sample_from_logits(logits, 3, 1.0, u)
    assert counts.tolist() == [2] and sorted(ids[0, :2].tolist()) == [1, 2]
    assert hits[0].tolist()[:2] in ([2, 1], [1, 2]) and hits[0, 2] == 0


def test_a_uniform_of_one_still_draws_an_id_of_the_vocabulary():
    logits = torch.tensor([[0.0, 1.0, 2.0]])
    ids, *_ = M.sample_from_logits(logits, 1, 1.0, torch.tensor([[1.0]], dtype=torch.float64))
    assert ids.tolist() == [[2]]


def test_sampled_entries_pad_with_id_0_and_their_tail_is_the_exact_rest():
    """Draws hit ids 2 (twice) and 3 of p = (.1, .2, .3, .4): two unique ids, most probable
    first; the tail is 1 - .4 - .3 exactly; padding is id 0 with PAD_LOGPROB and 0 draws."""
    p = torch.tensor([[0.1, 0.2, 0.3, 0.4]], dtype=torch.float64)
    logits = p.log().float()
    u = torch.tensor([[0.35, 0.59, 0.61]], dtype=torch.float64)  # CDF .1 .3 .6 1
    ids, lp, tail, counts, hits = M.sample_from_logits(logits, 3, 1.0, u)
    assert counts.tolist() == [2] and ids.tolist() == [[3, 2, 0]]
    assert hits.tolist() == [[1, 2, 0]] and lp[0, 2] == M.PAD_LOGPROB
    assert float(tail[0]) == pytest.approx(0.3, abs=1e-6)
    assert torch.allclose(lp[0, :2].double(), p[0, [3, 2]].log(), atol=1e-6)


def test_tied_teacher_probabilities_are_stored_by_ascending_id():
    """Ties keep the order of the unique draws (ascending id), as the 1.2 rank order does; 20
    tied ids, enough for an unstable sort to reorder them."""
    logits = torch.zeros(1, 40)
    u = ((torch.arange(20, dtype=torch.float64) * 7 % 20) * 2 + 0.5).unsqueeze(0) / 40
    ids, lp, _, counts, hits = M.sample_from_logits(logits, 20, 1.0, u)
    assert counts.tolist() == [20] and ids.tolist() == [list(range(0, 40, 2))]
    assert hits.tolist() == [[1] * 20]


def test_the_tail_of_sampled_labels_is_one_minus_the_stored_mass_at_every_position():
    """[2, 3, V] logits (not only [n, V]); a tail is never negative, even where every id was
    drawn and the stored probabilities add up, in float, to a hair above 1."""
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(2, 3, 9, generator=g)
    u = torch.rand(2, 3, 30, generator=g, dtype=torch.float64)
    ids, lp, tail, counts, hits = M.sample_from_logits(logits, 30, 1.0, u)
    p = torch.softmax(logits.double(), -1).gather(-1, ids) * (hits > 0)
    assert tail.shape == (2, 3)
    assert torch.allclose(tail.double(), (1 - p.sum(-1)).clamp(min=0), atol=1e-6)
    many = torch.randn(3000, 12, generator=g) * 0.1
    _, _, tail, counts, _ = M.sample_from_logits(
        many, 200, 1.0, torch.rand(3000, 200, generator=g, dtype=torch.float64))
    assert (counts == 12).float().mean() > 0.9 and (tail >= 0).all()


def test_more_draws_than_tokens_store_at_most_the_vocabulary():
    logits = torch.tensor([[0.0, 0.5, 1.0]])
    u = torch.linspace(0.01, 0.99, 8, dtype=torch.float64).unsqueeze(0)
    ids, lp, tail, counts, hits = M.sample_from_logits(logits, 8, 1.0, u)
    assert ids.shape == (1, 3) and hits.shape == (1, 3) and lp.shape == (1, 3)
    assert counts.tolist() == [3] and int(hits.sum()) == 8
    assert float(tail[0]) == pytest.approx(0.0, abs=1e-6)  # every id stored: no mass outside


def test_unique_counts_of_sorted_and_unsorted_draws():
    draws = torch.tensor([[4, 1, 4, 4, 2], [3, 3, 3, 3, 3]])
    uniq, hits, n = M._unique_counts(draws)
    assert n.tolist() == [3, 1]
    assert uniq[0, :3].tolist() == [1, 2, 4] and hits[0, :3].tolist() == [1, 1, 3]
    assert uniq[1, :1].tolist() == [3] and hits[1].tolist() == [5, 0, 0, 0, 0]


# -- summaries and loss matching ----------------------------------------------------------------

def test_summary_of_variable_modes_is_entries_per_position_and_bytes_per_entry():
    spec = S.LabelSpec("topp", 8, 320, "uint16", top_p=0.9, min_k=1)
    records = [{"positions": 30, "entries": 90}, {"positions": 10, "entries": 30}]
    assert M.summary_extras(spec, records, 600) == {"mean_entries_per_position": 3.0,
                                                     "bytes_per_entry": 5.0}
    assert M.summary_extras(spec, [{"positions": 0}], 10) == {"mean_entries_per_position": 0.0,
                                                              "bytes_per_entry": 10.0}
    assert M.summary_extras(spec, [{"positions": 1, "entries": 3}], 6) == {
        "mean_entries_per_position": 3.0, "bytes_per_entry": 2.0}
    assert M.summary_extras(S.LabelSpec("topk", 8, 320, "uint16"), records, 600) == {}


def test_a_student_not_read_from_a_file_keeps_its_kind_and_is_checked(tmp_path):
    """No readable file (a student built in code): its kind counts as chosen, so a kind that
    does not fit sampled labels is refused, naming the student's path."""
    from dataclasses import replace

    from pipeline.training.losses import LossSpec
    from pipeline.training.students import load_student

    (tmp_path / "s.toml").write_text("[model]\nfamily = 'gpt'\n")
    built = replace(load_student(tmp_path / "s.toml"), path=str(tmp_path / "gone.toml"),
                    loss=LossSpec("kl_tail"))
    with pytest.raises(ConfigError, match=r"gone.toml: \[loss\] kind 'kl_tail' does not fit"):
        M.match_loss(built, sampled_spec())
