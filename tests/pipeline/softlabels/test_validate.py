"""`pipeline validate` (pipeline/softlabels/validate.py) on datasets written by hand.

Every promise docs/FORMAT.md makes about a shard's content gets a dataset that keeps it (no
problem reported) and one that breaks it at a chosen row, for which the exact problem line is
predicted here: ids in [0, vocab), no id twice at a position, ascending ids in format 1.2,
finite log-probabilities <= 0 that descend within a position (up to the encoding's rounding),
tail mass in [0, 1], top-p sets that reach p, draws that sum to N, finite log-norms; then the
dataset-level checks (checksums, the row-group index, tokenizer.json). No teacher is run.
"""

import hashlib
import json

import numpy as np
import pyarrow as pa
import pytest

from pipeline.errors import PipelineError
from pipeline.softlabels import schema as S
from pipeline.softlabels.reader import ShardInfo, SoftLabelDataset
from pipeline.softlabels.validate import check_table, validate_dataset
from tests.pipeline.softlabels.handmade import (
    set_column,
    spec,
    topk_labels,
    variable_labels,
    write_dataset,
)

L = 2  # seq_len
PART = "shards/train/part-00000.parquet"


def tokens(rows: int, vocab: int = 10) -> np.ndarray:
    return (np.arange(rows * L).reshape(rows, L) % vocab).astype(np.int64)


def topk_dataset(tmp_path, s=None, rows=3, edit_labels=None, **kw):
    s = s or spec()
    labels = topk_labels(rows, L, s.k)
    if edit_labels:
        edit_labels(labels)
    return write_dataset(tmp_path / "ds", s, {"train": [(tokens(rows, s.vocab_size), labels)]},
                         L, **kw)


def problems_of(root) -> list[str]:
    return validate_dataset(root)[0]


def one_problem(root, words: str, row: int | None = 1) -> None:
    at = f"{PART} row {row}: " if row is not None else f"{PART}: "
    assert problems_of(root) == [at + words]


# -- clean datasets -------------------------------------------------------------------------------

def test_a_clean_dataset_of_each_layout_has_no_problem(tmp_path):
    counts = np.array([[1, 2], [2, 2], [1, 1]])
    layouts = [
        (spec(), topk_labels(3, L, 2)),
        (spec(encoding="fp32", id_encoding="sorted_delta"), topk_labels(3, L, 2)),
        (spec("topp", 2, encoding="u8", logprob_u8_min=-16.0, top_p=0.75, min_k=1,
              id_encoding="sorted_delta"), variable_labels(counts, 2)),
        (spec("sampled", 4, samples=4, proposal_temperature=2.0, seed=0,
              id_encoding="sorted_delta"), variable_labels(counts, 4, draws=4, log_norm=0.5)),
        (spec("sampled", 2, samples=2, proposal_temperature=1.0, seed=0),
         variable_labels(counts, 2, draws=2)),
        (spec("none", 0), None),
    ]
    for i, (s, labels) in enumerate(layouts):
        root = write_dataset(tmp_path / str(i), s, {"train": [(tokens(3), labels)]}, L)
        assert validate_dataset(root) == ([], {"shards": 1, "rows": 3}), s


def test_the_summary_counts_shards_and_rows_of_every_split(tmp_path):
    s = spec()
    root = write_dataset(tmp_path / "ds", s, {
        "train": [(tokens(3), topk_labels(3, L, 2)), (tokens(2), topk_labels(2, L, 2))],
        "validation": [(tokens(4), topk_labels(4, L, 2))]}, L)
    assert validate_dataset(root) == ([], {"shards": 3, "rows": 9})


# -- input ids ------------------------------------------------------------------------------------

def test_an_input_id_equal_to_the_vocabulary_size_is_refused(tmp_path):
    root = write_dataset(tmp_path / "ds", spec("none", 0),
                         {"train": [(np.array([[0, 9], [9, 10], [10, 0]]), None)]}, L)
    one_problem(root, "input id >= vocab 10")


def test_a_negative_input_id_is_refused(tmp_path):
    """A vocabulary above 65,536 stores int32 ids, which can be negative."""
    s = spec("none", 0, vocab=70000)
    root = write_dataset(tmp_path / "ds", s, {"train": [(np.array([[0, 69999], [5, -1]]),
                                                         None)]}, L)
    one_problem(root, "input id >= vocab 70000")


# -- row lengths and row counts -------------------------------------------------------------------

