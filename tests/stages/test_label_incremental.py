"""`pipeline label --incremental`: dataset versions over a growing corpus (format 1.4)."""

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import stages.label as L
from pipeline.errors import PipelineError
from pipeline.softlabels.reader import SoftLabelDataset
from pipeline.softlabels.validate import validate_dataset
from pipeline.softlabels.versions import gc, history
from stages.label import LabelConfig
from tests.conftest import make_docs, make_teacher, run_cli


def write_corpus(path: Path, docs: list[dict]) -> Path:
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))
    return path


def cfg(corpus, teacher, out, **kw) -> LabelConfig:
    base = dict(corpus=str(corpus), out=str(out), teacher=str(teacher), top_k=4, seq_len=32,
                shard_rows=8, batch_size=8, quiet=True, device="cpu", incremental=True,
                id_column="id", validation_fraction=0.1)
    return LabelConfig(**{**base, **kw})


def shard_bytes(out: Path) -> dict:
    return {p.relative_to(out).as_posix(): p.read_bytes()
            for p in sorted((out / "shards").rglob("*.parquet"))}


def live_doc_ids(out: Path, version=None) -> set:
    ds = SoftLabelDataset(out, version)
    ids = set()
    for split in ds.shards:
        for shard in ds.split_shards(split):
            for row in ds.read_table(shard).column("doc_ids").to_pylist():
                ids.update(row)
    return ids


def decoded(out: Path, version=None) -> list:
    ds = SoftLabelDataset(out, version)
    return [(s.rel, {k: v.tolist() for k, v in ds.decode(ds.read_table(s)).items()})
            for split in sorted(ds.shards) for s in ds.split_shards(split)]


@pytest.fixture()
def docs():
    return make_docs(60, seed=3)


def test_add_documents_labels_only_the_new_ones(tmp_path, docs, tiny_teacher, monkeypatch):
    corpus, out = tmp_path / "c.jsonl", tmp_path / "ds"
    m1 = L.run(cfg(write_corpus(corpus, docs), tiny_teacher, out))
    assert m1["version"]["number"] == 1 and m1["format_version"] == "1.4"
    v1_files, v1_rows = shard_bytes(out), decoded(out)
    extra = make_docs(66, seed=4)[60:]
    for d in extra:
        d["id"] = "new-" + d["id"]
    write_corpus(corpus, docs + extra)
    labeled = []
    real = L._label_missing
    monkeypatch.setattr(L, "_label_missing", lambda *a, **k: labeled.append(
        sum(s["rows"] for s in a[1]["shards"])) or real(*a, **k))
    m2 = L.run(cfg(corpus, tiny_teacher, out))
    ch = m2["version"]["changes"]
    assert (ch["documents_added"], ch["documents_changed"], ch["documents_removed"]) == (6, 0, 0)
    assert ch["rows_dropped"] == 0 and ch["shards_removed"] == []
    assert labeled and labeled[0] < m1["summary"]["rows"] / 3  # only the new rows
    now = shard_bytes(out)
    assert all(now[rel] == data for rel, data in v1_files.items())  # old shards untouched
    assert decoded(out, 1) == v1_rows  # version 1 reads as before
    assert {d["id"] for d in extra} & live_doc_ids(out)
    assert validate_dataset(out)[0] == [] and validate_dataset(out, 1)[0] == []
    assert [h["version"] for h in history(out)] == [1, 2]


def test_change_and_remove_drop_rows_and_relabel_neighbours(tmp_path, docs, tiny_teacher):
    corpus, out = tmp_path / "c.jsonl", tmp_path / "ds"
    L.run(cfg(write_corpus(corpus, docs), tiny_teacher, out))
    v1 = decoded(out)
    removed, changed = docs[10]["id"], docs[20]["id"]
    new_docs = [d for d in docs if d["id"] != removed]
    for d in new_docs:
        if d["id"] == changed:
            d["text"] = "entirely new words about music phone users " * 5
    added = {"id": "added-1", "text": "the election vote party leader said " * 6}
    m2 = L.run(cfg(write_corpus(corpus, new_docs + [added]), tiny_teacher, out))
    ch = m2["version"]["changes"]
    assert (ch["documents_added"], ch["documents_changed"], ch["documents_removed"]) == (1, 1, 1)
    assert ch["rows_dropped"] > 0 and ch["documents_relabeled"] > 0
    assert ch["shards_removed"] and ch["positions_relabeled"] > 0
    live = live_doc_ids(out)
    assert removed not in live and {changed, "added-1"} <= live
    assert decoded(out, 1) == v1  # the old version still reads (its shards are kept until gc)
    gc(out, keep=1)  # takedown: the removed document's tokens leave every file of the folder
    assert not any(removed in row for rel in shard_bytes(out)
                   for row in pq.read_table(out / rel).column("doc_ids").to_pylist())
    with pytest.raises(PipelineError, match="removed"):
        SoftLabelDataset(out, 1)
    assert validate_dataset(out)[0] == []


