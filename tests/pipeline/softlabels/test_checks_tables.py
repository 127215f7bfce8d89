"""The checks every reader runs on the tables and decoded values of a shard it did not make
(pipeline/softlabels/checks.py): rows of exactly seq_len positions (x k entries, or the row's
label_counts), the format 1.3 loss mask and segment ids, values in their ranges.

Each test builds an Arrow table or a batch by hand with one value off by one from the edge of
its documented range (docs/FORMAT.md) and expects acceptance or one PipelineError naming the
column, the first bad row and where. No teacher and no files.
"""

import math

import numpy as np
import pyarrow as pa
import pytest
import torch

from pipeline.errors import PipelineError
from pipeline.softlabels import checks
from pipeline.softlabels import schema as S

TOPP = {"mode": "topp", "k": 4, "top_p": 0.9, "min_k": 1}
SAMPLED = {"mode": "sampled", "k": 4, "samples": 4, "proposal_temperature": 1.0, "seed": 0}


def spec(**fields) -> S.LabelSpec:
    base = {"mode": "topk", "k": 2, "vocab_size": 10, "id_type": "uint16",
            "logprob_encoding": "fp16"}
    return S.LabelSpec(**{**base, **fields})


# -- row_lengths ----------------------------------------------------------------------------------

def lists(rows: list, value_type=pa.int32()) -> pa.ListArray:
    return pa.array(rows, type=pa.list_(value_type))


def fixed_table(lengths=(2, 2, 2), k=1, tail=None, ids=None) -> pa.Table:
    """A top-k table with seq_len 2 whose row r has lengths[r] input ids."""
    tokens = [[1] * n for n in lengths]
    return pa.table({S.COL_INPUT_IDS: lists(tokens),
                     S.COL_TOPK_IDS: lists(ids or [[0] * 2 * k] * len(lengths)),
                     S.COL_TOPK_LOGPROBS: lists([[0.0] * 2 * k] * len(lengths), pa.float32()),
                     S.COL_TAIL: lists(tail or [[0.0] * 2] * len(lengths), pa.float32())})


def lengths_refused(table, s, words: str) -> None:
    with pytest.raises(PipelineError) as info:
        checks.row_lengths(table, s, 2, "shard W")
    assert str(info.value).startswith("shard W") and words in str(info.value), str(info.value)


def test_rows_of_exactly_seq_len_positions_pass():
    checks.row_lengths(fixed_table(k=3), spec(k=3), 2, "w")
    checks.row_lengths(fixed_table().slice(1, 2), spec(k=1), 2, "w")
    tokens_only = pa.table({S.COL_INPUT_IDS: lists([[1, 2], [3, 4]]),
                            S.COL_TOPK_IDS: lists([[], [1]])})  # label columns are not read
    checks.row_lengths(tokens_only, spec(mode="none", k=0), 2, "w")


def test_the_first_row_of_the_wrong_length_is_named():
    lengths_refused(fixed_table(lengths=(2, 3, 1)), spec(k=1),
                    " row 1: column input_ids has 3 values, expected 2 (seq_len 2, k 1)")


def test_label_columns_hold_seq_len_times_k_entries_per_row():
    table = fixed_table(k=2, ids=[[0] * 4, [0] * 4, [0] * 3])
    lengths_refused(table, spec(k=2), " row 2: column topk_ids has 3 values, expected 4")
    table = fixed_table(tail=[[0.0] * 2, [0.0], [0.0] * 2])
    lengths_refused(table, spec(k=1), " row 1: column tail_mass has 1 values, expected 2")


def test_a_chunked_column_is_checked_as_one():
    t = fixed_table(lengths=(2, 2, 2))
    chunked = pa.concat_tables([t, fixed_table(lengths=(2, 5))])
    assert chunked.column(S.COL_INPUT_IDS).num_chunks == 2
    lengths_refused(chunked, spec(k=1), " row 4: column input_ids has 5 values")


def test_a_null_row_or_a_null_value_is_refused():
    t = fixed_table()
    null_row = lists([[1, 1], None, [1, 1]])
    lengths_refused(t.set_column(0, S.COL_INPUT_IDS, null_row), spec(k=1),
                    ": column input_ids holds nulls; the shard is corrupt")
    null_value = lists([[1, 1], [1, None], [1, 1]])
    lengths_refused(t.set_column(0, S.COL_INPUT_IDS, null_value), spec(k=1),
                    ": column input_ids holds nulls; the shard is corrupt")


# -- row_lengths of the variable modes (topp, sampled) ---------------------------------------

