"""The format's one writer (pipeline/softlabels/writer.py): the columns it builds from labels,
the shard file and its metadata, the completion record, and what a rerun trusts of them.

Expected tables are written out by hand (flat values and list offsets); a record's sha256 is
hashlib's of the file; a shard a rerun must relabel is damaged here without changing its size.
"""

import hashlib
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.errors import PipelineError
from pipeline.io.storage import Store
from pipeline.softlabels import schema as S
from pipeline.softlabels.writer import (
    ShardLabels,
    build_table,
    check_complete,
    completed_record,
    write_shard,
)
from tests.pipeline.softlabels.handmade import spec

DOCS = [["a"], ["a", "b"]]
TOKENS = np.array([[1, 2, 3], [4, 5, 6]])


def flat(table: pa.Table, name: str) -> list:
    return table.column(name).combine_chunks().values.to_pylist()


def offsets(table: pa.Table, name: str) -> list:
    return table.column(name).combine_chunks().offsets.to_pylist()


def topk_labels() -> ShardLabels:
    """[2 rows, 3 positions, k = 2]: ids in rank order, log-probabilities descending."""
    ids = np.array([[[7, 2], [0, 9], [3, 4]], [[5, 6], [9, 8], [1, 0]]])
    lp = -np.arange(1, 13, dtype=np.float32).reshape(2, 3, 2) / 4
    tail = np.array([[0.5, 0.25, 0.0], [1.0, 0.125, 0.75]], dtype=np.float32)
    return ShardLabels(ids, lp, tail)


# -- tables ---------------------------------------------------------------------------------------

def test_a_rank_order_top_k_table_is_the_labels_flattened_row_by_row():
    s = spec(k=2, encoding="fp32")
    t = build_table(s, TOKENS, DOCS, topk_labels())
    assert t.schema == S.arrow_schema(s)
    assert flat(t, "input_ids") == [1, 2, 3, 4, 5, 6] and offsets(t, "input_ids") == [0, 3, 6]
    assert t.column("doc_ids").to_pylist() == DOCS
    assert flat(t, "topk_ids") == [7, 2, 0, 9, 3, 4, 5, 6, 9, 8, 1, 0]
    assert offsets(t, "topk_ids") == [0, 6, 12]
    assert flat(t, "topk_logprobs") == [-x / 4 for x in range(1, 13)]
    assert flat(t, "tail_mass") == [0.5, 0.25, 0.0, 1.0, 0.125, 0.75]


def test_format_1_2_stores_ascending_ids_as_deltas_with_their_values():
    s = spec(k=2, encoding="fp16", id_encoding="sorted_delta")
    t = build_table(s, TOKENS, DOCS, topk_labels())
    # per position ascending: (2,7) (0,9) (3,4) | (5,6) (8,9) (0,1): first id, then the gap
    assert flat(t, "label_id_deltas") == [2, 5, 0, 9, 3, 1, 5, 1, 8, 1, 0, 1]
    lp = [-x / 4 for x in range(1, 13)]
    assert flat(t, "label_logprobs") == [lp[1], lp[0], lp[2], lp[3], lp[4], lp[5],
                                         lp[6], lp[7], lp[9], lp[8], lp[11], lp[10]]


def test_variable_modes_write_only_each_positions_counted_entries():
    labels = topk_labels()
    labels.counts = np.array([[1, 2, 1], [2, 1, 1]])
    labels.sample_counts = np.array([[[4, 0], [3, 1], [4, 0]], [[2, 2], [4, 0], [4, 0]]])
    labels.log_norm = np.array([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]])
    s = spec("sampled", 2, encoding="fp32", samples=4, proposal_temperature=2.0, seed=0)
    t = build_table(s, TOKENS, DOCS, labels)
    assert t.schema == S.arrow_schema(s)
    assert flat(t, "topk_ids") == [7, 0, 9, 3, 5, 6, 9, 1]
    assert offsets(t, "topk_ids") == [0, 4, 8] == offsets(t, "sample_counts")
    assert flat(t, "sample_counts") == [4, 3, 1, 4, 2, 2, 4, 4]
    assert flat(t, "label_counts") == [1, 2, 1, 2, 1, 1]
    assert flat(t, "proposal_log_norm") == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])