def test_a_row_of_the_wrong_length_is_the_only_problem_reported(tmp_path):
    def edit(split, index, table):  # row 1 loses a tail value; its labels are out of range too
        short = pa.array([[0.5, 0.5], [0.5], [0.5, 0.5]], type=pa.list_(pa.float32()))
        table = table.set_column(table.schema.get_field_index(S.COL_TAIL), S.COL_TAIL, short)
        return set_column(table, S.COL_TOPK_IDS, lambda v: v + 100)

    root = topk_dataset(tmp_path, edit=edit)
    one_problem(root, "column tail_mass has 1 values, expected 2 (seq_len 2, k 2)")


def test_check_table_reports_a_row_count_other_than_the_manifest_and_goes_on(tmp_path):
    root = topk_dataset(tmp_path, edit_labels=lambda lab: lab.ids.__setitem__((2, 0, 0), 10))
    ds = SoftLabelDataset(root)
    table = ds.read_table(ds.split_shards("train")[0])
    shard = ShardInfo("train", 0, PART, 4, "0" * 64, 0)
    assert check_table(ds, shard, table) == [f"{PART}: 3 rows, manifest says 4",
                                             f"{PART} row 2: topk id >= vocab 10"]


# -- label ids ------------------------------------------------------------------------------------

@pytest.mark.parametrize("sorted_ids", [False, True])
def test_a_label_id_equal_to_the_vocabulary_size_is_refused(tmp_path, sorted_ids):
    s = spec(id_encoding="sorted_delta" if sorted_ids else None)
    root = topk_dataset(tmp_path, s, edit_labels=lambda lab: lab.ids.__setitem__((1, 1, 0), 10))
    one_problem(root, "topk id >= vocab 10")


def test_the_largest_ids_are_accepted(tmp_path):
    def largest(lab):
        lab.ids[...] = [9, 8]

    for i, enc in enumerate([None, "sorted_delta"]):
        assert problems_of(topk_dataset(tmp_path / str(i), spec(id_encoding=enc),
                                        edit_labels=largest)) == []


def test_an_id_stored_twice_at_one_position_is_refused(tmp_path):
    root = topk_dataset(tmp_path, edit_labels=lambda lab: lab.ids.__setitem__((1, 0), [3, 3]))
    one_problem(root, "an id is stored twice at one position")


def test_the_same_id_at_two_positions_or_rows_is_fine(tmp_path):
    """Ids 4 and 7 at each of 32 positions: position 30's 4 and position 0's 7 (3 + 4 = 0 + 7
    were a key position / vocab + id) are different entries."""
    def same(lab):
        lab.ids[...] = [4, 7]

    assert problems_of(topk_dataset(tmp_path, rows=16, edit_labels=same)) == []


def test_a_duplicate_in_a_variable_mode_row_is_named_by_its_row(tmp_path):
    counts = np.array([[2, 1], [1, 2], [2, 2]])
    labels = variable_labels(counts, 2)
    labels.ids[2, 1] = [5, 5]
    s = spec("topp", 2, top_p=0.5, min_k=1)
    root = write_dataset(tmp_path / "ds", s, {"train": [(tokens(3), labels)]}, L)
    one_problem(root, "an id is stored twice at one position", row=2)


# -- format 1.2: ascending ids, delta-coded -------------------------------------------------------

def deltas_edit(fn):
    return lambda split, index, table: set_column(table, S.COL_ID_DELTAS, fn)


@pytest.mark.parametrize("vocab", [10, 70000])
def test_a_zero_gap_after_the_first_id_is_refused(tmp_path, vocab):
    def zero_gap(v):  # entries: row 0 (4 entries), row 1 position 0: [first, gap]
        v[5] = 0
        return v

    root = topk_dataset(tmp_path, spec(vocab=vocab, id_encoding="sorted_delta"),
                        edit=deltas_edit(zero_gap))
    assert problems_of(root) == [
        f"{PART} row 1: label_id_deltas not ascending within a position (a gap < 1)",
        f"{PART} row 1: an id is stored twice at one position"]  # the same id, twice


def test_a_negative_gap_is_refused(tmp_path):
    def negative(v):
        v[7] = -3
        return v

    root = topk_dataset(tmp_path, spec(vocab=70000, id_encoding="sorted_delta"),
                        edit=deltas_edit(negative))
    problems = problems_of(root)
    assert problems[0] == (f"{PART} row 1: label_id_deltas not ascending within a position "
                           "(a gap < 1)")


