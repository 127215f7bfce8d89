"""The format's one reader (pipeline/softlabels/reader.py) on datasets written by hand: what a
manifest entry becomes, which damaged files are refused before their rows are used (and in
which words), and the tensors every layout decodes to, compared with the labels written.
"""

import json

import numpy as np
import pyarrow as pa
import pytest
import torch

from pipeline.errors import PipelineError
from pipeline.softlabels import schema as S
from pipeline.softlabels.reader import SoftLabelDataset, _flat_values, decode_batch
from tests.pipeline.softlabels.handmade import (
    set_column,
    spec,
    topk_labels,
    variable_labels,
    write_dataset,
)

L = 2
PART = "shards/train/part-00000.parquet"


def tokens(rows: int) -> np.ndarray:
    return (np.arange(rows * L).reshape(rows, L) % 10).astype(np.int64)


def dataset(tmp_path, s=None, rows=3, labels=None, **kw):
    s = s or spec(encoding="fp32")
    labels = labels if labels is not None else topk_labels(rows, L, s.k)
    return write_dataset(tmp_path / "ds", s, {"train": [(tokens(rows), labels)]}, L, **kw)


def edit_manifest(root, fn):
    m = json.loads((root / "manifest.json").read_text())
    fn(m)
    (root / "manifest.json").write_text(json.dumps(m))


def entry0(m: dict) -> dict:
    return m["splits"]["train"][0]


# -- the manifest's shard entries -----------------------------------------------------------------

def test_each_entry_becomes_a_shard_with_its_numbers(tmp_path):
    root = dataset(tmp_path, rows=5)
    ds = SoftLabelDataset(root)
    (shard,) = ds.split_shards("train")
    m = json.loads((root / "manifest.json").read_text())
    assert (shard.split, shard.index, shard.rel, shard.rows) == ("train", 0, PART, 5)
    assert (shard.sha256, shard.bytes) == (entry0(m)["sha256"], entry0(m)["bytes"])
    assert shard.row_groups["row_group_rows"] == [2, 2, 1] and shard.path == root / PART
    assert ds.tokenizer_sha256 == m["tokenizer"]["sha256"] and ds.vocab_size == 10
    assert ds.spec == spec(encoding="fp32") and ds.seq_len == L


def test_an_unknown_split_is_named_with_the_ones_there_are(tmp_path):
    with pytest.raises(PipelineError, match=r"no split 'test' \(splits: \['train'\]\)"):
        SoftLabelDataset(dataset(tmp_path)).split_shards("test")


def test_a_malformed_manifest_is_refused_naming_its_file(tmp_path):
    root = dataset(tmp_path)
    edit_manifest(root, lambda m: m["labels"].update(k=0))
    with pytest.raises(PipelineError, match=rf"^{root}/manifest.json: labels.k 0 is not a "
                                            "valid k"):
        SoftLabelDataset(root)
    edit_manifest(root, lambda m: m["labels"].update(k=2) or entry0(m).update(rows=-1))
    with pytest.raises(PipelineError, match=rf"^{root}/manifest.json: shard entry '{PART}' of "
                                            "split 'train' has a malformed"):
        SoftLabelDataset(root)


def test_a_shard_path_of_another_spelling_inside_the_dataset_is_read(tmp_path):
    root = dataset(tmp_path)
    edit_manifest(root, lambda m: entry0(m).update(path="./shards/train/part-00000.parquet"))
    ds = SoftLabelDataset(root)
    assert ds.read_table(ds.split_shards("train")[0]).num_rows == 3


def test_a_malformed_row_group_index_is_refused_naming_the_entry(tmp_path):
    root = dataset(tmp_path)
    edit_manifest(root, lambda m: entry0(m).update(row_group_rows=[2, "1"]))
    with pytest.raises(PipelineError, match=rf"manifest.json: shard entry '{PART}' of split "
                                            r"'train' has malformed row_group_rows.*; the "
                                            "dataset is corrupt$"):
        SoftLabelDataset(root)


# -- refused files --------------------------------------------------------------------------------