def test_a_loss_mask_keeps_no_entries_and_a_tail_of_one_outside_it():
    mask = np.array([[True, False, True], [False, False, True]])
    segments = np.array([[1, 1, 2], [1, 1, 1]])
    s = spec(k=2, encoding="fp32", loss_mask=True, segments=True)
    t = build_table(s, TOKENS, DOCS, topk_labels(), mask, segments)
    assert t.schema == S.arrow_schema(s)
    assert flat(t, "label_counts") == [2, 0, 2, 0, 0, 2]
    assert flat(t, "topk_ids") == [7, 2, 3, 4, 1, 0]
    assert flat(t, "tail_mass") == [0.5, 1.0, 0.0, 1.0, 1.0, 0.75]
    assert flat(t, "loss_mask") == mask.ravel().tolist()
    assert flat(t, "segment_ids") == [1, 1, 2, 1, 1, 1]


def test_a_masked_tempered_sampled_table_zeroes_the_log_norm_outside_the_mask():
    labels = topk_labels()
    labels.counts = np.full((2, 3), 2)
    labels.sample_counts = np.full((2, 3, 2), 2)
    labels.log_norm = np.full((2, 3), 0.5)
    s = spec("sampled", 2, encoding="fp32", samples=4, proposal_temperature=2.0, seed=0,
             loss_mask=True)
    mask = np.array([[True, False, False], [False, True, False]])
    t = build_table(s, TOKENS, DOCS, labels, mask)
    assert flat(t, "proposal_log_norm") == [0.5, 0.0, 0.0, 0.0, 0.5, 0.0]
    assert flat(t, "label_counts") == [2, 0, 0, 0, 2, 0]


def test_a_table_of_no_rows_is_empty_not_an_error():
    t = build_table(spec(k=2), np.zeros((0, 3), dtype=np.int64), [], ShardLabels(
        np.zeros((0, 3, 2), int), np.zeros((0, 3, 2), np.float32), np.zeros((0, 3))))
    assert t.num_rows == 0 and offsets(t, "topk_ids") == [0]


def test_a_format_1_2_shard_is_byte_stream_split_and_zstd(tmp_path):
    s = spec(k=2, encoding="fp32", id_encoding="sorted_delta")
    table = build_table(s, TOKENS, DOCS, topk_labels())
    write_shard(tmp_path, "train", 0, table, KV, 2, "0" * 64)
    meta = pq.read_metadata(tmp_path / "shards/train/part-00000.parquet").row_group(0)
    columns = {meta.column(i).path_in_schema: meta.column(i) for i in range(meta.num_columns)}
    for name in ("label_id_deltas", "label_logprobs", "tail_mass"):
        assert "BYTE_STREAM_SPLIT" in columns[f"{name}.list.element"].encodings, name
    assert "BYTE_STREAM_SPLIT" not in columns["input_ids.list.element"].encodings
    assert {c.compression for c in columns.values()} == {"ZSTD"}


def test_a_labeled_dataset_needs_labels():
    with pytest.raises(ValueError, match="needs labels for every shard"):
        build_table(spec(), TOKENS, DOCS, None)
    tokens_only = build_table(spec("none", 0), TOKENS, DOCS, None)
    assert tokens_only.column_names == ["input_ids", "doc_ids"]


# -- shards and completion records ----------------------------------------------------------------

KV = {"mode": "topk", "k": 2}


def write(root, labels=None, index=3, rows_per_group=1, input_sha="f" * 64):
    s = spec(k=2, encoding="fp32")
    table = build_table(s, TOKENS, DOCS, labels or topk_labels())
    return write_shard(root, "train", index, table, KV, rows_per_group, input_sha)


def test_a_shard_is_written_with_its_metadata_and_a_record_of_what_it_holds(tmp_path):
    rec = write(tmp_path)
    path = tmp_path / "shards/train/part-00003.parquet"
    data = path.read_bytes()
    assert rec["path"] == "shards/train/part-00003.parquet" and rec["rows"] == 2
    assert rec["positions"] == 6 and rec["bytes"] == len(data)
    assert rec["sha256"] == hashlib.sha256(data).hexdigest() and rec["input_sha256"] == "f" * 64
    assert rec["topk_mass_sum"] == pytest.approx(6 - 2.625)
    assert rec["row_group_rows"] == [1, 1]
    assert json.loads((tmp_path / "_progress/train/part-00003.json").read_text()) == rec
    meta = pq.read_schema(path).metadata
    assert {k: meta[k] for k in (b"softlabels.mode", b"softlabels.k", b"softlabels.split",
                                 b"softlabels.shard")} == {
        b"softlabels.mode": b"topk", b"softlabels.k": b"2", b"softlabels.split": b"train",
        b"softlabels.shard": b"3"}
    assert pq.read_metadata(path).num_row_groups == 2


