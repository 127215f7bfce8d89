"""Format 1.2: ids ascending within each position and delta-coded, rank order from the stored
log-probabilities. Same labels as the 1.0/1.1 layout, fewer bytes, and never misread."""

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from pipeline.errors import PipelineError
from pipeline.io.hashing import sha256_file
from pipeline.labeling.forward import topk_from_logits
from pipeline.softlabels import schema as S
from pipeline.softlabels import sortedids
from pipeline.softlabels.reader import SoftLabelDataset, decode_batch
from pipeline.softlabels.validate import validate_dataset
from pipeline.softlabels.writer import ShardLabels, build_table, write_shard
from stages.label import LabelConfig, run

OPTS = dict(top_k=8, seq_len=32, shard_rows=16, batch_size=8, limit_docs=16,
            validation_fraction=0.25, quiet=True, device="cpu")


def label(corpus, teacher, out, **kw):
    return run(LabelConfig(corpus=str(corpus), out=str(out), teacher=str(teacher),
                           **{**OPTS, **kw}))


def first_batch(root) -> dict:
    ds = SoftLabelDataset(root)
    return ds.decode(ds.read_table(ds.split_shards("train")[0]))


def in_rank_order(batch: dict) -> dict:
    """A decoded batch re-sorted by (stored log-probability desc, id asc), the 1.2 rank rule."""
    mask = batch.get("label_mask")
    m = None if mask is None else mask.numpy()
    extra = [batch["sample_weights"].numpy()] if "sample_weights" in batch else []
    ids, lp, *w = sortedids.rank_order(batch["topk_ids"].numpy(), batch["topk_logprobs"].numpy(),
                                       m, *extra, pad_logprob=-1.0e4)
    return {"topk_ids": ids, "topk_logprobs": lp, **({"sample_weights": w[0]} if w else {})}


@pytest.fixture(scope="module")
def pair(tmp_path_factory, tiny_corpus, tiny_teacher):
    """The same top-k fp16 labels written as 1.2 (default) and in the 1.0 layout."""
    root = tmp_path_factory.mktemp("pair")
    label(tiny_corpus, tiny_teacher, root / "v12")
    label(tiny_corpus, tiny_teacher, root / "v10", id_encoding="rank")
    return root / "v12", root / "v10"


def test_default_is_1_2_with_renamed_split_columns(pair):
    v12, _ = pair
    m = json.loads((v12 / "manifest.json").read_text())
    assert m["format_version"] == "1.2" and m["labels"]["id_encoding"] == "sorted_delta"
    pf = pq.ParquetFile(next((v12 / "shards/train").glob("*.parquet")))
    meta = pf.schema_arrow.metadata
    assert meta[b"softlabels.format_version"] == b"1.2"
    assert meta[b"softlabels.id_encoding"] == b"sorted_delta"
    assert pf.schema_arrow.names == ["input_ids", "doc_ids", "label_id_deltas", "label_logprobs",
                                     "tail_mass"]
    encodings = {pf.metadata.row_group(0).column(i).path_in_schema.split(".")[0]:
                 pf.metadata.row_group(0).column(i).encodings for i in range(5)}
    assert "BYTE_STREAM_SPLIT" in encodings["label_id_deltas"]
    assert "BYTE_STREAM_SPLIT" in encodings["tail_mass"]
    assert "BYTE_STREAM_SPLIT" not in encodings["label_logprobs"]  # fp16: DuckDB can't read it
    assert validate_dataset(v12)[0] == []
    deltas = np.stack(pf.read().column("label_id_deltas").to_numpy(zero_copy_only=False))
    gaps = deltas.reshape(-1, 8)[:, 1:]
    assert (gaps >= 1).all()  # ascending ids, stored as gaps


def test_1_2_decodes_to_the_same_labels_in_rank_order(pair, tiny_teacher):
    v12, v10 = pair
    new, old = first_batch(v12), first_batch(v10)
    assert torch.equal(new["input_ids"], old["input_ids"])
    assert torch.equal(new["tail_mass"], old["tail_mass"])
    want = in_rank_order(old)  # 1.0 keeps the teacher's order among equal fp16 values
    assert np.array_equal(new["topk_ids"].numpy(), want["topk_ids"])
    assert np.array_equal(new["topk_logprobs"].numpy(), want["topk_logprobs"])
    lp = new["topk_logprobs"]
    assert (lp[..., :-1] >= lp[..., 1:]).all()
    ties = lp[..., :-1] == lp[..., 1:]
    assert (new["topk_ids"][..., :-1][ties] < new["topk_ids"][..., 1:][ties]).all()