def variable_table(s: S.LabelSpec, counts, **replace) -> pa.Table:
    """A topp/sampled table with seq_len 2: rows of per-position counts, entries to match."""
    rows = len(counts)
    entries = [[0] * sum(c) for c in counts]
    cols = {S.COL_INPUT_IDS: lists([[1, 1]] * rows),
            s.ids_column: lists(entries),
            s.logprobs_column: lists([[0.0] * len(e) for e in entries], pa.float32()),
            S.COL_TAIL: lists([[0.0, 0.0]] * rows, pa.float32()),
            S.COL_COUNTS: lists(counts, pa.uint8())}
    if s.mode == "sampled":
        cols[s.sample_counts_column] = lists(entries, pa.uint8())
    if s.tempered:
        cols[S.COL_LOG_NORM] = lists([[0.0, 0.0]] * rows, pa.float32())
    cols.update(replace)
    return pa.table(cols)


TEMPERED = spec(**{**SAMPLED, "proposal_temperature": 2.0})


@pytest.mark.parametrize("s", [spec(**TOPP), spec(**SAMPLED), TEMPERED,
                               spec(**TOPP, id_encoding="sorted_delta")])
def test_variable_rows_whose_entries_match_their_counts_pass(s):
    checks.row_lengths(variable_table(s, [[1, 4], [2, 3], [4, 4]]), s, 2, "w")


@pytest.mark.parametrize("column", [S.COL_INPUT_IDS, S.COL_TAIL, S.COL_COUNTS, S.COL_LOG_NORM])
def test_each_per_position_column_holds_seq_len_values(column):
    value_type = pa.uint8() if column == S.COL_COUNTS else pa.float32()
    values = [[1, 1], [1, 1, 1], [1]]
    table = variable_table(TEMPERED, [[1, 1]] * 3, **{column: lists(values, value_type)})
    lengths_refused(table, TEMPERED, f" row 1: column {column} has 3 values, expected "
                                     "seq_len 2")


@pytest.mark.parametrize("s", [spec(**SAMPLED), TEMPERED])
@pytest.mark.parametrize("which", ["ids", "logprobs", "draws"])
def test_each_entry_column_holds_the_sum_of_its_rows_counts(s, which):
    column = {"ids": s.ids_column, "logprobs": s.logprobs_column,
              "draws": s.sample_counts_column}[which]
    table = variable_table(s, [[1, 2], [2, 2], [1, 1]])
    value_type = table.schema.field(column).type.value_type
    table = table.set_column(table.schema.get_field_index(column), column,
                             lists([[0] * 3, [0] * 4, [0] * 3], value_type))
    lengths_refused(table, s, f" row 2: column {column} has 3 values, its label_counts sum "
                              "to 2")


@pytest.mark.parametrize("bad_count", [0, 5])
def test_counts_outside_one_to_k_are_refused_naming_the_row(bad_count):
    s = spec(**TOPP)
    table = variable_table(s, [[1, 1], [1, 1], [2, bad_count]])
    lengths_refused(table, s, " row 2: label_counts outside [1, k = 4]")


def test_entry_count_mismatch_names_the_sum_as_an_integer():
    s = spec(**TOPP)
    table = variable_table(s, [[1, 1], [4, 3]])
    table = table.set_column(1, s.ids_column, lists([[0, 0], [0] * 6]))
    with pytest.raises(PipelineError, match=r"^w row 1: column topk_ids has 6 values, its "
                                            r"label_counts sum to 7$"):
        checks.row_lengths(table, s, 2, "w")


def test_nulls_in_a_variable_table_are_refused_naming_where():
    s = spec(**TOPP)
    table = variable_table(s, [[1, 1], [1, 1]])
    table = table.set_column(1, s.ids_column, lists([[0, 0], None]))
    lengths_refused(table, s, ": column topk_ids holds nulls")
    table = variable_table(s, [[1, 1], [1, 1]], **{S.COL_COUNTS: lists([[1, 1], [1, None]],
                                                                       pa.uint8())})
    lengths_refused(table, s, ": column label_counts holds nulls")


# -- values ---------------------------------------------------------------------------------------

def batch(**changes) -> dict:
    b = {"input_ids": torch.zeros(3, 2, dtype=torch.long),
         "topk_ids": torch.zeros(3, 2, 1, dtype=torch.long),
         "topk_logprobs": torch.zeros(3, 2, 1), "tail_mass": torch.full((3, 2), 0.5),
         "sample_weights": torch.ones(3, 2, 1)}
    return {**b, **changes}