def test_a_row_group_size_below_one_writes_one_row_per_group(tmp_path):
    assert write(tmp_path, rows_per_group=0)["row_group_rows"] == [1, 1]


def test_records_count_entries_and_trained_positions(tmp_path):
    s = spec(k=2, encoding="fp32", loss_mask=True)
    mask = np.array([[True, False, True], [False, False, False]])
    table = build_table(s, TOKENS, DOCS, topk_labels(), mask)
    rec = write_shard(tmp_path, "train", 0, table, KV, 2, "0" * 64)
    assert rec["entries"] == 4 and rec["trained_positions"] == 2
    assert rec["topk_mass_sum"] == pytest.approx((1 - 0.5) + (1 - 0.0))


@pytest.mark.parametrize("fails", ["write_table", "__init__"])  # after or before the file exists
def test_a_failed_write_is_one_line_and_leaves_no_file(tmp_path, monkeypatch, fails):
    def full(*a, **kw):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pq.ParquetWriter, fails, full)
    with pytest.raises(PipelineError, match=r"^writing shard shards/train/part-00003.parquet "
                                            r"failed: .*No space left on device \(disk full"):
        write(tmp_path)
    assert not list((tmp_path / "shards").rglob("*.parquet*"))
    assert not (tmp_path / "_progress").exists()


PLANNED = {"split": "train", "index": 3, "input_sha256": "f" * 64}


def test_a_finished_shard_is_trusted_by_a_rerun(tmp_path):
    rec = write(tmp_path)
    assert completed_record(Store(tmp_path), PLANNED) == rec


def test_a_same_size_corrupted_shard_is_relabeled(tmp_path):
    write(tmp_path)
    path = tmp_path / "shards/train/part-00003.parquet"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    assert completed_record(Store(tmp_path), PLANNED) is None


@pytest.mark.parametrize("damage", ["truncate", "remove", "other inputs", "no record",
                                    "record not json", "record of another shard",
                                    "record not an object", "record not utf-8"])
def test_anything_short_of_a_matching_record_and_file_is_relabeled(tmp_path, damage):
    write(tmp_path)
    shard = tmp_path / "shards/train/part-00003.parquet"
    record = tmp_path / "_progress/train/part-00003.json"
    planned = dict(PLANNED)
    if damage == "truncate":
        shard.write_bytes(shard.read_bytes()[:-1])
    elif damage == "remove":
        shard.unlink()
    elif damage == "other inputs":
        planned["input_sha256"] = "e" * 64
    elif damage == "no record":
        record.unlink()
    elif damage == "record not json":
        record.write_text("{")
    elif damage == "record of another shard":
        rec = json.loads(record.read_text())
        record.write_text(json.dumps({**rec, "path": "shards/train/part-00004.parquet"}))
    elif damage == "record not an object":
        record.write_text("[]")
    else:
        record.write_bytes(b"\xff\xfe")
    assert completed_record(Store(tmp_path), planned) is None


def test_the_run_is_complete_with_exactly_one_record_per_planned_shard():
    planned = [{"split": "train", "index": 0}, {"split": "validation", "index": 0},
               {"split": "train", "index": 1}]
    records = [{"path": "shards/train/part-00001.parquet"},
               {"path": "shards/validation/part-00000.parquet"},
               {"path": "shards/train/part-00000.parquet"}]
    check_complete(planned, records)
    with pytest.raises(PipelineError, match=r"^labeling finished with 2 shard records for 3 "
                                            r"planned shards \(missing \['shards/train/part-"
                                            r"00000.parquet'\]\); rerun `pipeline label`"):
        check_complete(planned, records[:2])
    with pytest.raises(PipelineError, match="with 4 shard records for 3 planned shards"):
        check_complete(planned, records + records[:1])
    seven = [{"split": "train", "index": i} for i in range(7)]
    with pytest.raises(PipelineError, match=r"\(missing \['shards/train/part-00000.parquet', "
                                            r"('shards/train/part-0000[1-4].parquet', ){3}"
                                            r"'shards/train/part-00004.parquet'\]\)"):
        check_complete(seven, [])