def test_a_first_id_of_zero_is_a_valid_delta(tmp_path):
    def first_zero(lab):
        lab.ids[...] = [5, 0]  # stored ascending: deltas 0, 5

    root = topk_dataset(tmp_path, spec(id_encoding="sorted_delta"), edit_labels=first_zero)
    assert problems_of(root) == []


# -- log-probabilities ----------------------------------------------------------------------------

@pytest.mark.parametrize("value, words", [(np.nan, "non-finite log-probability"),
                                          (-np.inf, "non-finite log-probability"),
                                          (1e-3, "positive log-probability")])
def test_a_bad_log_probability_is_refused(tmp_path, value, words):
    def plant(lab):
        lab.logprobs[1, 1, 1] = value

    one_problem(topk_dataset(tmp_path, spec(encoding="fp32"), edit_labels=plant), words)


def test_a_log_probability_of_zero_is_accepted(tmp_path):
    def zero(lab):
        lab.logprobs[...] = [0.0, 0.0]

    assert problems_of(topk_dataset(tmp_path, edit_labels=zero)) == []


@pytest.mark.parametrize("encoding, first, second, ok", [
    ("fp32", -1e-6, 0.0, True),  # an increase of exactly the fp32 slack (1e-6)
    ("fp32", -2e-6, 0.0, False),
    ("fp32", -1.0, -0.9999, False),  # within fp16's slack, not within fp32's
    ("fp16", -1.0, -0.99951171875, True),  # one fp16 step near 1: rounding may reorder
    ("fp16", -1.0, -0.998046875, False),
    ("u8", -1.0, -0.95, False),  # one u8 step at lo = -16 is 16/255
])
def test_log_probabilities_descend_within_the_encodings_rounding(tmp_path, encoding, first,
                                                                 second, ok):
    extra = {"logprob_u8_min": -16.0} if encoding == "u8" else {}

    def plant(lab):
        lab.logprobs[2, 0] = [first, second]

    root = topk_dataset(tmp_path, spec(encoding=encoding, **extra), edit_labels=plant)
    assert problems_of(root) == ([] if ok else [f"{PART} row 2: log-probabilities not "
                                                "descending"])


def test_an_increase_from_one_position_to_the_next_is_fine(tmp_path):
    def plant(lab):
        lab.logprobs[1] = [[-5.0, -6.0], [-0.5, -0.7]]

    assert problems_of(topk_dataset(tmp_path, edit_labels=plant)) == []


# -- tail mass ------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [-1e-6, 1.001, np.nan])
def test_tail_mass_outside_zero_one_is_refused(tmp_path, value):
    def plant(lab):
        lab.tail[0, 0], lab.tail[0, 1] = 0.0, 1.0  # both ends are valid
        lab.tail[1, 1] = value

    one_problem(topk_dataset(tmp_path, edit_labels=plant), "tail mass outside [0, 1]")


# -- top-p ----------------------------------------------------------------------------------------

def topp_dataset(tmp_path, counts, tail, top_p=0.75, min_k=1, k=3):
    labels = variable_labels(np.array(counts), k)
    labels.tail = np.array(tail, dtype=np.float32)
    s = spec("topp", k, top_p=top_p, min_k=min_k)
    return write_dataset(tmp_path / "ds", s, {"train": [(tokens(len(counts)), labels)]}, L)


SHORT = ("top-p set holds less than top_p {} of the mass (or fewer than min_k entries)")


def test_a_top_p_set_short_of_p_is_refused(tmp_path):
    root = topp_dataset(tmp_path, [[1, 1], [1, 2], [2, 1]], [[0.25, 0.0], [0.0, 0.0],
                                                            [0.0, 0.2501]])
    one_problem(root, SHORT.format(0.75), row=2)


def test_a_top_p_set_within_the_slack_of_p_is_accepted(tmp_path):
    """The stored mass is 1 - tail with a float32 tail: a set holding p - 1e-6 passes."""
    top_p = 0.75 + 1e-6
    assert top_p - 1e-6 == 0.75  # mass 1 - 0.25 is exactly p minus the slack
    root = topp_dataset(tmp_path, [[1, 1]], [[0.25, 0.25]], top_p=top_p)
    assert problems_of(root) == []
    root = topp_dataset(tmp_path / "b", [[1, 1]], [[0.25, 0.2499995]], top_p=0.75)
    assert problems_of(root) == []


