"""Writer → reader round trip, validation of corrupt shards, and refusal of untrusted manifests."""

import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from pipeline.errors import PipelineError
from pipeline.models.tokenizer import load_tokenizer
from pipeline.softlabels.reader import SoftLabelDataset
from pipeline.softlabels.validate import validate_dataset
from stages.label import LabelConfig, run


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, tiny_corpus, tiny_teacher):
    out = tmp_path_factory.mktemp("ds") / "labels"
    run(LabelConfig(corpus=str(tiny_corpus), out=str(out), teacher=str(tiny_teacher), top_k=8,
                    seq_len=32, shard_rows=16, batch_size=8, validation_fraction=0.2,
                    quiet=True, device="cpu", id_encoding="rank"))  # the 1.0 layout
    return out


def copy(dataset, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(dataset, dst)
    return dst


def test_round_trip_matches_teacher(dataset, tiny_teacher):
    from pipeline.labeling.forward import topk_from_logits
    from pipeline.models.checkpoint import load_model_dir

    ds = SoftLabelDataset(dataset)
    shard = ds.split_shards("train")[0]
    batch = ds.decode(ds.read_table(shard))
    teacher = load_model_dir(tiny_teacher)
    with torch.no_grad():
        ids, lp, tail = topk_from_logits(teacher.model(batch["input_ids"]), 8)
    assert batch["topk_ids"].shape == (16, 32, 8)
    # ids may swap only where fp16 rounding ties two neighbours; values must agree closely
    assert (batch["topk_ids"] == ids).float().mean() > 0.99
    assert torch.allclose(batch["topk_logprobs"], lp, atol=2e-3)
    assert torch.allclose(batch["tail_mass"], tail, atol=1e-6)
    meta = pq.ParquetFile(shard.path).schema_arrow.metadata
    assert meta[b"softlabels.k"] == b"8" and meta[b"softlabels.split"] == b"train"


def test_manifest_contents(dataset, tiny_tokenizer):
    m = json.loads((dataset / "manifest.json").read_text())
    assert m["format_version"] == "1.0"
    assert m["tokenizer"]["sha256"] == load_tokenizer(tiny_tokenizer).sha256
    assert m["labels"] == {"mode": "topk", "k": 8, "vocab_size": 320, "id_type": "uint16",
                           "logprob_encoding": "fp16"}
    assert m["corpus"]["documents_read"] == 120
    assert set(m["splits"]) == {"train", "validation"}
    assert 0 < m["summary"]["mean_topk_mass"] < 1
    assert m["teacher"]["parameters"] > 0 and len(m["teacher"]["sha256"]) == 64
    assert (dataset / "README.md").read_text().startswith("# Soft-label dataset")


def test_validate_clean_dataset(dataset):
    problems, summary = validate_dataset(dataset)
    assert problems == [] and summary["shards"] >= 2


def test_validate_catches_flipped_byte(dataset, tmp_path):
    d = copy(dataset, tmp_path)
    path = d / "shards/train/part-00000.parquet"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    problems, _ = validate_dataset(d)
    assert any("part-00000.parquet: checksum mismatch" in p for p in problems)


def test_validate_catches_truncated_shard(dataset, tmp_path):
    d = copy(dataset, tmp_path)
    path = d / "shards/validation/part-00000.parquet"
    path.write_bytes(path.read_bytes()[:100])
    problems, _ = validate_dataset(d)
    assert any("validation/part-00000.parquet" in p for p in problems)


def _rewrite_shard(d, mutate):
    """Rewrite train shard 0 with mutated values and fix its checksum (and row-group index) in
    the manifest, so only the content checks can catch it."""
    from tests.reliability.conftest import rewrite_shard

    rewrite_shard(d, "shards/train/part-00000.parquet", mutate)


@pytest.mark.parametrize("column,value,message", [
    ("topk_ids", 999, "topk id >= vocab"),
    ("topk_logprobs", float("nan"), "non-finite log-probability"),
    ("topk_logprobs", 0.5, "positive log-probability"),
    ("tail_mass", 1.5, "tail mass outside"),
])
def test_validate_catches_bad_values(dataset, tmp_path, column, value, message):
    import pyarrow as pa

    d = copy(dataset, tmp_path)

    def mutate(table):
        col = table.column(column).combine_chunks()
        values = col.values.to_numpy(zero_copy_only=False).copy()
        values[len(values) // 2] = value
        new = pa.ListArray.from_arrays(col.offsets, pa.array(values, type=col.type.value_type))
        return table.set_column(table.schema.get_field_index(column), column, new)

    _rewrite_shard(d, mutate)
    problems, _ = validate_dataset(d)
    assert any(message in p and "train/part-00000.parquet row 8" in p for p in problems), problems


def test_validate_catches_log_probabilities_out_of_order(dataset, tmp_path):
    """Stored entries descend within a position: the middle position's first entry is made the
    smallest (still finite and <= 0), so only the order check can object."""
    import pyarrow as pa

    d = copy(dataset, tmp_path)

    def mutate(table):
        col = table.column("topk_logprobs").combine_chunks()
        values = col.values.to_numpy(zero_copy_only=False).copy()
        first = len(values) // 2 - (len(values) // 2) % 8  # k = 8 entries per position
        values[first] = values[first + 7] - 1.0
        new = pa.ListArray.from_arrays(col.offsets, pa.array(values, type=col.type.value_type))
        return table.set_column(table.schema.get_field_index("topk_logprobs"), "topk_logprobs",
                                new)

    _rewrite_shard(d, mutate)
    problems, _ = validate_dataset(d)
    assert problems == ["shards/train/part-00000.parquet row 8: log-probabilities not "
                        "descending"]


def test_validate_catches_a_swapped_tokenizer(dataset, tmp_path, tiny_corpus):
    """Another tokenizer.json in the folder (a real one, trained on the same text) is refused
    by its sha256, although every shard is intact."""
    from pipeline.models.tokenizer import train_bpe_tokenizer

    d = copy(dataset, tmp_path)
    texts = [json.loads(line)["text"] for line in tiny_corpus.read_text().splitlines()]
    other = train_bpe_tokenizer(texts, 300, tmp_path / "other.json")
    shutil.copy(tmp_path / "other.json", d / "tokenizer.json")
    assert other.sha256 != json.loads((d / "manifest.json").read_text())["tokenizer"]["sha256"]
    problems, _ = validate_dataset(d)
    assert problems == ["tokenizer.json: sha256 differs from manifest tokenizer.sha256"]


@pytest.mark.parametrize("bad_path", ["../outside.parquet", "/etc/passwd",
                                      "s3://other-bucket/x.parquet", "shards/../../x.parquet"])
def test_manifest_path_escape_refused(dataset, tmp_path, bad_path):
    d = copy(dataset, tmp_path)
    m = json.loads((d / "manifest.json").read_text())
    m["splits"]["train"][0]["path"] = bad_path
    (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(PipelineError, match="escapes the dataset directory|resolves outside"):
        SoftLabelDataset(d)


def test_future_major_version_refused(dataset, tmp_path):
    d = copy(dataset, tmp_path)
    m = json.loads((d / "manifest.json").read_text())
    m["format_version"] = "2.0"
    (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(PipelineError, match="format_version 2.0 is not supported"):
        SoftLabelDataset(d)


def test_no_manifest_means_not_a_dataset(dataset, tmp_path):
    d = copy(dataset, tmp_path)
    (d / "manifest.json").unlink()
    with pytest.raises(PipelineError, match="did not finish"):
        SoftLabelDataset(d)


def test_decode_shapes_and_dtypes(dataset):
    ds = SoftLabelDataset(dataset)
    b = ds.decode(ds.read_table(ds.split_shards("validation")[0]))
    assert b["input_ids"].dtype == torch.int64 and b["topk_logprobs"].dtype == torch.float32
    assert np.isfinite(b["topk_logprobs"].numpy()).all()


def test_decode_respects_arrow_slices(dataset):
    ds = SoftLabelDataset(dataset)
    table = ds.read_table(ds.split_shards("train")[0])
    full = ds.decode(table)
    part = ds.decode(table.slice(3, 5))
    for key, value in full.items():
        assert torch.equal(part[key], value[3:8]), key


def _clean_batch() -> dict:
    return {"input_ids": torch.full((3, 4), 9), "topk_ids": torch.zeros(3, 4, 2, dtype=torch.long),
            "topk_logprobs": torch.zeros(3, 4, 2), "tail_mass": torch.ones(3, 4),
            "sample_weights": torch.zeros(3, 4, 2)}  # every value at an edge of its range


@pytest.mark.parametrize("name,value,message", [
    ("input_ids", 10, "input_ids holds an id outside"),
    ("input_ids", -1, "input_ids holds an id outside"),
    ("topk_ids", 10, "topk_ids holds an id outside"),
    ("topk_logprobs", float("nan"), "non-finite log-probability"),
    ("topk_logprobs", float("-inf"), "non-finite log-probability"),
    ("topk_logprobs", 1e-3, "positive log-probability"),
    ("tail_mass", 1.001, "tail mass outside"),
    ("tail_mass", -1e-6, "tail mass outside"),
    ("sample_weights", -1e-6, "sample weight not finite and >= 0"),
    ("sample_weights", float("inf"), "sample weight not finite and >= 0"),
])
def test_reader_value_checks_accept_the_edges_and_name_the_first_bad_row(name, value, message):
    """What every reader runs on each decoded row group (pipeline/softlabels/checks.py): values
    on the edges of their ranges pass; one value past an edge is refused, naming its row."""
    from pipeline.softlabels import checks

    batch = _clean_batch()
    checks.values(batch, 10, "w")
    checks.values({k: v[:0] for k, v in batch.items()}, 10, "w")  # an empty batch is fine
    batch[name][2, 1, ...] = value
    with pytest.raises(PipelineError, match=f"^w row 2: {message}"):
        checks.values(batch, 10, "w")


def _set_values(column: str, edit):
    """A mutate() for _rewrite_shard: edit(values) changes the flat values of one list column."""
    import pyarrow as pa

    def mutate(table):
        col = table.column(column).combine_chunks()
        values = col.values.to_numpy(zero_copy_only=False).copy()
        edit(values)
        new = pa.ListArray.from_arrays(col.offsets, pa.array(values, type=col.type.value_type))
        return table.set_column(table.schema.get_field_index(column), column, new)

    return mutate


def test_validate_catches_an_id_stored_twice_at_one_position(dataset, tmp_path):
    d = copy(dataset, tmp_path)
    mid = lambda v: len(v) // 2 - (len(v) // 2) % 8  # noqa: E731 - first entry of a position
    _rewrite_shard(d, _set_values("topk_ids", lambda v: v.__setitem__(mid(v) + 3, v[mid(v)])))
    problems, _ = validate_dataset(d)
    assert problems == ["shards/train/part-00000.parquet row 8: an id is stored twice at one "
                        "position"]


def test_validate_accepts_tail_mass_at_both_ends_of_its_range(dataset, tmp_path):
    """0 (k covers all the mass) and 1 (fp rounding of a tiny stored mass) are valid tails."""
    d = copy(dataset, tmp_path)
    _rewrite_shard(d, _set_values("tail_mass", lambda v: v.__setitem__(slice(0, 2), [0.0, 1.0])))
    assert validate_dataset(d)[0] == []