@pytest.mark.parametrize("name, row0, row2, words", [
    ("tail_mass", 0.0, 1.5, "tail mass outside [0, 1]"),
    ("tail_mass", 1.0, -0.5, "tail mass outside [0, 1]"),
    ("tail_mass", 0.5, math.nan, "tail mass outside [0, 1]"),
    ("topk_logprobs", 0.0, 0.5, "positive log-probability"),
    ("topk_logprobs", -1e30, math.nan, "non-finite log-probability"),
    ("sample_weights", 0.0, -1.0, "sample weight not finite and >= 0"),
    ("sample_weights", 1e30, math.nan, "sample weight not finite and >= 0"),
    ("topk_ids", 9, 10, "topk_ids holds an id outside [0, vocab 10)"),
    ("input_ids", 0, -1, "input_ids holds an id outside [0, vocab 10)"),
])
def test_values_at_an_edge_pass_and_the_first_bad_row_is_named(name, row0, row2, words):
    """Row 0 holds a value on the edge of its range, row 2 one past it: row 2 is named."""
    b = batch()
    b[name] = b[name].clone()
    b[name][0, 1] = row0
    checks.values(b, 10, "w")
    b[name][2, 0] = row2
    with pytest.raises(PipelineError) as info:
        checks.values(b, 10, "w")
    assert str(info.value) == f"w row 2: {words}"


def test_fp16_log_probabilities_down_to_the_lowest_finite_value_pass():
    lp = torch.full((2, 2, 1), -65504.0, dtype=torch.float16)
    checks.values({"topk_logprobs": lp}, 10, "w")
    lp[1, 0, 0] = -math.inf
    with pytest.raises(PipelineError, match="^w row 1: non-finite log-probability"):
        checks.values({"topk_logprobs": lp}, 10, "w")


def test_first_row_of_a_mask_over_positions():
    mask = np.zeros((4, 3, 2), dtype=bool)
    mask[2, 1, 0] = mask[3, 0, 1] = True
    assert checks._first_row(torch.from_numpy(mask)) == 2


# -- format 1.3: loss mask and segment ids -------------------------------------------------------

def masked_table(s: S.LabelSpec, mask, segments=None, counts=None, **replace) -> pa.Table:
    """A 1.3 table with seq_len 4: the given loss mask / segment ids per row; counts default to
    k inside the mask (top-k) and 0 outside, entries to match."""
    mask = np.array(mask, dtype=bool)
    counts = np.where(mask, s.k, 0) if counts is None else np.array(counts)
    rows = len(mask)
    table = variable_table(s, counts.tolist(), **{
        S.COL_INPUT_IDS: lists([[1] * 4] * rows),
        S.COL_TAIL: lists([[0.5] * 4] * rows, pa.float32())})
    if s.loss_mask:
        table = table.append_column(S.COL_LOSS_MASK, lists(mask.tolist(), pa.bool_()))
    if s.segments:
        table = table.append_column(S.COL_SEGMENTS, lists(segments, pa.int32()))
    for name, column in replace.items():
        table = table.set_column(table.schema.get_field_index(name), name, column)
    return table


MASKED = spec(k=2, loss_mask=True)
PACKED = spec(k=2, loss_mask=True, segments=True)
ROWS = [[True, True, False, False], [False, True, True, False]]
SEGS = [[1, 1, 1, 0], [1, 1, 2, 2]]  # row 1: two samples; the mask skips each one's last


def check4(table, s) -> None:
    checks.row_lengths(table, s, 4, "w")


def refused4(table, s, words: str) -> None:
    with pytest.raises(PipelineError) as info:
        check4(table, s)
    assert str(info.value).startswith("w row ") and words in str(info.value), str(info.value)


def test_masked_and_packed_tables_pass():
    check4(masked_table(MASKED, ROWS), MASKED)
    check4(masked_table(PACKED, [[True, False, False, False], [True, False, True, False]],
                        SEGS), PACKED)
    segments_only = spec(k=2, segments=True)
    check4(masked_table(segments_only, [[True] * 4] * 2, [[1, 2, 0, 0], [1, 1, 1, 1]],
                        counts=[[2] * 4] * 2), segments_only)


def test_masked_top_k_stores_k_entries_inside_the_mask_and_none_outside():
    for counts in ([[2, 2, 1, 0], [0, 2, 2, 0]], [[2, 2, 0, 0], [0, 2, 2, 2]]):
        table = masked_table(MASKED, ROWS, counts=counts)
        refused4(table, MASKED, "label_counts not 0 outside the loss mask and in [2, k = 2] "
                                "inside it")


def test_masked_top_p_stores_one_to_k_entries_inside_the_mask():
    s = spec(**{**TOPP, "k": 3}, loss_mask=True)
    check4(masked_table(s, ROWS, counts=[[1, 3, 0, 0], [0, 2, 1, 0]]), s)
    table = masked_table(s, ROWS, counts=[[1, 3, 0, 0], [0, 0, 1, 0]])
    with pytest.raises(PipelineError, match=r"^w row 1: label_counts not 0 outside the loss mask "
                                            r"and in \[1, k = 3\] inside it$"):
        check4(table, s)