def test_the_top_p_mass_is_compared_in_float64(tmp_path):
    """A set short of p minus the slack by 2^-40 (far below float32's resolution) is short."""
    top_p = 0.75 + 1e-6 + 2**-40
    assert top_p - 1e-6 > 0.75
    root = topp_dataset(tmp_path, [[1, 1], [1, 1]], [[0.0, 0.0], [0.25, 0.0]], top_p=top_p)
    one_problem(root, SHORT.format(top_p))


def test_a_short_top_p_set_cut_at_max_k_is_accepted(tmp_path):
    root = topp_dataset(tmp_path, [[3, 3]], [[0.9, 0.5]], k=3)
    assert problems_of(root) == []


def test_a_top_p_set_below_min_k_is_refused(tmp_path):
    root = topp_dataset(tmp_path, [[2, 2], [2, 1]], [[0.0, 0.0], [0.0, 0.0]], min_k=2)
    one_problem(root, SHORT.format(0.75), row=1)


# -- sampled --------------------------------------------------------------------------------------

def sampled_dataset(tmp_path, labels, temperature=1.0, sorted_ids=False):
    s = spec("sampled", labels.ids.shape[-1], samples=4, proposal_temperature=temperature,
             seed=0, id_encoding="sorted_delta" if sorted_ids else None)
    return write_dataset(tmp_path / "ds", s, {"train": [(tokens(labels.ids.shape[0]), labels)]},
                         L)


@pytest.mark.parametrize("sorted_ids", [False, True])
def test_a_stored_sampled_id_with_no_draw_is_refused(tmp_path, sorted_ids):
    labels = variable_labels(np.array([[2, 2], [1, 3], [2, 2]]), 4, draws=4)
    labels.sample_counts[1, 1, :3] = [4, 0, 0]
    one_problem(sampled_dataset(tmp_path, labels, sorted_ids=sorted_ids),
                "a stored sampled id has 0 draws")


@pytest.mark.parametrize("sorted_ids", [False, True])
def test_draws_that_do_not_sum_to_samples_are_refused(tmp_path, sorted_ids):
    labels = variable_labels(np.array([[2, 2], [1, 3], [2, 2]]), 4, draws=4)
    labels.sample_counts[2, 0, 0] += 1
    one_problem(sampled_dataset(tmp_path, labels, sorted_ids=sorted_ids),
                "sample_counts do not sum to samples = 4", row=2)


def test_draws_at_the_last_position_count_too(tmp_path):
    labels = variable_labels(np.array([[2, 2], [1, 3]]), 4, draws=4)
    labels.sample_counts[1, 1, 0] -= 1
    one_problem(sampled_dataset(tmp_path, labels), "sample_counts do not sum to samples = 4")


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_a_non_finite_log_norm_is_refused(tmp_path, value):
    labels = variable_labels(np.array([[2, 2], [1, 3]]), 4, draws=4, log_norm=-0.5)
    labels.log_norm[1, 0] = value
    one_problem(sampled_dataset(tmp_path, labels, temperature=2.0),
                "non-finite proposal_log_norm")


# -- format 1.3: loss mask and segments ------------------------------------------------------------

MASK = np.array([[True, False], [False, False], [True, False]])  # the last position: no target


def masked_dataset(tmp_path, s, labels, edit=None):
    rows = labels.ids.shape[0]
    segments = np.ones((rows, L), dtype=np.int32)
    return write_dataset(tmp_path / "ds", s, {"train": [(tokens(rows), labels, MASK[:rows],
                                                         segments)]}, L, edit=edit)


def test_a_clean_masked_and_packed_dataset_has_no_problem(tmp_path):
    s = spec(loss_mask=True, segments=True)
    root = masked_dataset(tmp_path, s, topk_labels(3, L, 2))
    assert validate_dataset(root) == ([], {"shards": 1, "rows": 3})


def test_a_position_without_entries_must_have_a_tail_of_one(tmp_path):
    s = spec(loss_mask=True)

    def tail(split, index, table):  # position 1 of row 1 stores nothing; its tail becomes 0.5
        return set_column(table, S.COL_TAIL, lambda v: np.where(np.arange(v.size) == 3, 0.5, v))

    one_problem(masked_dataset(tmp_path, s, topk_labels(3, L, 2), tail),
                "tail mass not 1 at a position without stored entries (all of the mass is "
                "outside the empty set)")


