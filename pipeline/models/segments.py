"""Several samples in one row without attention between them: position ids and masks from the
row's segment ids (format 1.3 `segment_ids`, docs/FORMAT.md).

Why: packing short samples into full rows keeps the teacher and the students busy, but a plain
causal row lets a token attend to an unrelated earlier sample, so its label would depend on what
it was packed with. A row's `segment_ids` [B, T] number its samples 1, 2, ... (0 = padding, which
only ever attends to itself); from them every model family builds the same thing: positions that
restart at each sample, and attention (or recurrence) that stays inside it. A sample then gets
the labels it would get alone in a row (tests/pipeline/models/test_segments.py).
"""

import torch


def _starts(segment_ids: torch.Tensor) -> torch.Tensor:
    """[B, T] bool: True where a new sample begins (every row's first position too)."""
    first = torch.ones_like(segment_ids[:, :1], dtype=torch.bool)
    return torch.cat([first, segment_ids[:, 1:] != segment_ids[:, :-1]], dim=1)


def segment_positions(segment_ids: torch.Tensor) -> torch.Tensor:
    """[B, T] position ids counting from 0 at the start of each sample."""
    idx = torch.arange(segment_ids.shape[1], device=segment_ids.device).expand_as(segment_ids)
    start = torch.where(_starts(segment_ids), idx, torch.zeros_like(idx)).cummax(dim=1).values
    return idx - start


def block_causal_mask(segment_ids: torch.Tensor) -> torch.Tensor:
    """[B, 1, T, T] bool, True where query t may attend to key s: s <= t, same sample."""
    t = segment_ids.shape[1]
    causal = torch.ones(t, t, dtype=torch.bool, device=segment_ids.device).tril()
    same = segment_ids.unsqueeze(2) == segment_ids.unsqueeze(1)
    return (same & causal).unsqueeze(1)


def run_rnn_by_segment(rnn: torch.nn.RNNBase, x: torch.Tensor,
                       segment_ids: torch.Tensor) -> torch.Tensor:
    """A batch_first RNN over [B, T, D] with its state reset at every sample start: the samples
    of all rows run as one packed batch (samples are contiguous in row-major order)."""
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence, pad_sequence

    b, t, d = x.shape
    sample = _starts(segment_ids).reshape(-1).long().cumsum(0) - 1
    lengths = torch.bincount(sample)
    pieces = torch.split(x.reshape(b * t, d), lengths.tolist())
    packed = pack_padded_sequence(pad_sequence(pieces, batch_first=True), lengths.cpu(),
                                  batch_first=True, enforce_sorted=False)
    out, _ = pad_packed_sequence(rnn(packed)[0], batch_first=True)
    valid = torch.arange(out.shape[1], device=x.device) < lengths.unsqueeze(1)
    return out[valid].reshape(b, t, -1)