@pytest.mark.parametrize("column", [S.COL_LOSS_MASK, S.COL_SEGMENTS])
def test_each_format_13_column_holds_seq_len_values(column):
    value = lists([[True] * 4, [True] * 3], pa.bool_()) if column == S.COL_LOSS_MASK else \
        lists([[1] * 4, [1, 1, 1, 1, 1]], pa.int32())
    table = masked_table(PACKED, [[True, False, False, False]] * 2, [[1] * 4] * 2,
                         **{column: value})
    with pytest.raises(PipelineError, match=rf"^w row 1: column {column} has \d values, "
                                            "expected seq_len 4$"):
        check4(table, PACKED)


@pytest.mark.parametrize("segments, mask, words", [
    ([[1, 1, 0, 0], [1, -1, 0, 0]], [[True] + [False] * 3] * 2,
     "segment_ids negative, or padding (0) inside the loss mask"),
    ([[1, 1, 0, 0], [1, 1, 0, 0]], [[True] + [False] * 3, [True, False, True, False]],
     "segment_ids negative, or padding (0) inside the loss mask"),
    ([[1, 1, 2, 2], [2, 2, 0, 0]], [[False] * 4] * 2, "segment_ids does not start at 1"),
    ([[1, 1, 2, 2], [1, 0, 2, 0]], [[False] * 4] * 2, "segment_ids has padding (0) before a "
                                                      "sample"),
    ([[1, 1, 2, 2], [1, 2, 1, 0]], [[False] * 4] * 2, "segment_ids decreases (a sample number "
                                                      "goes back)"),
    ([[1, 1, 2, 2], [1, 3, 3, 0]], [[False] * 4] * 2, "segment_ids skips a sample number"),
    ([[1, 1, 1, 0], [1, 1, 2, 0]], [[True] + [False] * 3, [False, True, False, False]],
     "loss_mask is true on a sample's last position"),
    ([[1, 1, 1, 1], [1, 1, 1, 1]], [[False] * 4, [False, False, False, True]],
     "loss_mask is true on a sample's last position"),
])
def test_segment_ids_number_samples_in_order_and_never_train_across_them(segments, mask,
                                                                          words):
    """Row 0 is always valid, row 1 breaks one rule: row 1 is named."""
    table = masked_table(PACKED, mask, segments)
    with pytest.raises(PipelineError) as info:
        check4(table, PACKED)
    assert str(info.value).startswith("w row 1: ") and words in str(info.value), str(info.value)


@pytest.mark.parametrize("column", [S.COL_LOSS_MASK, S.COL_SEGMENTS])
def test_nulls_in_a_format_13_column_are_refused_naming_where(column):
    value = lists([[True] * 4, [True, None, True, True]], pa.bool_()) \
        if column == S.COL_LOSS_MASK else lists([[1] * 4, None], pa.int32())
    table = masked_table(PACKED, [[True, False, False, False]] * 2, [[1] * 4] * 2,
                         **{column: value})
    with pytest.raises(PipelineError, match=f"^w: column {column} holds nulls; the shard is "
                                            "corrupt$"):
        check4(table, PACKED)


def test_padding_segments_are_fine_without_a_loss_mask():
    s = spec(k=2, segments=True)
    check4(masked_table(s, [[True] * 4], [[1, 2, 2, 0]], counts=[[2] * 4]), s)
    with pytest.raises(PipelineError, match="^w row 0: segment_ids negative"):
        check4(masked_table(s, [[True] * 4], [[1, 2, -2, 0]], counts=[[2] * 4]), s)


@pytest.mark.parametrize("got, words", [
    (["input_ids", "doc_ids"], "missing column loss_mask, segment_ids"),
    (["input_ids", "doc_ids", "loss_mask", "segment_ids", "extra"],
     "column extra not in the manifest's labels"),
    (["input_ids", "doc_ids", "loss_mask", "segment_ids", "x2", "x1"],
     "column x1, x2 not in the manifest's labels"),
    (["input_ids", "doc_ids", "loss_mask", "segment_ids:int64"],
     "column segment_ids has type list<item: int64>"),
    (["doc_ids", "input_ids", "loss_mask", "segment_ids"], "column order"),
])
def test_schema_difference_names_the_column(got, words):
    want = S.arrow_schema(spec(mode="none", k=0, loss_mask=True, segments=True))
    types = {f.name: f.type for f in want}
    fields = [pa.field(n.split(":")[0], pa.list_(pa.int64()) if n.endswith(":int64")
                       else types.get(n, pa.list_(pa.int8()))) for n in got]
    assert checks.schema_difference(pa.schema(fields), want) == words
