"""The chunked loss (pipeline/training/chunked.py) against the full-logit reference
(`compute_loss`): values and gradients w.r.t. hidden states, head weights and every parameter,
for every loss kind and model family (native gpt and gru, hf gpt2, hf gemma2 with
final_logit_softcapping, hf cohere with logit_scale), chunk sizes that do and do not divide the
positions, and padded variable-length labels. "Within 1e-5 relative": max |chunked − full| ≤
1e-5 · max |full| per tensor (fp32 both sides)."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from pipeline.models import build_model
from pipeline.models.head import Head, split_model
from pipeline.softlabels.ragged import PAD_LOGPROB
from pipeline.training.chunked import chunked_loss, gathered_logprobs, model_loss
from pipeline.training.losses import KINDS, LossSpec, compute_loss

VOCAB, B, L, K = 97, 3, 7, 5  # 21 positions
CPU = torch.device("cpu")
HF = {"gpt2": dict(model_type="gpt2", n_layer=1, n_embd=16, n_head=2, n_positions=16),
      "gemma2": dict(model_type="gemma2", num_hidden_layers=1, hidden_size=16,
                     intermediate_size=32, num_attention_heads=2, num_key_value_heads=1,
                     head_dim=8, max_position_embeddings=16, final_logit_softcapping=2.0),
      "cohere": dict(model_type="cohere", num_hidden_layers=1, hidden_size=16,
                     intermediate_size=32, num_attention_heads=2, num_key_value_heads=1,
                     max_position_embeddings=16, logit_scale=0.5)}
FAMILIES = ["gpt", "gru", *HF]


def make_model(family: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    if family in HF:
        model = build_model("hf", {"vocab_size": VOCAB, "config": dict(HF[family])})
    else:
        model = build_model(family, {"vocab_size": VOCAB, "d_model": 16})
    with torch.no_grad():  # sharper than random init, so soft-capping really bends the logits
        split_model(model).weight.mul_(40.0)
    return model.eval()


def make_batch(kind: str, variable: bool, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lp = torch.log_softmax(torch.randn(B, L, VOCAB, generator=g) * 3, -1)
    top, ids = lp.topk(K, dim=-1)
    batch = {"input_ids": torch.randint(0, VOCAB, (B, L), generator=g), "topk_ids": ids,
             "topk_logprobs": top, "tail_mass": (1 - top.exp().sum(-1)).clamp(0, 1)}
    if kind == "sampled":
        batch["sample_weights"] = torch.rand(B, L, K, generator=g)
    if variable:  # padded entries: id 0, PAD_LOGPROB, masked (as the reader decodes them)
        mask = torch.arange(K) < torch.randint(1, K + 1, (B, L, 1), generator=g)
        batch["label_mask"] = mask
        batch["topk_ids"] = ids.masked_fill(~mask, 0)
        batch["topk_logprobs"] = top.masked_fill(~mask, PAD_LOGPROB)
        if "sample_weights" in batch:
            batch["sample_weights"] = batch["sample_weights"].masked_fill(~mask, 0.0)
    return batch


def assert_rel(got: torch.Tensor, want: torch.Tensor, rel: float = 1e-5) -> None:
    err = float((got - want).abs().max().detach())
    assert err <= rel * float(want.abs().max().detach()) + 1e-12, f"max error {err:.3g}"


@pytest.mark.parametrize("family", FAMILIES)
def test_head_is_the_models_own_output_transform(family):
    model = make_model(family)
    ids = torch.randint(0, VOCAB, (B, L))
    head = split_model(model)
    assert head is not None
    with torch.no_grad():
        assert_rel(head.logits(model.hidden(ids)), model(ids), 1e-6)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("chunk", [4, 21, 1024])
def test_hidden_and_head_gradients_equal_full_logits(family, kind, chunk):
    model = make_model(family)
    batch = make_batch(kind, variable=kind != "kl_tail")
    spec = LossSpec(kind, alpha=0.3, temperature=1.0 if kind == "sampled" else 2.0)
    head = split_model(model)
    with torch.no_grad():
        h0 = model.hidden(batch["input_ids"])
    got_h, want_h = h0.clone().requires_grad_(), h0.clone().requires_grad_()
    want = compute_loss(head.logits(want_h), batch, spec)
    want_grads = torch.autograd.grad(want["loss"], [want_h, head.weight])
    got = chunked_loss(got_h, head, batch, spec, chunk)
    got_grads = torch.autograd.grad(got["loss"], [got_h, head.weight])
    assert set(got) == set(want)
    for name in want:
        assert_rel(got[name], want[name])
    for g, w in zip(got_grads, want_grads, strict=True):
        assert_rel(g, w)


@pytest.mark.parametrize("transform", [{}, {"bias": True}, {"multiplier": 0.7},
                                       {"divisor": 3.0, "bias": True}, {"softcap": 1.5},
                                       {"multiplier": 2.0, "softcap": 4.0, "bias": True}])
def test_gathered_logprobs_through_every_head_transform(transform):
    """Any Head (bias, × multiplier, ÷ divisor, soft-cap) against log_softmax of its logits:
    values and gradients w.r.t. h, weight and bias; repeated ids in a row are summed."""
    g = torch.Generator().manual_seed(3)
    n, d = 23, 8
    w = (torch.randn(VOCAB, d, generator=g) * 2).requires_grad_()
    b = (torch.randn(VOCAB, generator=g)).requires_grad_() if transform.get("bias") else None
    head = Head(w, b, transform.get("multiplier"), transform.get("divisor"),
                transform.get("softcap"))
    h = torch.randn(n, d, generator=g).requires_grad_()
    ids = torch.randint(0, VOCAB, (n, 4), generator=g)
    ids[:, 3] = ids[:, 0]  # the target may be one of the stored ids
    weights = torch.randn(n, 4, generator=g)
    leaves = [t for t in (h, w, b) if t is not None]
    want = (torch.log_softmax(head.logits(h), -1).gather(1, ids) * weights).sum()
    got = (gathered_logprobs(h, head, ids, chunk=5) * weights).sum()
    assert_rel(got, want)
    for x, y in zip(torch.autograd.grad(got, leaves), torch.autograd.grad(want, leaves),
                    strict=True):
        assert_rel(x, y)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("kind", ["kl_tail", "ce"])
def test_every_parameter_gradient_equals_full_logits(family, kind):
    """Through the trainer's entry point: tied embeddings, biases, the whole body."""
    batch = make_batch(kind, variable=True)
    spec = LossSpec(kind, alpha=0.6)
    grads = []
    for chunk in (0, 5):  # 0: full logits (the reference path)
        model = make_model(family)
        loss = model_loss(model, batch, spec, CPU, chunk=chunk)["loss"]
        loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name, want in grads[0].items():
        assert_rel(grads[1][name], want)


