"""A small GPT-style decoder-only transformer (nanoGPT shape), for the demo teacher and students.

Pre-norm blocks, `scaled_dot_product_attention` with a causal mask (flash/SDPA kernels on CUDA),
learned positions, tied input/output embeddings. Any size from one config.
"""

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from pipeline.config.fields import Range, at_least, opt
from pipeline.models.head import Head
from pipeline.models.segments import block_causal_mask, segment_positions


@dataclass
class GPTConfig:
    """A student file's [model] keys for family "gpt" (their rules: pipeline/config/fields.py)."""

    vocab_size: int = opt(help="vocabulary (from the dataset)", check=at_least(1))
    n_layer: int = opt(2, help="transformer blocks", check=at_least(1))
    n_head: int = opt(2, help="attention heads (must divide d_model)", check=at_least(1))
    d_model: int = opt(64, help="width", check=at_least(1))
    context: int = opt(256, help="positions (default: the dataset's seq_len)", check=at_least(1))
    dropout: float = opt(0.0, help="dropout probability", check=Range(0, 1, hi_open=True))


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head, self.dropout = cfg.n_head, cfg.dropout
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """`mask` [B, 1, T, T] (segments.block_causal_mask) replaces the plain causal mask."""
        b, t, c = x.shape
        q, k, v = self.qkv(x).split(c, dim=2)
        q, k, v = (z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=mask is None,
            dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).contiguous().view(b, t, c))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(cfg.d_model), nn.LayerNorm(cfg.d_model)
        self.attn = CausalSelfAttention(cfg)
        self.mlp = nn.Sequential(nn.Linear(cfg.d_model, 4 * cfg.d_model), nn.GELU(),
                                 nn.Linear(4 * cfg.d_model, cfg.d_model), nn.Dropout(cfg.dropout))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), mask)
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        if cfg.d_model % cfg.n_head:
            raise ValueError(f"d_model {cfg.d_model} must be divisible by n_head {cfg.n_head}")
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.context, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.head.weight = self.tok_emb.weight  # tied: fewer parameters, better small models
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def forward(self, input_ids: torch.Tensor, *, hidden_only: bool = False,
                segment_ids: torch.Tensor | None = None) -> torch.Tensor:
        """[batch, seq] token ids → [batch, seq, vocab] logits (`hidden_only`: the final hidden
        states [batch, seq, d_model], so a DDP-wrapped model can hand them to a chunked loss;
        `segment_ids`: samples packed in a row do not see each other, models/segments.py)."""
        h = self.hidden(input_ids, segment_ids)
        return h if hidden_only else self.head(h)

    def hidden(self, input_ids: torch.Tensor,
               segment_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Final hidden states (after ln_f): what the tied head turns into logits."""
        t = input_ids.shape[1]
        if t > self.cfg.context:
            raise ValueError(f"sequence length {t} exceeds model context {self.cfg.context}")
        mask = None
        if segment_ids is None:
            pos = torch.arange(t, device=input_ids.device)
        else:
            pos, mask = segment_positions(segment_ids), block_causal_mask(segment_ids)
        x = self.drop(self.tok_emb(input_ids) + self.pos_emb(pos))
        for block in self.blocks:
            x = block(x, mask)
        return self.ln_f(x)

    def output_head(self) -> Head:
        return Head(self.head.weight)
