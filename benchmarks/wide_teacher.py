"""Figure 2's wide-vocabulary teachers (151,936 ids, Qwen 2/3's logit width), built from the demo.

Why not simpler: random weights give near-uniform distributions (every top-k set is a random
subset: the upper bound, reported as such), and mapping the demo's 4,096 ids 1:1 into the wide
space lets only 4,096 distinct ids ever occur, which flatters any dictionary-like encoding.

**Grouped construction** (the realistic one): a fixed random permutation of the 151,936 wide ids
is cut into 4,096 consecutive groups of 37 or 38 ids, group d belonging to demo id d. Demo id d's
probability p_d is split inside its group by a fixed skewed rule, the group's j-th member
getting p_d · w_j with w_j ∝ 1 / (j + 1)² (normalised over the group: the first member 62 %,
the second 15 %, ...), the way one word's probability spreads over its casing and spacing
variants in a large vocabulary. Every wide id has positive probability, so every one can occur;
the distribution of a position keeps the demo teacher's shape. Its top-k is exact without
materialising [positions, 151,936]: within a group the members are already in decreasing order,
so the top-k wide entries are among the first k members of the top-k demo ids.
"""

import math

import numpy as np
import torch

WIDE_VOCAB = 151_936
SEED = 151_936  # the fixed permutation of wide ids
RANDOM_TEACHER_SHAPE = {"vocab_size": WIDE_VOCAB, "n_layer": 2, "n_head": 2, "d_model": 128,
                        "context": 128}


def groups(demo_vocab: int, wide_vocab: int = WIDE_VOCAB) -> tuple[torch.Tensor, torch.Tensor]:
    """(member ids [demo_vocab, m], member log-weights [demo_vocab, m]); m = the largest group,
    smaller groups padded with weight log 0 = −inf (never selected)."""
    perm = np.random.default_rng(SEED).permutation(wide_vocab)
    bounds = np.linspace(0, wide_vocab, demo_vocab + 1).astype(np.int64)
    width = int(np.diff(bounds).max())
    ids = np.zeros((demo_vocab, width), np.int64)
    logw = np.full((demo_vocab, width), -np.inf)
    for d in range(demo_vocab):
        size = int(bounds[d + 1] - bounds[d])
        ids[d, :size] = perm[bounds[d]:bounds[d + 1]]
        w = 1.0 / (np.arange(size) + 1.0) ** 2
        logw[d, :size] = np.log(w / w.sum())
    return torch.from_numpy(ids), torch.from_numpy(logw)


def grouped_topk(demo_logits: torch.Tensor, k: int,
                 table: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """Demo logits [..., V] → the wide teacher's exact (ids, logprobs float32, tail float32)."""
    member_ids, member_logw = table
    lp = torch.log_softmax(demo_logits.double(), -1)
    top_lp, top_ids = torch.topk(lp, k, -1)
    m = min(k, member_ids.shape[1])
    cand_lp = (top_lp.unsqueeze(-1) + member_logw[:, :m][top_ids]).flatten(-2)
    cand_id = member_ids[:, :m][top_ids].flatten(-2)
    values, pick = torch.topk(cand_lp, k, -1)
    tail = (1.0 - values.exp().sum(-1)).clamp(0.0, 1.0).float()
    return cand_id.gather(-1, pick), values.float().clamp(max=0.0), tail


def random_topk(model: torch.nn.Module, tokens: torch.Tensor, k: int) -> tuple[torch.Tensor, ...]:
    """A random-init GPT of the demo shape with 151,936 outputs: near-uniform rows, so its top-k
    sets are random subsets (the upper bound of what ids cost). One row at a time: a row's
    logits are 78 MB."""
    from pipeline.labeling.forward import topk_from_logits

    parts = []
    with torch.inference_mode():
        for row in tokens.split(1):
            parts.append(topk_from_logits(model(row), k))
    return tuple(torch.cat(p) for p in zip(*parts))


def subset_bits_per_id(vocab: int, k: int) -> float:
    """log2 C(vocab, k) / k: the bits per id of an unordered set of k distinct ids."""
    return (math.lgamma(vocab + 1) - math.lgamma(k + 1) - math.lgamma(vocab - k + 1)) \
        / math.log(2) / k