def test_unchanged_corpus_reads_nothing_and_loads_no_teacher(tmp_path, docs, tiny_teacher,
                                                             monkeypatch):
    corpus, out = tmp_path / "c.jsonl", tmp_path / "ds"
    m1 = L.run(cfg(write_corpus(corpus, docs), tiny_teacher, out))
    import pipeline.labeling.corpus as C

    def boom(*a, **k):
        raise AssertionError("read or loaded")

    monkeypatch.setattr(C, "iter_documents", boom)
    monkeypatch.setattr(L, "_load_inputs", boom)
    assert L.run(cfg(corpus, tiny_teacher, out)) == m1
    assert L.is_complete(cfg(corpus, tiny_teacher, out))


def test_touched_but_same_corpus_makes_no_version(tmp_path, docs, tiny_teacher):
    corpus, out = tmp_path / "c.jsonl", tmp_path / "ds"
    m1 = L.run(cfg(write_corpus(corpus, docs), tiny_teacher, out))
    write_corpus(corpus, docs + [{"id": "x", "text": "  "}])  # an empty document: skipped
    assert L.run(cfg(corpus, tiny_teacher, out))["version"]["number"] == 1
    assert L.is_complete(cfg(corpus, tiny_teacher, out))
    assert m1["version"]["number"] == 1


def test_refuses_another_teacher_and_unstable_ids(tmp_path, docs, tiny_teacher, tiny_tokenizer):
    corpus, out = tmp_path / "c.jsonl", tmp_path / "ds"
    L.run(cfg(write_corpus(corpus, docs), tiny_teacher, out))
    write_corpus(corpus, docs + [{"id": "n", "text": "the market rose " * 20}])
    other = make_teacher(tiny_tokenizer, tmp_path / "t2", seed=1)
    with pytest.raises(PipelineError, match="teacher_sha256.*new dataset"):
        L.run(cfg(corpus, other, out))
    with pytest.raises(PipelineError, match="--id-column COLUMN, or --content-ids"):
        L.run(cfg(corpus, tiny_teacher, tmp_path / "ds2", id_column=None))
    content = L.run(cfg(corpus, tiny_teacher, tmp_path / "ds3", id_column=None,
                        content_ids=True))
    assert content["version"]["number"] == 1


def test_cli_versions_gc_and_version_flags(tmp_path, docs, tiny_teacher):
    corpus, out = tmp_path / "c.jsonl", tmp_path / "ds"
    args = ["label", "--corpus", write_corpus(corpus, docs), "--teacher", tiny_teacher,
            "--out", out, "--top-k", "4", "--seq-len", "32", "--shard-rows", "8", "--quiet",
            "--device", "cpu", "--incremental", "--id-column", "id"]
    run_cli(*args)
    write_corpus(corpus, docs[5:])
    run_cli(*args)
    assert "versions of" in run_cli("inspect", out, "--versions").stdout
    rows = json.loads(run_cli("inspect", out, "--versions", "--json").stdout)
    assert [(r["version"], r["documents_removed"]) for r in rows] == [(1, 0), (2, 5)]
    assert run_cli("validate", out, "--version", "1").returncode == 0
    one = json.loads(run_cli("inspect", out, "--json", "--version", "1").stdout)
    assert one["version"]["number"] == 1
    bad = run_cli("inspect", out, "--version", "7", check=False)
    assert bad.returncode == 1 and "versions 1 to 2" in bad.stderr and "Traceback" not in bad.stderr
    assert "removed" in run_cli("gc", out, "--keep", "1").stdout
    (out / "mine.txt").write_text("not ours")
    run_cli("gc", out, "--keep", "1")
    assert (out / "mine.txt").exists()  # never a file the tool did not write
