"""A recurrent student family: embedding → multi-layer GRU → tied output head.

A second architecture shows the labels are model-agnostic: anything that maps token ids to
next-token logits can learn from the stored distribution.
"""

from dataclasses import dataclass

import torch
import torch.nn as nn

from pipeline.config.fields import Range, at_least, opt
from pipeline.models.head import Head
from pipeline.models.segments import run_rnn_by_segment


@dataclass
class GRUConfig:
    """A student file's [model] keys for family "gru"."""

    vocab_size: int = opt(help="vocabulary (from the dataset)", check=at_least(1))
    n_layer: int = opt(1, help="GRU layers", check=at_least(1))
    d_model: int = opt(64, help="width", check=at_least(1))
    dropout: float = opt(0.0, help="dropout between layers", check=Range(0, 1, hi_open=True))


class GRULM(nn.Module):
    def __init__(self, cfg: GRUConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.rnn = nn.GRU(cfg.d_model, cfg.d_model, num_layers=cfg.n_layer, batch_first=True,
                          dropout=cfg.dropout if cfg.n_layer > 1 else 0.0)
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.head.weight = self.tok_emb.weight
        nn.init.normal_(self.tok_emb.weight, std=0.02)

    def forward(self, input_ids: torch.Tensor, *, hidden_only: bool = False,
                segment_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [batch, seq, vocab], or with `hidden_only` the final hidden states; with
        `segment_ids` the state restarts at every packed sample (models/segments.py)."""
        h = self.hidden(input_ids, segment_ids)
        return h if hidden_only else self.head(h)

    def hidden(self, input_ids: torch.Tensor,
               segment_ids: torch.Tensor | None = None) -> torch.Tensor:
        x = self.tok_emb(input_ids)
        if segment_ids is None:
            x, _ = self.rnn(x)
        else:
            x = run_rnn_by_segment(self.rnn, x, segment_ids)
        return self.ln_f(x)

    def output_head(self) -> Head:
        return Head(self.head.weight)
