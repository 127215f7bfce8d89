"""`pipeline label --incremental` into an s3:// dataset on a real S3 API server (moto on
loopback): two versions over a corpus object that grew, each read back as the same rows as a
local dataset labeled from the same corpus, and a rerun over an unchanged listing that reads no
corpus byte, loads no teacher and writes no object."""

import json

import pytest

import pipeline.labeling.corpus as corpus_module
import stages.label as L
from pipeline.errors import PipelineError
from pipeline.io.storage import Store
from pipeline.softlabels.reader import SoftLabelDataset
from pipeline.softlabels.validate import validate_dataset
from pipeline.softlabels.versions import gc, history
from tests.conftest import make_docs, run_cli
from tests.e2e.test_object_storage import differences
from tests.interop import moto_s3
from tests.stages.test_label_incremental import cfg, decoded

CORPUS = "s3://bucket/corpus"


def put_corpus(docs: list[dict]) -> None:
    Store(CORPUS).write_bytes("docs.jsonl", "".join(json.dumps(d) + "\n" for d in docs).encode())


def objects(uri: str) -> dict:
    """{key: sha256} of every object under a prefix."""
    store = Store(uri)
    return {rel: store.sha256(rel) for rel in store.walk()}


def label(out, teacher):
    return L.run(cfg(CORPUS, teacher, out, seq_len=16))


def same_manifest(remote: dict, local: dict) -> list[str]:
    drop = ("created_at", "committed_at")
    strip = [{k: v for k, v in m.items() if k not in drop} for m in (remote, local)]
    for m in strip:
        m["version"] = {k: v for k, v in m["version"].items() if k not in drop}
    return differences(*strip)


@pytest.mark.slow
def test_two_versions_on_s3_read_back_and_an_unchanged_rerun_does_nothing(
        tmp_path, tiny_teacher, monkeypatch):
    docs = make_docs(40, seed=3)
    extra = [{"id": f"n{i}", "text": d["text"]} for i, d in enumerate(make_docs(12, seed=5))]
    with moto_s3("bucket", SOFTLABELS_CACHE=str(tmp_path / "cache")):
        remote, local = "s3://bucket/ds", tmp_path / "local"
        put_corpus(docs)
        m1 = label(remote, tiny_teacher)
        assert same_manifest(m1, label(local, tiny_teacher)) == []
        put_corpus(docs + extra)
        m2 = label(remote, tiny_teacher)
        assert m2["version"]["number"] == 2
        assert m2["version"]["changes"]["documents_added"] == len(extra)
        assert same_manifest(m2, label(local, tiny_teacher)) == []
        for version in (1, 2):
            assert decoded(remote, version) == decoded(local, version)
            assert validate_dataset(remote, version)[0] == []
        assert [h["version"] for h in history(remote)] == [1, 2]
        assert SoftLabelDataset(remote, 1).manifest["version"]["number"] == 1

        assert not Store(remote).exists(".lock")

        before = objects(remote)
        monkeypatch.setattr(corpus_module, "iter_documents", _boom)
        monkeypatch.setattr(L, "_load_inputs", _boom)
        assert L.is_complete(cfg(CORPUS, tiny_teacher, remote, seq_len=16))
        assert label(remote, tiny_teacher) == m2
        assert objects(remote) == before
        monkeypatch.undo()
        cli = run_cli("label", "--corpus", CORPUS, "--teacher", tiny_teacher, "--out", remote,
                      "--incremental", "--id-column", "id", "--top-k", "4", "--seq-len", "16",
                      "--shard-rows", "8", "--batch-size", "8", "--validation-fraction", "0.1",
                      "--device", "cpu", "--quiet")
        assert objects(remote) == before, cli.stdout
        listed = json.loads(run_cli("inspect", remote, "--versions", "--json").stdout)
        assert [(r["version"], r["documents_added"]) for r in listed] == [(1, 40), (2, 12)]


@pytest.mark.slow
def test_change_remove_and_gc_on_s3_match_a_local_dataset(tmp_path, tiny_teacher):
    """Rows that leave a version are copied out of old shard objects (no teacher) and `gc`
    removes the objects no kept version lists, as on disk."""
    docs = make_docs(40, seed=3)
    with moto_s3("bucket", SOFTLABELS_CACHE=str(tmp_path / "cache")):
        remote, local = "s3://bucket/ds", tmp_path / "local"
        put_corpus(docs)
        label(remote, tiny_teacher), label(local, tiny_teacher)
        changed = [d for d in docs if d["id"] != docs[5]["id"]]
        changed[12] = {**changed[12], "text": "entirely new words about music phone users " * 4}
        put_corpus(changed)
        m2 = label(remote, tiny_teacher)
        assert same_manifest(m2, label(local, tiny_teacher)) == []
        ch = m2["version"]["changes"]
        assert (ch["documents_changed"], ch["documents_removed"]) == (1, 1)
        assert ch["rows_copied"] > 0 and ch["shards_removed"]
        assert decoded(remote) == decoded(local) and decoded(remote, 1) == decoded(local, 1)
        assert gc(remote, keep=1) == gc(local, keep=1)
        assert sorted(objects(remote)) == sorted(
            p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file())
        with pytest.raises(PipelineError, match="removed"):
            SoftLabelDataset(remote, 1)
        assert validate_dataset(remote)[0] == []


def _boom(*args, **kwargs):
    raise AssertionError("an unchanged listing read the corpus or loaded the teacher")
