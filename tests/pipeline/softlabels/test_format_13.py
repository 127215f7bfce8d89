"""Format 1.3 tampered: a producer controls every file (manifest and checksums included), so each
broken promise of the loss_mask / segment_ids columns must be refused by `validate` and by the
reader with a message naming it and the row — never a traceback, never half a dataset.

Rows and positions are chosen by reading the tampered shard's own values here (where a sample
ends, which positions are trained), so each expected row is known before the checks run.
"""

import json
import re
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.errors import PipelineError
from pipeline.softlabels.reader import SoftLabelDataset
from pipeline.softlabels.validate import validate_dataset
from stages.label import LabelConfig, run
from tests.conftest import REPO
from tests.reliability.conftest import edit_manifest, rewrite_shard

SHARD = "shards/train/part-00000.parquet"
WORDS = "the market rose as shares in the bank fell while minister said game was won".split()


@pytest.fixture(scope="module")
def chat13(tmp_path_factory, tiny_teacher):
    """A packed, assistant-masked top-k dataset: short conversations, several per row."""
    root = tmp_path_factory.mktemp("f13")
    rng = np.random.default_rng(0)
    rows = [{"id": f"c{i}", "messages": [
        {"role": "user", "content": " ".join(rng.choice(WORDS, 2))},
        {"role": "assistant", "content": " ".join(rng.choice(WORDS, 2))}]} for i in range(40)]
    corpus = root / "chat.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run(LabelConfig(corpus=str(corpus), teacher=str(tiny_teacher), out=str(root / "ds"),
                    top_k=4, seq_len=64, shard_rows=8, batch_size=8, quiet=True, device="cpu",
                    validation_fraction=0.2, messages_column="messages", id_column="id",
                    chat_template=str(REPO / "data/chat/headline.jinja")))
    return root / "ds"


def _copy(src, tmp_path):
    dst = tmp_path / "ds"
    shutil.copytree(src, dst)
    return dst


def _values(d, column: str) -> np.ndarray:
    """[rows, seq_len] values of a per-position column of train shard 0."""
    return np.stack(pq.read_table(d / SHARD).column(column).to_numpy(zero_copy_only=False))


def _put(column: str, edit):
    """A mutate() for rewrite_shard: edit([rows, seq_len] copy) of a per-position column."""
    def mutate(table):
        values = np.stack(table.column(column).to_numpy(zero_copy_only=False)).copy()
        edit(values)
        col = table.column(column).combine_chunks()
        new = pa.ListArray.from_arrays(col.offsets, pa.array(values.ravel(),
                                                             type=col.type.value_type))
        return table.set_column(table.schema.get_field_index(column), column, new)
    return mutate


def _refused(d, message: str, row: int | None = None) -> None:
    """validate lists the problem (with the row), and the reader refuses the shard with it."""
    where = f"part-00000.parquet row {row}: " if row is not None else ""
    problems, _ = validate_dataset(d)
    assert any(where in p and message in p for p in problems), problems
    ds = SoftLabelDataset(d)
    with pytest.raises(PipelineError, match=re.escape(message)):
        ds.decode(ds.read_table(ds.split_shards("train")[0]))


def _two_sample_row(seg: np.ndarray) -> int:
    return int(np.flatnonzero((seg == 2).any(axis=1))[0])


def test_the_clean_dataset_is_valid_and_packs_several_samples(chat13):
    assert validate_dataset(chat13)[0] == []
    seg = _values(chat13, "segment_ids")
    assert (seg == 2).any() and (seg == 0).any()  # the tests below need both


def test_untrained_position_with_entries_refused(chat13, tmp_path):
    d = _copy(chat13, tmp_path)
    mask = _values(d, "loss_mask")
    row, pos = 1, int(np.flatnonzero(mask[1])[0])  # a trained position: it holds k entries
    rewrite_shard(d, SHARD, _put("loss_mask", lambda v: v.__setitem__((row, pos), False)))
    _refused(d, "label_counts not 0 outside the loss mask", row)


def test_trained_position_without_entries_refused(chat13, tmp_path):
    d = _copy(chat13, tmp_path)
    row = 2
    pos = int(np.flatnonzero(~_values(d, "loss_mask")[row] & (_values(d, "segment_ids")[row]
                                                               > 0))[0])
    rewrite_shard(d, SHARD, _put("loss_mask", lambda v: v.__setitem__((row, pos), True)))
    # an untrained position that is not a sample's last: only the counts check can object
    _refused(d, "label_counts not 0 outside the loss mask and in [4, k = 4] inside", row)


def test_entries_where_counts_are_zero_refused(chat13, tmp_path):
    """Mask and count both say "no label" at a labeled position, but its 4 entries stay."""
    d = _copy(chat13, tmp_path)
    row = 1
    pos = int(np.flatnonzero(_values(d, "loss_mask")[row])[0])

    def mutate(table):
        table = _put("loss_mask", lambda v: v.__setitem__((row, pos), False))(table)
        return _put("label_counts", lambda v: v.__setitem__((row, pos), 0))(table)

    rewrite_shard(d, SHARD, mutate)
    _refused(d, "its label_counts sum to", row)


