"""Chat templates, assistant masks, sample rows and masked losses (pipeline/labeling/chat.py,
rows.py, samples.py; pipeline/training/losses.py)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.config import stages as C
from pipeline.errors import PipelineError
from pipeline.labeling import chat, rows
from pipeline.labeling.rows import Sample, SampleStats, iter_sample_shards
from pipeline.models.tokenizer import load_tokenizer
from pipeline.training.chunked import chunked_loss
from pipeline.training.losses import LossSpec, compute_loss
from tests.conftest import REPO

HEADLINE = REPO / "data/chat/headline.jinja"
CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' }}"
          "{% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] + eos_token }}"
          "{% endgeneration %}{% else %}{{ m['content'] + eos_token }}{% endif %}{{ '\\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
CONVO = [{"role": "system", "content": "Be brief."},
         {"role": "user", "content": "the market rose"},
         {"role": "assistant", "content": "shares fell"},
         {"role": "user", "content": "the team won"},
         {"role": "assistant", "content": "late goal"}]


@pytest.fixture(scope="module")
def tok(tiny_tokenizer):
    return load_tokenizer(tiny_tokenizer)


def _file_template(tok) -> chat.ChatTemplate:
    return chat.load_template(str(HEADLINE), None, tok)


def _trained_text(tok, ids, positions) -> str:
    """The tokens that trained positions predict (position t → token t + 1)."""
    return tok.tokenizer.decode(ids[1:][positions[:-1]].tolist(), skip_special_tokens=False)


def test_options_match_the_modules():
    assert C.TRAIN_ON == chat.TRAIN_ON
    assert C.PACK_MODES == rows.PACK_MODES and C.OVERLONG == rows.OVERLONG


def test_template_from_file_masks_assistant_turns(tok):
    template = _file_template(tok)
    ids, positions = chat.encode_conversation(template, tok, CONVO, "assistant", False)
    trained = _trained_text(tok, ids, positions)
    assert trained == " shares fell<|endoftext|>\n late goal<|endoftext|>\n"
    assert not positions[-1]  # the last token predicts nothing
    ids2, last = chat.encode_conversation(template, tok, CONVO, "last-turn", False)
    assert np.array_equal(ids, ids2)
    assert _trained_text(tok, ids, last) == " late goal<|endoftext|>\n"
    _, every = chat.encode_conversation(template, tok, CONVO, "all", False)
    assert every.sum() == len(ids) - 1


def test_template_from_tokenizer_config(tok, tiny_tokenizer, tmp_path):
    """The teacher's tokenizer_config.json chat_template; {% generation %} spans agree with the
    prefix-by-prefix rendering of the same template without the markers."""
    (tmp_path / "tokenizer.json").write_bytes(Path(tiny_tokenizer).read_bytes())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"chat_template": CHATML, "eos_token": "<|endoftext|>"}))
    marked = chat.load_template(None, tmp_path, tok)
    assert marked.source.endswith("tokenizer_config.json") and marked.marks_generation
    plain = chat.ChatTemplate(CHATML.replace("{% generation %}", "").replace(
        "{% endgeneration %}", ""), "plain", None, "<|endoftext|>")
    a = chat.encode_conversation(marked, tok, CONVO, "assistant", False)
    b = chat.encode_conversation(plain, tok, CONVO, "assistant", False)
    assert np.array_equal(a[0], b[0])
    # the marked span is the content and EOS; the prefix span also holds the turn's "\n"
    assert _trained_text(tok, *a) == "shares fell<|endoftext|>late goal<|endoftext|>"
    assert _trained_text(tok, *b) == "shares fell<|endoftext|>\nlate goal<|endoftext|>\n"


def test_rendering_matches_apply_chat_template(tok, tiny_tokenizer):
    """Our rendering is transformers' own: apply_chat_template gives the same text and (with
    {% generation %}) the same assistant token mask."""
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(tokenizer_file=str(tiny_tokenizer), eos_token="<|endoftext|>",
                                 chat_template=CHATML)
    template = chat.ChatTemplate(CHATML, "t", None, "<|endoftext|>")
    text, _ = chat.assistant_spans(template, CONVO)
    assert text == hf.apply_chat_template(CONVO, tokenize=False)
    out = hf.apply_chat_template(CONVO, tokenize=True, return_dict=True,
                                 return_assistant_tokens_mask=True)
    ids, positions = chat.encode_conversation(template, tok, CONVO, "assistant", False)
    assert list(ids) == list(out["input_ids"])
    assert list(positions[:-1]) == [bool(m) for m in out["assistant_masks"][1:]]


def test_tokenizer_without_template_needs_a_file(tok, tiny_tokenizer):
    with pytest.raises(PipelineError, match="--chat-template FILE"):
        chat.load_template(None, Path(tiny_tokenizer).parent, tok)
    with pytest.raises(PipelineError, match="no such file"):
        chat.load_template("missing.jinja", None, tok)


@pytest.mark.parametrize("messages, match", [
    ([{"role": "wizard", "content": "x"}], "unknown role 'wizard'"),
    ([{"role": "user", "content": "q"}, {"role": "assistant", "content": " "}],
     "empty assistant turn"),
    ([{"role": "user", "content": "q"}], "no assistant turn"),
    ("not a list", "non-empty list"),
    ([{"role": "user", "content": 3}], "string role and content"),
])
def test_bad_conversations(messages, match):
    with pytest.raises(chat.ChatError, match=match):
        chat.check_messages(messages, "assistant")


def test_render_failure_is_one_line(tok):
    template = chat.ChatTemplate("{{ raise_exception('no tools here') }}", "t.jinja", None, "")
    with pytest.raises(chat.ChatError, match=r"t.jinja failed to render \(no tools here\)"):
        chat.encode_conversation(template, tok, CONVO, "assistant", False)


def test_prefix_inconsistent_template_is_refused(tok):
    """A template that drops earlier turns cannot be masked by prefixes: refused with the fix."""
    template = chat.ChatTemplate("{{ messages[-1]['content'] }}", "t", None, "")
    with pytest.raises(chat.ChatError, match="generation"):
        chat.assistant_spans(template, CONVO)


def _sample(doc: str, n: int, trained: bool = True) -> Sample:
    mask = np.full(n, trained)
    mask[-1] = False
    return Sample(doc, np.arange(n, dtype=np.int32) + 2, mask, f"f.jsonl:{doc}")


def _shards(samples, pack, overlong="truncate", seq_len=8):
    stats = SampleStats()
    out = list(iter_sample_shards(samples, lambda d: "train", seq_len, 100, pack, overlong, 0,
                                  stats))
    return out, stats


def test_rows_none_packed_concat():
    samples = [_sample("a", 5), _sample("b", 3), _sample("c", 4), _sample("d", 2)]
    (none,), _ = _shards(samples, "none")
    assert none.tokens.shape == (4, 8) and none.segments[0].tolist() == [1] * 5 + [0] * 3
    assert not none.mask[:, 5:].any()
    (packed,), stats = _shards(samples, "packed")
    assert packed.doc_ids == [["a", "b"], ["c", "d"]]
    assert packed.segments.tolist() == [[1] * 5 + [2] * 3, [1] * 4 + [2] * 2 + [0] * 2]
    assert stats.padding_positions == 2 and stats.trained_positions == 10
    (concat,), stats = _shards(samples, "concat")
    assert concat.segments is None and concat.tokens.shape == (1, 8)
    assert stats.tokens_dropped == 6


def test_overlong_truncate_drop_refuse():
    long = [_sample("x", 12), _sample("y", 3)]
    (shard,), stats = _shards(long, "none")
    assert stats.truncated == 1 and not shard.mask[0, -1] and shard.mask[0, :7].all()
    (shard,), stats = _shards(long, "none", "drop")
    assert stats.dropped_overlong == 1 and shard.doc_ids == [["y"]]
    with pytest.raises(PipelineError, match=r"f.jsonl:x: sample 'x' has 12 tokens, more than "
                                            r"--seq-len 8; raise --seq-len"):
        _shards(long, "none", "refuse")
    _, stats = _shards([_sample("z", 4, trained=False)], "packed")
    assert stats.dropped_no_target == 1 and stats.samples == 0


def _batch(seed=0, b=3, length=6, k=4, vocab=20):
    g = torch.Generator().manual_seed(seed)
    lp = torch.log_softmax(torch.randn(b, length, vocab, generator=g), -1)
    top, ids = lp.topk(k, -1)
    mask = torch.rand(b, length, generator=g) > 0.4
    return {"input_ids": torch.randint(0, vocab, (b, length), generator=g), "topk_ids": ids,
            "topk_logprobs": top, "tail_mass": 1 - top.exp().sum(-1), "loss_mask": mask}


@pytest.mark.parametrize("kind", ["kl_tail", "kl_renorm", "ce"])
def test_masked_loss_uses_trained_positions_only(kind):
    batch = _batch()
    spec = LossSpec(kind=kind, alpha=0.5)
    logits = torch.randn(3, 6, 20, requires_grad=True)
    got = compute_loss(logits, batch, spec)
    mask = batch["loss_mask"]
    # reference: per-position terms, averaged over the mask by hand
    full = {k: v for k, v in batch.items() if k != "loss_mask"}
    s = torch.log_softmax(logits.float(), -1)
    ce_mask = mask[:, :-1]
    ce = -(s[:, :-1].gather(-1, full["input_ids"][:, 1:, None]).squeeze(-1))[ce_mask].mean()
    assert torch.allclose(got["ce"], ce, atol=1e-6)
    # changing labels outside the mask changes nothing
    other = dict(batch, topk_logprobs=torch.where(mask[..., None], batch["topk_logprobs"],
                                                  torch.full_like(batch["topk_logprobs"], -1.0)))
    assert torch.allclose(compute_loss(logits, other, spec)["loss"], got["loss"])
    # and the chunked path (the head at trained positions only) agrees with full logits
    head_w = torch.randn(20, 8)
    h = torch.randn(3, 6, 8)
    from pipeline.models.head import Head

    ref = compute_loss(h @ head_w.T, batch, spec)["loss"]
    chunked = chunked_loss(h, Head(head_w), batch, spec, chunk=5)["loss"]
    assert torch.allclose(ref, chunked, atol=1e-5)


def test_masked_loss_with_no_trained_position_is_zero():
    batch = _batch()
    batch["loss_mask"][:] = False
    logits = torch.randn(3, 6, 20, requires_grad=True)
    out = compute_loss(logits, batch, LossSpec())
    out["loss"].backward()
    assert float(out["loss"].detach()) == 0.0 and torch.isfinite(logits.grad).all()
