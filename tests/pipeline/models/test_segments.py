"""Packed samples do not see each other: a sample's logits (and its stored labels) are the same
packed with others as alone in a padded row, for every model family (models/segments.py)."""

import numpy as np
import pytest
import torch

from pipeline.labeling.forward import label_tokens
from pipeline.models import build_model
from pipeline.models.hf import HFCausalLM, HFConfig
from pipeline.models.segments import block_causal_mask, segment_positions

VOCAB, T = 50, 16


def _model(family: str):
    torch.manual_seed(0)
    if family == "hf-llama":
        return HFCausalLM(HFConfig(VOCAB, {"model_type": "llama", "hidden_size": 32,
                                           "intermediate_size": 64, "num_hidden_layers": 2,
                                           "num_attention_heads": 4, "num_key_value_heads": 2,
                                           "max_position_embeddings": 64})).eval()
    if family == "hf-gpt2":
        return HFCausalLM(HFConfig(VOCAB, {"model_type": "gpt2", "n_embd": 32, "n_layer": 2,
                                           "n_head": 4, "n_positions": 64})).eval()
    params = {"gpt": dict(n_layer=2, n_head=2, d_model=32, context=T),
              "gru": dict(n_layer=2, d_model=32)}[family]
    return build_model(family, {"vocab_size": VOCAB, **params}).eval()


def test_positions_and_mask():
    seg = torch.tensor([[1, 1, 1, 2, 2, 0, 0]])
    assert segment_positions(seg).tolist() == [[0, 1, 2, 0, 1, 0, 1]]
    mask = block_causal_mask(seg)[0, 0]
    assert mask[4].tolist() == [False, False, False, True, True, False, False]
    assert mask[6].tolist() == [False] * 5 + [True, True]  # padding only sees padding


@pytest.mark.parametrize("family", ["gpt", "gru", "hf-llama", "hf-gpt2"])
def test_packed_equals_alone(family):
    model = _model(family)
    rng = np.random.default_rng(1)
    a, b, c = (rng.integers(0, VOCAB, n) for n in (5, 7, 3))
    packed = np.concatenate([a, b, c, [0]])[None]  # three samples + one padding position
    packed_seg = np.array([[1] * 5 + [2] * 7 + [3] * 3 + [0]])
    alone = np.zeros((1, T), dtype=np.int64)
    alone[0, :7] = b
    alone_seg = np.array([[1] * 7 + [0] * 9])
    kw = dict(k=5, batch_size=4, device=torch.device("cpu"))
    ids_p, lp_p, tail_p = label_tokens(model, packed, segments=packed_seg, **kw)
    ids_a, lp_a, tail_a = label_tokens(model, alone, segments=alone_seg, **kw)
    assert np.array_equal(ids_p[0, 5:12], ids_a[0, :7])
    np.testing.assert_allclose(lp_p[0, 5:12], lp_a[0, :7], atol=1e-5)
    np.testing.assert_allclose(tail_p[0, 5:12], tail_a[0, :7], atol=1e-5)
    # and without segments the second sample does see the first (the test can fail)
    _, lp_plain, _ = label_tokens(model, packed, **kw)
    assert not np.allclose(lp_plain[0, 5:12], lp_a[0, :7], atol=1e-5)


@pytest.mark.parametrize("family", ["gpt", "gru"])
def test_segments_train(family):
    """Gradients flow through the segment paths (students train on packed rows)."""
    model = _model(family).train()
    ids = torch.randint(0, VOCAB, (2, T))
    seg = torch.tensor([[1] * 6 + [2] * 10, [1] * 12 + [0] * 4])
    model(ids, segment_ids=seg).sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