def test_segment_ids_going_back_refused(chat13, tmp_path):
    d = _copy(chat13, tmp_path)
    seg = _values(d, "segment_ids")
    row = _two_sample_row(seg)
    pos = int(np.flatnonzero(seg[row] == 2)[1])  # inside sample 2, not its first position
    mask = _values(d, "loss_mask")
    assert not mask[row, pos - 1] or seg[row, pos - 1] == 2
    rewrite_shard(d, SHARD, _put("segment_ids", lambda v: v.__setitem__((row, pos), 1)))
    _refused(d, "segment_ids decreases", row)


def test_padding_inside_a_sample_refused(chat13, tmp_path):
    d = _copy(chat13, tmp_path)
    seg, mask = _values(d, "segment_ids"), _values(d, "loss_mask")
    row = 3
    pos = int(np.flatnonzero((seg[row] == 1) & ~mask[row])[1])  # untrained, inside sample 1
    rewrite_shard(d, SHARD, _put("segment_ids", lambda v: v.__setitem__((row, pos), 0)))
    _refused(d, "segment_ids has padding (0) before a sample", row)


def test_padding_inside_the_loss_mask_refused(chat13, tmp_path):
    d = _copy(chat13, tmp_path)
    row = 0
    pos = int(np.flatnonzero(_values(d, "loss_mask")[row])[0])
    rewrite_shard(d, SHARD, _put("segment_ids", lambda v: v.__setitem__((row, pos), 0)))
    _refused(d, "padding (0) inside the loss mask", row)


@pytest.mark.parametrize("edit,message", [
    (lambda s, row: s.__setitem__((row, slice(None)), np.where(s[row] > 0, s[row] + 1, 0)),
     "segment_ids does not start at 1"),
    (lambda s, row: s.__setitem__((row, slice(None)), np.where(s[row] >= 2, s[row] + 1, s[row])),
     "segment_ids skips a sample number"),
    (lambda s, row: s.__setitem__((row, 5), -1), "segment_ids negative"),
])
def test_misnumbered_segments_refused(chat13, tmp_path, edit, message):
    d = _copy(chat13, tmp_path)
    row = _two_sample_row(_values(d, "segment_ids"))
    rewrite_shard(d, SHARD, _put("segment_ids", lambda v: edit(v, row)))
    _refused(d, message, row)


def test_trained_last_position_of_a_sample_refused(chat13, tmp_path):
    """Position t predicts token t + 1; at a sample's last position that token is the next
    sample's, so it is never in the mask (FORMAT.md)."""
    d = _copy(chat13, tmp_path)
    seg = _values(d, "segment_ids")
    row = _two_sample_row(seg)
    last = int(np.flatnonzero(seg[row] == 1)[-1])
    rewrite_shard(d, SHARD, _put("loss_mask", lambda v: v.__setitem__((row, last), True)))
    _refused(d, "loss_mask is true on a sample's last position", row)


def test_tail_mass_not_one_without_entries_refused(chat13, tmp_path):
    d = _copy(chat13, tmp_path)
    row = 2
    pos = int(np.flatnonzero(~_values(d, "loss_mask")[row])[0])
    rewrite_shard(d, SHARD, _put("tail_mass", lambda v: v.__setitem__((row, pos), 0.5)))
    problems, _ = validate_dataset(d)
    assert any(f"row {row}: tail mass not 1 at a position without stored entries" in p
               for p in problems), problems


def test_short_loss_mask_row_refused(chat13, tmp_path):
    d = _copy(chat13, tmp_path)

    def mutate(table):
        col = table.column("loss_mask").combine_chunks()
        offsets = np.asarray(col.offsets).copy()
        offsets[2:] -= 1  # row 1 loses a value, the rest shift
        new = pa.ListArray.from_arrays(pa.array(offsets, pa.int32()),
                                       col.values.slice(0, offsets[-1]))
        return table.set_column(table.schema.get_field_index("loss_mask"), "loss_mask", new)

    rewrite_shard(d, SHARD, mutate)
    _refused(d, "column loss_mask has 63 values, expected seq_len 64", 1)


@pytest.mark.parametrize("column,message", [
    ("loss_mask", "missing column loss_mask"),
    ("segment_ids", "missing column segment_ids"),
])
def test_manifest_claims_a_column_the_shard_lacks(chat13, tmp_path, column, message):
    d = _copy(chat13, tmp_path)
    rewrite_shard(d, SHARD, lambda t: t.drop_columns([column]))
    _refused(d, message)


@pytest.mark.parametrize("field,columns", [
    ("loss_mask", "label_counts, loss_mask"),  # without a mask, top-k is fixed-width again
    ("segments", "segment_ids"),
])
def test_shard_column_the_manifest_does_not_claim(chat13, tmp_path, field, columns):
    d = _copy(chat13, tmp_path)
    edit_manifest(d, lambda m: m["labels"].pop(field))
    _refused(d, f"column {columns} not in the manifest's labels")


@pytest.mark.parametrize("value", ["yes", 1, False])
def test_loss_mask_field_other_than_true_refused(chat13, tmp_path, value):
    d = _copy(chat13, tmp_path)
    edit_manifest(d, lambda m: m["labels"].__setitem__("loss_mask", value))
    with pytest.raises(PipelineError, match=f"labels.loss_mask {value!r} must be true"):
        validate_dataset(d)
