"""The row-group index (softlabels/rowgroups.py): planning from manifest.json alone, and each
row group verified when first read, refused before its rows are used."""

import json
import shutil
from collections import Counter

import pyarrow.parquet as pq
import pytest
import torch

from pipeline.errors import PipelineError
from pipeline.softlabels import rowgroups
from pipeline.softlabels.reader import SoftLabelDataset
from pipeline.softlabels.stream import StreamConfig, StreamReader
from pipeline.softlabels.validate import validate_dataset
from stages.label import LabelConfig, run

SHARD = "shards/train/part-00001.parquet"


@pytest.fixture(scope="module")
def labeled(tmp_path_factory, tiny_corpus, tiny_teacher):
    out = tmp_path_factory.mktemp("rowgroups") / "ds"
    run(LabelConfig(corpus=str(tiny_corpus), out=str(out), teacher=str(tiny_teacher), top_k=4,
                    seq_len=16, shard_rows=16, row_group_rows=8, batch_size=16,
                    validation_fraction=0.1, limit_docs=40, quiet=True))
    return out


def _copy(labeled, tmp_path):
    return shutil.copytree(labeled, tmp_path / "ds")


def _edit(root, fn):
    m = json.loads((root / "manifest.json").read_text())
    fn(m)
    (root / "manifest.json").write_text(json.dumps(m, indent=2))


def _keys(batch) -> list[bytes]:
    parts = [batch["input_ids"].flatten(1), batch["topk_ids"].flatten(1)]
    return [r.numpy().tobytes() for r in torch.cat(parts, 1)]


def test_index_covers_each_shard_and_verified_reads_equal_plain_ones(labeled):
    ds = SoftLabelDataset(labeled)
    for shard in ds.split_shards("train"):
        entry = shard.row_groups
        assert entry is not None and entry["row_group_rows"] == [8] * (shard.rows // 8) + (
            [shard.rows % 8] if shard.rows % 8 else [])
        assert rowgroups.index_file(shard.path)["sha256"] == shard.sha256
        pf = ds.open_verified(shard)
        for i in range(pf.metadata.num_row_groups):
            assert pf.read_row_group(i).equals(pq.ParquetFile(shard.path).read_row_group(i))
        pf.close()


def test_planning_opens_no_shard(labeled, tmp_path):
    """10,000 listed shards that do not exist: the dataset opens and the epoch is planned from
    the manifest alone; only reading a row group touches a file (and finds it missing)."""
    root = _copy(labeled, tmp_path)
    template = json.loads((root / "manifest.json").read_text())["splits"]["train"][0]
    _edit(root, lambda m: m["splits"].update(train=[
        {**template, "path": f"shards/train/part-{i:05d}.parquet"} for i in range(10_000)]))
    shutil.rmtree(root / "shards/train")
    ds = SoftLabelDataset(root)
    reader = StreamReader(ds, StreamConfig(batch_size=8), verify="lazy")
    assert reader.rows == 10_000 * template["rows"]
    assert reader.epoch_length(0) == 10_000 * template["rows"] // 8
    with pytest.raises(PipelineError, match=r"shard shards/train/part-\d{5}.parquet listed in "
                                            "the manifest is missing"):
        next(reader.iter_epoch(0))


def _flip(path, offset):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("workers", [0, 1])
def test_a_changed_row_group_is_refused_before_its_rows_are_used(labeled, tmp_path, workers):
    root = _copy(labeled, tmp_path)
    ds = SoftLabelDataset(root)
    shard = ds.split_shards("train")[1]
    bad_rows = set(_keys(ds.decode(pq.ParquetFile(shard.path).read_row_group(1))))
    _flip(shard.path, shard.row_groups["row_group_bytes"][0] + 100)  # inside row group 1
    reader = StreamReader(SoftLabelDataset(root), StreamConfig(batch_size=4, num_workers=workers),
                          verify="lazy")
    used = Counter()
    with pytest.raises(PipelineError, match=f"^shard {SHARD} row group 1: checksum mismatch "
                                            r"with manifest.json \(the file changed"):
        for _, batch in reader.iter_epoch(0):
            used.update(_keys(batch))
    assert not bad_rows & set(used)


def test_a_changed_footer_is_refused_naming_it(labeled, tmp_path):
    root = _copy(labeled, tmp_path)
    path = root / SHARD
    _flip(path, path.stat().st_size - 100)
    with pytest.raises(PipelineError, match=f"shard {SHARD} footer: checksum mismatch"):
        list(StreamReader(SoftLabelDataset(root), StreamConfig(batch_size=4), verify="lazy")
             .iter_epoch(0))


def test_a_dataset_without_the_index_streams_and_is_still_verified(labeled, tmp_path):
    """Datasets of older labelers: planned from footers, each shard hashed whole when first
    opened (lazily), as before the index."""
    root = _copy(labeled, tmp_path)
    _edit(root, lambda m: [e.pop(k) for s in m["splits"].values() for e in s
                           for k in rowgroups.KEYS])
    rows = sum(len(b["input_ids"]) for _, b in StreamReader(
        SoftLabelDataset(root), StreamConfig(batch_size=4), verify="lazy").iter_epoch(0))
    assert rows == sum(s.rows for s in SoftLabelDataset(root).split_shards("train"))
    _flip(root / SHARD, 200)
    reader = StreamReader(SoftLabelDataset(root), StreamConfig(batch_size=4), verify="lazy")
    with pytest.raises(PipelineError, match=f"shard {SHARD}: checksum mismatch"):
        list(reader.iter_epoch(0))


@pytest.mark.parametrize("field,value,message", [
    ("row_group_rows", ["8", "8"], "malformed row_group_rows"),
    ("row_group_rows", [8.0, 8.0], "malformed row_group_rows"),
    ("row_group_sha256", "ab", "malformed row_group_rows"),
    ("row_group_bytes", [-1, 5], "negative"),
])
def test_a_malformed_index_is_refused_naming_the_shard(labeled, tmp_path, field, value,
                                                       message):
    root = _copy(labeled, tmp_path)
    _edit(root, lambda m: m["splits"]["train"][1].update({field: value}))
    with pytest.raises(PipelineError, match=f"shard entry '{SHARD}' .*{message}"):
        SoftLabelDataset(root)


def test_index_rows_that_disagree_with_the_entry_are_refused_at_planning(labeled, tmp_path):
    root = _copy(labeled, tmp_path)
    _edit(root, lambda m: m["splits"]["train"][1].update(row_group_rows=[8, 7]))
    with pytest.raises(PipelineError, match=f"shard {SHARD}: its row groups hold 15 rows .* "
                                            "manifest says 16"):
        StreamReader(SoftLabelDataset(root), StreamConfig(), verify="lazy")


def test_validate_checks_the_index_too(labeled, tmp_path):
    """A whole-file sha256 that matches and a row-group digest that does not: `validate` says
    so, naming the row group, instead of training finding out."""
    root = _copy(labeled, tmp_path)
    assert validate_dataset(root)[0] == []

    def wrong_digest(m):
        entry = m["splits"]["train"][1]
        entry["row_group_sha256"] = "0" * 64 + entry["row_group_sha256"][64:]
    _edit(root, wrong_digest)
    problems, _ = validate_dataset(root)
    assert problems == [f"shard {SHARD} row group 0: {rowgroups.MISMATCH}"]