class _Largest(TorchDispatchMode):
    """Records the largest logits-like tensor ([..., VOCAB]) any op creates."""

    def __init__(self):
        super().__init__()
        self.numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.is_view:  # e.g. the weight's transpose: no new memory
            return out
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor) and t.dim() and t.shape[-1] == VOCAB:
                self.numel = max(self.numel, t.numel())
        return out


def test_no_tensor_larger_than_one_chunk_of_logits():
    """Forward and backward of a training step on 128 positions: the full path makes
    [4, 32, V] logits, the chunked one nothing larger than [8, V]."""
    model = make_model("gpt")
    batch = make_batch("kl_tail", variable=False)
    batch = {k: v.repeat(6, 5, *[1] * (v.dim() - 2))[:4, :32] for k, v in batch.items()}
    sizes = {}
    for chunk in (0, 8):
        with _Largest() as probe:
            model_loss(model, batch, LossSpec("kl_tail"), CPU, chunk=chunk)["loss"].backward()
        sizes[chunk] = probe.numel
    assert sizes[0] >= 128 * VOCAB
    assert sizes[8] == 8 * VOCAB


def test_chunk_size_from_the_environment(monkeypatch):
    from pipeline.errors import PipelineError
    from pipeline.models.head import CHUNK_ENV, chunk_positions, logit_chunks

    ids = torch.randint(0, VOCAB, (B, L))
    model = make_model("gpt")
    assert chunk_positions() == 1024
    monkeypatch.setenv(CHUNK_ENV, "4")
    assert [(lo, hi) for lo, hi, _ in logit_chunks(model, ids)][-2:] == [(16, 20), (20, 21)]
    monkeypatch.setenv(CHUNK_ENV, "0")  # the whole batch at once
    assert [(lo, hi) for lo, hi, _ in logit_chunks(model, ids)] == [(0, B * L)]
    monkeypatch.setenv(CHUNK_ENV, "many")
    with pytest.raises(PipelineError, match=CHUNK_ENV):
        chunk_positions()


def test_an_unknown_output_transform_falls_back_to_full_logits(monkeypatch):
    """A head that does not reproduce the model's logits is refused once: the loss then takes
    the full-logit path, so it stays right."""
    from pipeline.models import hf

    model = make_model("gemma2")
    monkeypatch.setattr(hf, "output_head_of", lambda m: Head(m.get_output_embeddings().weight))
    model._head_checked = None  # make_model asked already (checked once per model)
    assert split_model(model) is None  # soft-capping missing: caught by the check
    batch = make_batch("kl_tail", variable=False)
    got = model_loss(model, batch, LossSpec("kl_tail"), CPU)["loss"]
    want = compute_loss(model(batch["input_ids"]), batch, LossSpec("kl_tail"))["loss"]
    assert_rel(got, want, 1e-7)
