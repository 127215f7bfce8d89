"""Format 1.2 entries (pipeline/softlabels/sortedids.py), by hand: ids ascending within each
position and delta-coded (first id, then gaps >= 1), and the rank order a reader restores from
the stored log-probabilities (descending, ties by id ascending), padding last.
"""

import numpy as np
import pyarrow as pa
import pytest

from pipeline.softlabels import schema as S
from pipeline.softlabels import sortedids as D

BAD_ID = 2**31 - 1


def test_sort_by_id_orders_each_position_and_moves_its_values_along():
    ids = np.array([[7, 2, 5], [0, 9, 4]])
    lp = np.array([[-1.0, -2.0, -3.0], [-0.5, -0.6, -0.7]])
    draws = np.array([[1, 2, 3], [4, 5, 6]])
    out_ids, out_lp, out_draws = D.sort_by_id(ids, None, lp, draws)
    assert out_ids.tolist() == [[2, 5, 7], [0, 4, 9]]
    assert out_lp.tolist() == [[-2.0, -3.0, -1.0], [-0.5, -0.7, -0.6]]
    assert out_draws.tolist() == [[2, 3, 1], [4, 6, 5]]


def test_padding_sorts_after_every_real_entry():
    """A padded variable-mode position: id 0 at padding must not sort first."""
    ids = np.array([[9, 3, 0, 0]])
    mask = np.array([[True, True, False, False]])
    lp = np.array([[-1.0, -2.0, -9.0, -8.0]])
    out_ids, out_lp = D.sort_by_id(ids, mask, lp)
    assert out_ids.tolist() == [[3, 9, 0, 0]] and out_lp.tolist() == [[-2.0, -1.0, -9.0, -8.0]]


def test_deltas_are_the_first_id_then_the_gaps():
    d = D.deltas(np.array([[2, 5, 7], [0, 1, 70000]], dtype=np.int32))
    assert d.dtype == np.int64 and d.tolist() == [[2, 3, 2], [0, 1, 69999]]
    mask = np.array([[True, True, False]])
    assert D.deltas(np.array([[4, 6, 9]]), mask).tolist() == [[4, 2, 0]]  # 0 at padding


def test_ids_from_deltas_undo_deltas_and_zero_the_padding():
    deltas = np.array([[2, 3, 2], [65535, 1, 1]], dtype=np.uint16)
    ids = D.ids_from_deltas(deltas)
    assert ids.dtype == np.int64 and ids.tolist() == [[2, 5, 7], [65535, 65536, 65537]]
    mask = np.array([[True, True, False], [True, False, False]])
    assert D.ids_from_deltas(deltas, mask).tolist() == [[2, 5, 0], [65535, 0, 0]]


def test_tampered_deltas_decode_to_an_id_the_checks_refuse():
    deltas = np.array([[5, -9, 1], [2**31 - 2, 1, 1], [1, 2**31, 0]], dtype=np.int64)
    assert D.ids_from_deltas(deltas).tolist() == [[5, BAD_ID, BAD_ID], [2**31 - 2, BAD_ID,
                                                                        BAD_ID],
                                                  [1, BAD_ID, BAD_ID]]


def test_rank_order_is_descending_log_probability_then_ascending_id():
    ids = np.array([[1, 4, 6, 8], [2, 3, 5, 7]])
    lp = np.array([[-2.0, -0.5, -2.0, -1.0], [-0.0, 0.0, -3.0, -1e-30]], dtype=np.float32)
    out_ids, out_lp = D.rank_order(ids, lp)
    assert out_ids.tolist() == [[4, 8, 1, 6], [2, 3, 7, 5]]  # -0.0 and 0.0 are one zero
    assert out_lp.tolist() == [[-0.5, -1.0, -2.0, -2.0], [0.0, 0.0, np.float32(-1e-30), -3.0]]
    assert out_ids.dtype == np.int64 and out_lp.dtype == np.float32


def test_rank_order_moves_aligned_arrays_and_puts_padding_last():
    """A position's real entries come first (counts), ids ascending; padding stays last."""
    ids = np.array([[3, 8, 0, 0]])
    lp = np.array([[-2.0, -0.25, -7.0, -1e4]], dtype=np.float32)
    mask = np.array([[True, True, False, False]])
    draws = np.array([[1.0, 3.0, 9.0, 9.0]], dtype=np.float32)
    out_ids, out_lp, out_draws = D.rank_order(ids, lp, mask, draws, pad_logprob=-1e4)
    assert out_ids.tolist() == [[8, 3, 0, 0]]
    assert out_lp.tolist() == [[-0.25, -2.0, -1e4, -1e4]]
    assert out_draws.tolist() == [[3.0, 1.0, 0.0, 0.0]]


def test_rank_order_without_aligned_arrays_pads_with_zero_by_default():
    ids = np.array([[5, 2, 0]])
    lp = np.array([[-1.0, -0.5, -3.0]], dtype=np.float32)
    out_ids, out_lp = D.rank_order(ids, lp, np.array([[True, True, False]]))
    assert out_ids.tolist() == [[2, 5, 0]] and out_lp.tolist() == [[-0.5, -1.0, 0.0]]


@pytest.mark.parametrize("encoding", ["fp16", "fp32", "u8"])
def test_format_1_2_writer_options(encoding):
    """BYTE_STREAM_SPLIT on the id deltas, the tail and 32-bit/8-bit log-probabilities (not
    float16, which DuckDB cannot read split), no dictionary there, zstd level 3."""
    extra = {"logprob_u8_min": -16.0} if encoding == "u8" else {}
    schema = S.arrow_schema(S.LabelSpec("topk", 4, 10, "uint16", encoding,
                                        id_encoding="sorted_delta", **extra))
    split = ["label_id_deltas", "tail_mass"] + ([] if encoding == "fp16" else ["label_logprobs"])
    options = D.writer_options(schema)
    assert options["compression_level"] == 3
    assert options["column_encoding"] == {f"{n}.list.element": "BYTE_STREAM_SPLIT"
                                          for n in schema.names if n in split}
    assert options["use_dictionary"] == [f"{n}.list.element" for n in schema.names
                                         if n not in split]


def test_older_layouts_keep_the_default_writer_options():
    schema = S.arrow_schema(S.LabelSpec("topk", 4, 10, "uint16"))
    assert D.writer_options(schema) == {}
    assert D.writer_options(pa.schema([("label_logprobs", pa.list_(pa.float32()))])) == {}


def test_the_packed_key_path_equals_the_argsort_path():
    """Top-k shards (no padding, float32 log-probabilities) take the packed-key sort; it must
    give the argsort path's ids and values bit for bit, negative zero and ids ≥ 2^16 included."""
    rng = np.random.default_rng(0)
    ids = np.stack([rng.choice(151_936, 8, replace=False) for _ in range(50)]).astype(np.int64)
    lp = -rng.exponential(3.0, (50, 8)).astype(np.float32)
    lp[0, 0], lp[1, 3] = np.float32(-0.0), np.float32(0.0)
    fast_ids, fast_lp = D.sort_by_id(ids, None, lp)
    slow_ids, slow_lp, slow_f64 = D.sort_by_id(ids, None, lp, lp.astype(np.float64))
    assert fast_ids.dtype == ids.dtype and np.array_equal(fast_ids, slow_ids)
    assert fast_lp.dtype == np.float32
    assert np.array_equal(fast_lp.view(np.uint32), slow_lp.view(np.uint32))