def test_untrained_positions_are_not_short_top_p_sets(tmp_path):
    """Outside the mask a top-p position stores nothing (tail 1): not a set short of p."""
    s = spec("topp", 3, top_p=0.5, min_k=2, loss_mask=True)
    labels = variable_labels(np.full((3, L), 2), 3)
    assert problems_of(masked_dataset(tmp_path, s, labels)) == []
    labels.tail[2, 0] = 0.6  # a trained position short of p
    one_problem(masked_dataset(tmp_path / "b", s, labels), SHORT.format(0.5), row=2)
    s = spec("topp", 3, top_p=0.5, min_k=1, loss_mask=True)  # one entry, short of p
    labels = variable_labels(np.array([[2, 2], [2, 2], [1, 2]]), 3)
    labels.tail[2, 0] = 0.6
    one_problem(masked_dataset(tmp_path / "c", s, labels), SHORT.format(0.5), row=2)


def test_untrained_positions_need_no_draws(tmp_path):
    s = spec("sampled", 3, samples=3, proposal_temperature=1.0, seed=0, loss_mask=True)
    labels = variable_labels(np.full((3, L), 2), 3, draws=3)
    assert problems_of(masked_dataset(tmp_path, s, labels)) == []
    labels.sample_counts[2, 0, 0] = 1
    one_problem(masked_dataset(tmp_path / "b", s, labels),
                "sample_counts do not sum to samples = 3", row=2)


# -- the dataset: checksums, row-group index, tokenizer ---------------------------------------

def two_bad_shards(tmp_path):
    """train shard 0 changed after its checksum was taken; train shard 1 with a bad value."""
    s = spec()
    bad = topk_labels(2, L, 2)
    bad.tail[1, 0] = 2.0
    root = write_dataset(tmp_path / "ds", s, {
        "train": [(tokens(3), topk_labels(3, L, 2)), (tokens(2), bad)],
        "validation": [(tokens(4), topk_labels(4, L, 2))]}, L)
    path = root / PART
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    return root


def test_every_shard_is_checked_after_a_corrupt_one(tmp_path):
    problems, summary = validate_dataset(two_bad_shards(tmp_path))
    assert problems == [f"shard {PART}: checksum mismatch with manifest.json (the file changed "
                        "or is corrupt); re-download or relabel it",
                        "shards/train/part-00001.parquet row 1: tail mass outside [0, 1]"]
    assert summary == {"shards": 3, "rows": 6}  # the corrupt shard's rows are not counted


def test_a_wrong_row_group_index_is_found_although_the_file_hash_matches(tmp_path):
    root = topk_dataset(tmp_path, rows=5)
    m = json.loads((root / "manifest.json").read_text())
    entry = m["splits"]["train"][0]
    assert entry["row_group_rows"] == [2, 2, 1]
    digests = entry["row_group_sha256"]
    entry["row_group_sha256"] = digests[:64] + "0" * 64 + digests[128:]  # row group 1
    (root / "manifest.json").write_text(json.dumps(m))
    assert problems_of(root) == [f"shard {PART} row group 1: checksum mismatch with "
                                 "manifest.json (the file changed or is corrupt); re-download "
                                 "or relabel it"]


def test_a_shard_listed_without_an_index_is_hashed_whole(tmp_path):
    root = topk_dataset(tmp_path)
    m = json.loads((root / "manifest.json").read_text())
    for key in ("row_group_rows", "row_group_bytes", "row_group_sha256"):
        del m["splits"]["train"][0][key]
    (root / "manifest.json").write_text(json.dumps(m))
    assert validate_dataset(root) == ([], {"shards": 1, "rows": 3})


def test_a_version_of_a_dataset_without_versions_is_refused(tmp_path):
    with pytest.raises(PipelineError, match="has no versions .* leave --version out"):
        validate_dataset(topk_dataset(tmp_path), version=1)


def test_a_swapped_tokenizer_is_refused_and_a_missing_one_is_not_a_problem(tmp_path):
    root = topk_dataset(tmp_path)
    (root / "tokenizer.json").write_bytes(b'{"another": "tokenizer"}')
    assert hashlib.sha256((root / "tokenizer.json").read_bytes()).hexdigest() != \
        json.loads((root / "manifest.json").read_text())["tokenizer"]["sha256"]
    assert problems_of(root) == ["tokenizer.json: sha256 differs from manifest tokenizer.sha256"]
    (root / "tokenizer.json").unlink()
    assert problems_of(root) == []