@pytest.mark.parametrize("kw", [
    dict(mode="topp", top_p=0.6, max_k=12, logprob_encoding="u8"),
    dict(mode="sampled", samples=8, proposal_temperature=0.7, seed=4, logprob_encoding="fp32"),
])
def test_variable_modes_1_2_match_the_1_1_layout(tmp_path, tiny_corpus, tiny_teacher, kw):
    label(tiny_corpus, tiny_teacher, tmp_path / "v12", **kw)
    label(tiny_corpus, tiny_teacher, tmp_path / "v11", id_encoding="rank", **kw)
    assert validate_dataset(tmp_path / "v12")[0] == []
    new, old = first_batch(tmp_path / "v12"), first_batch(tmp_path / "v11")
    assert torch.equal(new["label_mask"], old["label_mask"])
    want = in_rank_order(old)
    for key, value in want.items():
        assert np.array_equal(new[key].numpy(), value), key


@pytest.mark.parametrize("enc", ["fp16", "u8"])
def test_wide_vocabulary_ids_round_trip_compactly(tmp_path, enc):
    """151,936 ids (Qwen-sized): ids >= 65,536 round-trip, and the delta column costs far less
    than the 4 raw bytes an int32 id would."""
    vocab, rows, seq, k = 151_936, 8, 32, 32
    logits = torch.randn(rows, seq, vocab, generator=torch.Generator().manual_seed(0)) * 4
    ids, lp, tail = topk_from_logits(logits, k)
    spec = S.LabelSpec("topk", k, vocab, S.id_type_for_vocab(vocab), enc,
                       logprob_u8_min=-16.0 if enc == "u8" else None, id_encoding="sorted_delta")
    table = build_table(spec, np.zeros((rows, seq), np.int32), [["d"]] * rows,
                        ShardLabels(ids.numpy().astype(np.int32), lp.numpy(), tail.numpy()))
    rec = write_shard(tmp_path, "train", 0, table, {"k": k}, rows, "x")
    pf = pq.ParquetFile(tmp_path / rec["path"])
    got = decode_batch(pf.read(), spec, seq)
    assert int(got["topk_ids"].max()) >= 65_536
    assert torch.equal(torch.sort(got["topk_ids"], -1).values, torch.sort(ids.long(), -1).values)
    lp_sorted = got["topk_logprobs"]
    assert (lp_sorted[..., :-1] >= lp_sorted[..., 1:]).all()
    col = pf.metadata.row_group(0).column(pf.schema_arrow.names.index(S.COL_ID_DELTAS))
    assert col.total_compressed_size / (rows * seq * k) < 2.0  # random ids: ~1.7 B (13.5 bits)


def _rewrite_deltas(root, fn):
    path = root / "shards/train/part-00000.parquet"
    table = pq.read_table(path)
    col = table.column(S.COL_ID_DELTAS).combine_chunks()
    values = fn(col.values.to_numpy(zero_copy_only=False).copy())
    new = pa.ListArray.from_arrays(col.offsets, pa.array(values, type=col.type.value_type))
    table = table.set_column(table.schema.get_field_index(S.COL_ID_DELTAS), S.COL_ID_DELTAS, new)
    pq.write_table(table, path)
    m = json.loads((root / "manifest.json").read_text())
    m["splits"]["train"][0].update(sha256=sha256_file(path), bytes=path.stat().st_size)
    (root / "manifest.json").write_text(json.dumps(m))


def test_validate_and_reader_refuse_bad_deltas(pair, tmp_path):
    d = tmp_path / "gap0"
    shutil.copytree(pair[0], d)
    _rewrite_deltas(d, lambda v: np.where(np.arange(v.size) == 9, 0, v).astype(v.dtype))
    assert any("row 0: label_id_deltas not ascending" in p for p in validate_dataset(d)[0])
    d = tmp_path / "big"
    shutil.copytree(pair[0], d)
    _rewrite_deltas(d, lambda v: np.where(np.arange(v.size) == 9, 60_000, v).astype(v.dtype))
    assert any("topk id >= vocab" in p for p in validate_dataset(d)[0])
    with pytest.raises(PipelineError, match=r"row 0: topk_ids holds an id outside \[0, vocab"):
        first_batch(d)


def test_a_reader_that_ignores_id_encoding_refuses_the_shards(pair, tmp_path):
    """What a 1.1 reader sees: labels without the (unknown to it) id_encoding field. It expects
    topk_ids and refuses the 1.2 schema instead of reading it."""
    d = tmp_path / "v12"
    shutil.copytree(pair[0], d)
    m = json.loads((d / "manifest.json").read_text())
    del m["labels"]["id_encoding"]
    (d / "manifest.json").write_text(json.dumps(m))
    ds = SoftLabelDataset(d)
    with pytest.raises(PipelineError, match="schema does not match"):
        ds.read_table(ds.split_shards("train")[0])


def test_bad_id_encoding_refused(pair, tmp_path):
    d = tmp_path / "v12"
    shutil.copytree(pair[0], d)
    m = json.loads((d / "manifest.json").read_text())
    m["labels"]["id_encoding"] = "zigzag"
    (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(PipelineError, match="labels.id_encoding 'zigzag'"):
        SoftLabelDataset(d)