def flip_a_byte(root, offset=None):
    path = root / PART
    data = bytearray(path.read_bytes())
    data[len(data) // 2 if offset is None else offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_changed_shard_is_refused_by_its_checksum(tmp_path):
    root = dataset(tmp_path)
    flip_a_byte(root)
    ds = SoftLabelDataset(root)
    with pytest.raises(PipelineError, match=rf"^shard {PART}: checksum mismatch with "
                                            "manifest.json"):
        ds.read_table(ds.split_shards("train")[0])
    (root / PART).write_bytes((root / PART).read_bytes()[:-3])
    with pytest.raises(PipelineError, match="checksum mismatch"):
        ds.verify_checksum(ds.split_shards("train")[0])
    (root / PART).unlink()
    with pytest.raises(PipelineError, match=rf"^shard {PART} listed in the manifest is missing"):
        ds.verify_checksum(ds.split_shards("train")[0])


def test_read_table_without_verification_reads_a_changed_file(tmp_path):
    root = dataset(tmp_path)
    ds = SoftLabelDataset(root)
    table = ds.read_table(ds.split_shards("train")[0], verify=False)
    entry = json.loads((root / "manifest.json").read_text())["splits"]["train"][0]
    edit_manifest(root, lambda m: entry0(m).update(sha256="0" * 64))
    ds = SoftLabelDataset(root)
    assert ds.read_table(ds.split_shards("train")[0], verify=False).equals(table)
    assert entry["sha256"] != "0" * 64


def test_a_file_that_is_not_parquet_is_refused_in_one_line(tmp_path):
    root = dataset(tmp_path)
    (root / PART).write_bytes(b"not parquet at all")
    ds = SoftLabelDataset(root)
    with pytest.raises(PipelineError, match=rf"^shard {PART} is not a readable Parquet file"):
        ds.open_shard(ds.split_shards("train")[0])


def test_a_shard_of_another_layout_names_the_column(tmp_path):
    root = dataset(tmp_path)
    edit_manifest(root, lambda m: m["labels"].update(loss_mask=True) or
                  m.update(format_version="1.3"))
    ds = SoftLabelDataset(root)
    with pytest.raises(PipelineError, match=rf"^shard {PART}: schema does not match format 1.3 "
                                            r"for labels .* \(missing column label_counts, "
                                            r"loss_mask\)$"):
        ds.read_table(ds.split_shards("train")[0], verify=False)


def test_metadata_of_another_dataset_is_refused(tmp_path):
    root = dataset(tmp_path)
    edit_manifest(root, lambda m: m.update(seq_len=3))
    ds = SoftLabelDataset(root)
    with pytest.raises(PipelineError, match=rf"^shard {PART}: its metadata says seq_len = '2' "
                                            "but manifest.json says '3'"):
        ds.open_shard(ds.split_shards("train")[0])


def test_more_rows_on_disk_than_listed_are_refused(tmp_path):
    root = dataset(tmp_path)
    edit_manifest(root, lambda m: entry0(m).update(rows=2))
    ds = SoftLabelDataset(root)
    with pytest.raises(PipelineError, match=rf"^shard {PART}: 3 rows on disk but the manifest "
                                            "says 2; the dataset is corrupt$"):
        ds.read_table(ds.split_shards("train")[0])


# -- verified opening: the row-group index, or the whole file once --------------------------------

def test_an_indexed_shard_is_checked_against_its_size_and_row_counts(tmp_path):
    root = dataset(tmp_path, rows=5)
    ds = SoftLabelDataset(root)
    pf = ds.open_verified(ds.split_shards("train")[0])
    assert pf.read_row_group(2).num_rows == 1
    pf.close()
    edit_manifest(root, lambda m: entry0(m).update(row_group_rows=[2, 1, 2]))
    ds = SoftLabelDataset(root)
    with pytest.raises(PipelineError, match=rf"^shard {PART}: its row groups hold other row "
                                            "counts than manifest.json lists"):
        ds.open_verified(ds.split_shards("train")[0])
    (root / PART).write_bytes((root / PART).read_bytes() + b"x")
    with pytest.raises(PipelineError, match=rf"^shard {PART}: checksum mismatch"):
        ds.open_verified(ds.split_shards("train")[0])
    (root / PART).unlink()
    with pytest.raises(PipelineError, match=rf"^shard {PART} listed in the manifest is missing"):
        ds.open_verified(ds.split_shards("train")[0])


def test_a_shard_without_an_index_is_hashed_whole_once_per_process(tmp_path, monkeypatch):
    root = dataset(tmp_path)
    edit_manifest(root, lambda m: [entry0(m).pop(k) for k in ("row_group_rows",
                                                                "row_group_bytes",
                                                                "row_group_sha256")])
    ds = SoftLabelDataset(root)
    shard = ds.split_shards("train")[0]
    assert shard.row_groups is None
    hashed = []
    sha256 = ds.store.sha256
    monkeypatch.setattr(ds.store, "sha256", lambda rel: hashed.append(rel) or sha256(rel))
    for _ in range(2):
        assert ds.open_verified(shard).read().num_rows == 3
    assert hashed == [PART]
    flip_a_byte(root)
    other = SoftLabelDataset(root)
    with pytest.raises(PipelineError, match="checksum mismatch"):
        other.open_verified(other.split_shards("train")[0])


# -- decoding -------------------------------------------------------------------------------------

def decoded(root, rows=None):
    ds = SoftLabelDataset(root)
    table = ds.read_table(ds.split_shards("train")[0])
    return ds.decode(table if rows is None else table.slice(*rows))


@pytest.mark.parametrize("id_encoding", [None, "sorted_delta"])
def test_top_k_decodes_to_the_labels_written_in_rank_order(tmp_path, id_encoding):
    labels = topk_labels(3, L, 3)
    labels.ids[1, 1] = [7, 2, 9]
    s = spec(k=3, encoding="fp32", id_encoding=id_encoding)
    b = decoded(dataset(tmp_path, s, labels=labels))
    assert b["input_ids"].dtype == torch.int64 and b["input_ids"].tolist() == tokens(3).tolist()
    assert b["topk_ids"].dtype == torch.int64 and b["topk_ids"].tolist() == labels.ids.tolist()
    assert b["topk_logprobs"].tolist() == labels.logprobs.tolist()
    assert b["tail_mass"].tolist() == labels.tail.tolist() and set(b) == {
        "input_ids", "topk_ids", "topk_logprobs", "tail_mass"}


def test_a_slice_of_rows_decodes_to_those_rows(tmp_path):
    labels = topk_labels(4, L, 2)
    labels.ids[2] = [[5, 6], [8, 1]]
    b = decoded(dataset(tmp_path, rows=4, labels=labels), rows=(2, 2))
    assert b["topk_ids"].tolist() == labels.ids[2:].tolist()
    assert b["input_ids"].tolist() == tokens(4)[2:].tolist()


def test_tokens_only_decode_to_input_ids(tmp_path):
    b = decoded(dataset(tmp_path, spec("none", 0), labels=None))
    assert set(b) == {"input_ids"} and b["input_ids"].shape == (3, L)


@pytest.mark.parametrize("id_encoding", [None, "sorted_delta"])
def test_top_p_pads_each_position_to_k_behind_a_mask(tmp_path, id_encoding):
    counts = np.array([[1, 3], [2, 1], [3, 3]])
    labels = variable_labels(counts, 3)
    labels.logprobs[1, 0] = [-1.0, -2e4, -3e4]  # below the padding's -1e4: still real entries
    labels.logprobs[2, 1] = [-1.0, -2e4, -3e4]
    s = spec("topp", 3, encoding="fp32", top_p=0.5, min_k=1, id_encoding=id_encoding)
    b = decoded(dataset(tmp_path, s, labels=labels))
    mask = np.arange(3) < counts[..., None]
    assert b["label_mask"].tolist() == mask.tolist()
    assert b["topk_ids"].tolist() == np.where(mask, labels.ids, 0).tolist()
    assert b["topk_logprobs"].tolist() == np.where(mask, labels.logprobs, -1e4).tolist()


@pytest.mark.parametrize("temperature, log_norm, id_encoding", [
    (1.0, None, "sorted_delta"), (2.0, 0.25, "sorted_delta"), (1.0, None, None),
    (2.0, 0.25, None)])
def test_sampled_labels_decode_to_their_importance_weights(tmp_path, temperature, log_norm,
                                                           id_encoding):
    counts = np.array([[2, 1], [1, 2], [2, 2]])
    labels = variable_labels(counts, 2, draws=2, log_norm=log_norm)
    s = spec("sampled", 2, encoding="fp32", samples=2, proposal_temperature=temperature,
             seed=0, id_encoding=id_encoding)
    b = decoded(dataset(tmp_path, s, labels=labels))
    w = labels.sample_counts / 2.0
    if log_norm is not None:
        w = w * np.exp(0.5 * labels.logprobs + log_norm)
    np.testing.assert_allclose(b["sample_weights"].numpy(),
                               np.where(np.arange(2) < counts[..., None], w, 0), rtol=1e-6)
    assert b["topk_ids"].tolist() == np.where(np.arange(2) < counts[..., None],
                                              labels.ids, 0).tolist()


def test_format_1_3_decodes_its_loss_mask_and_segments(tmp_path):
    mask = np.array([[True, False], [False, False], [True, False]])
    segments = np.array([[1, 1], [1, 2], [1, 1]], dtype=np.int32)
    s = spec(k=2, encoding="fp32", loss_mask=True, segments=True)
    root = write_dataset(tmp_path / "ds", s, {"train": [(tokens(3), topk_labels(3, L, 2), mask,
                                                         segments)]}, L)
    b = decoded(root)
    assert b["loss_mask"].dtype == torch.bool and b["loss_mask"].tolist() == mask.tolist()
    assert b["segment_ids"].dtype == torch.int64 and b["segment_ids"].tolist() == \
        segments.tolist()
    assert b["label_mask"].tolist() == np.repeat(mask[..., None], 2, -1).tolist()
    assert b["tail_mass"].tolist() == [[0.25, 1.0], [1.0, 1.0], [0.25, 1.0]]


def test_rows_that_do_not_decode_are_refused_naming_where(tmp_path):
    root = dataset(tmp_path)
    ds = SoftLabelDataset(root)
    table = ds.read_table(ds.split_shards("train")[0])
    short = pa.array([[1, 2], [3], [4, 5]], type=pa.list_(pa.uint16()))
    with pytest.raises(PipelineError, match=r"^somewhere row 1: column input_ids has 1 values"):
        ds.decode(table.set_column(0, "input_ids", short), "somewhere")
    with pytest.raises(PipelineError, match=rf"^dataset {root} row 1: column input_ids"):
        ds.decode(table.set_column(0, "input_ids", short))
    bad = set_column(table, S.COL_TOPK_LOGPROBS, lambda v: np.where(v < -1.5, 0.5, v))
    with pytest.raises(PipelineError, match="^x row 0: positive log-probability"):
        ds.decode(bad, "x")


def test_decoding_a_variable_table_whose_entries_miss_their_counts_is_a_value_error(tmp_path):
    s = spec("topp", 2, encoding="fp32", top_p=0.5, min_k=1)
    root = dataset(tmp_path, s, labels=variable_labels(np.full((3, L), 2), 2))
    table = SoftLabelDataset(root).read_table(SoftLabelDataset(root).split_shards("train")[0])
    counts = pa.array([[2, 2], [2, 2], [2, 1]], type=pa.list_(pa.uint8()))
    with pytest.raises(ValueError, match="^topk_ids holds 12 entries, label_counts sum to 11$"):
        decode_batch(table.set_column(table.schema.get_field_index(S.COL_COUNTS),
                                      S.COL_COUNTS, counts), s, L)
    fewer = pa.array([[-1.0] * 4, [-1.0] * 4, [-1.0] * 3], type=pa.list_(pa.float32()))
    with pytest.raises(ValueError, match="^topk_logprobs holds 11 entries, label_counts sum to "
                                         "12$"):
        decode_batch(table.set_column(table.schema.get_field_index(S.COL_TOPK_LOGPROBS),
                                      S.COL_TOPK_LOGPROBS, fewer), s, L)
    s = spec("sampled", 2, encoding="fp32", samples=2, proposal_temperature=1.0, seed=0)
    root = dataset(tmp_path / "b", s, labels=variable_labels(np.full((3, L), 2), 2, draws=2))
    table = SoftLabelDataset(root).read_table(SoftLabelDataset(root).split_shards("train")[0])
    fewer = pa.array([[1] * 4, [1] * 4, [1] * 3], type=pa.list_(pa.uint8()))
    with pytest.raises(ValueError, match="^sample_counts holds 11 entries, label_counts sum to "
                                         "12$"):
        decode_batch(table.set_column(table.schema.get_field_index(S.COL_SAMPLE_COUNTS),
                                      S.COL_SAMPLE_COUNTS, fewer), s, L)


def test_flat_values_honour_slices_and_are_writable():
    col = pa.array([[1, 2], [3, 4], [5, 6]], type=pa.list_(pa.uint16())).slice(1, 2)
    values = _flat_values(col, np.int64)
    assert values.tolist() == [3, 4, 5, 6] and values.dtype == np.int64
    values[0] = 9
    chunked = pa.chunked_array([pa.array([[1.5]], type=pa.list_(pa.float32())),
                                pa.array([[2.5, 3.5]], type=pa.list_(pa.float32()))])
    assert _flat_values(chunked).tolist() == [1.5, 2.5, 3.5]
    assert _flat_values(chunked).flags.writeable
