"""pipeline/io/storage.py on the local disk and on an in-memory fsspec filesystem (memory://), and
the reader's path-escape refusals on object storage. The S3 API itself is tested in
tests/e2e/test_object_storage.py against a real (moto) server."""

import hashlib
import json
import uuid

import fsspec
import pytest

from pipeline.errors import PipelineError
from pipeline.io.storage import Store, is_remote
from pipeline.labeling.corpus import CorpusSpec, iter_documents
from pipeline.softlabels.manifest import shard_rel
from pipeline.softlabels.reader import SoftLabelDataset
from pipeline.softlabels.validate import validate_dataset
from stages.label import LabelConfig, run


@pytest.fixture
def mem() -> str:
    root = f"memory://t-{uuid.uuid4().hex[:8]}"
    yield root
    fs = fsspec.filesystem("memory")
    if fs.exists(root[len("memory://"):]):
        fs.rm(root[len("memory://"):], recursive=True)


@pytest.fixture(scope="module")
def local_ds(tmp_path_factory, tiny_corpus, tiny_teacher):
    out = tmp_path_factory.mktemp("storage") / "ds"
    run(LabelConfig(corpus=str(tiny_corpus), out=str(out), teacher=str(tiny_teacher), top_k=4,
                    seq_len=16, shard_rows=64, batch_size=16, limit_docs=30,
                    validation_fraction=0.2, quiet=True))
    return out


def test_is_remote():
    assert is_remote("s3://b/k") and is_remote("memory://x") and is_remote("gs://b")
    assert not is_remote("/tmp/x") and not is_remote("rel/x") and not is_remote("file:///tmp/x")


@pytest.mark.parametrize("kind", ["local", "memory"])
def test_store_roundtrip(kind, tmp_path, mem):
    store = Store(tmp_path / "d" if kind == "local" else mem)
    assert not store.exists() and store.listdir() == []
    store.write_json("a/b.json", {"x": 1})
    store.write_bytes("top.bin", b"\x00" * 3000)
    assert store.isfile("a/b.json") and json.loads(store.read_bytes("a/b.json")) == {"x": 1}
    assert store.listdir() == ["a", "top.bin"] and store.listdir("a") == ["b.json"]
    assert store.size("top.bin") == 3000
    assert store.sha256("top.bin") == hashlib.sha256(b"\x00" * 3000).hexdigest()
    src = tmp_path / "src.txt"
    src.write_text("hello")
    store.put_file(src, "c/copy.txt")
    store.get_file("c/copy.txt", tmp_path / "back.txt")
    assert (tmp_path / "back.txt").read_text() == "hello"
    store.remove("a")
    assert not store.exists("a/b.json") and "a" not in store.listdir()
    if kind == "local":  # the local write is tmp → rename: no temp file is left
        assert not list((tmp_path / "d").rglob("*.tmp"))


@pytest.mark.parametrize("kind", ["local", "memory"])
def test_writing_commits_whole_files_or_nothing(kind, tmp_path, mem):
    store = Store(tmp_path / "d" if kind == "local" else mem)
    with store.writing("sub/f.bin") as tmp:
        tmp.write_bytes(b"new")
        assert not store.exists("sub/f.bin")  # nothing under its name until committed
    assert store.read_bytes("sub/f.bin") == b"new"
    with pytest.raises(RuntimeError), store.writing("sub/f.bin") as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed mid-write")
    assert store.read_bytes("sub/f.bin") == b"new" and store.listdir("sub") == ["f.bin"]
    assert store.create_new("lock", b"1") and not store.create_new("lock", b"2")
    assert store.read_bytes("lock") == b"1"
    dest = tmp_path / "cache" / "f.bin"
    got = store.fetch("sub/f.bin", dest, hashlib.sha256(b"new").hexdigest())
    assert got.read_bytes() == b"new" and (got == dest) == (kind == "memory")


def test_inside_refuses_a_link_out_of_a_local_folder(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "outside.parquet").write_bytes(b"x")
    (tmp_path / "d" / "link.parquet").symlink_to(tmp_path / "outside.parquet")
    store = Store(tmp_path / "d")
    assert store.inside("./a//b.parquet") == "a/b.parquet"
    with pytest.raises(PipelineError, match="escapes the folder"):
        store.inside("link.parquet")


@pytest.mark.parametrize("rel", ["../x.parquet", "/abs.parquet", "s3://other/x.parquet", "",
                                 "shards/../../x.parquet", "shards\\..\\x.parquet"])
def test_safe_rel_refuses_escapes(rel):
    with pytest.raises(PipelineError, match="escapes the dataset directory"):
        shard_rel(Store("s3://bucket/ds"), rel)


def _upload(local, uri: str) -> None:
    store = Store(uri)
    for p in sorted(local.rglob("*")):
        if p.is_file():
            store.put_file(p, p.relative_to(local).as_posix())


def test_remote_dataset_reads_like_local(local_ds, mem):
    _upload(local_ds, mem)
    remote, local = SoftLabelDataset(mem), SoftLabelDataset(local_ds)
    assert remote.root == mem and remote.manifest == local.manifest
    for a, b in zip(remote.split_shards("train"), local.split_shards("train")):
        remote.verify_checksum(a)
        for k, v in remote.decode(remote.read_table(a)).items():
            assert v.equal(local.decode(local.read_table(b))[k]), k
    assert validate_dataset(mem)[0] == []


@pytest.mark.parametrize("bad", ["../other/shards/train/part-00000.parquet",
                                 "s3://other-bucket/part-00000.parquet"])
def test_remote_manifest_may_not_point_elsewhere(local_ds, mem, bad):
    _upload(local_ds, mem)
    store = Store(mem)
    m = json.loads(store.read_bytes("manifest.json"))
    m["splits"]["train"][0]["path"] = bad
    store.write_json("manifest.json", m)
    with pytest.raises(PipelineError, match="escapes the dataset directory"):
        SoftLabelDataset(mem)


def test_remote_checksum_mismatch_names_the_shard(local_ds, mem):
    _upload(local_ds, mem)
    store = Store(mem)
    rel = "shards/train/part-00000.parquet"
    data = bytearray(store.read_bytes(rel))
    data[100] ^= 0xFF
    store.write_bytes(rel, bytes(data))
    problems, _ = validate_dataset(mem)
    assert problems and rel in problems[0] and "checksum mismatch" in problems[0]


def test_remote_corpus_and_label_to_memory(tiny_corpus, tiny_teacher, local_ds, mem):
    Store(mem).put_file(tiny_corpus, "corpus/part/docs.jsonl")
    docs = list(iter_documents(CorpusSpec(f"{mem}/corpus")))
    local_docs = list(iter_documents(CorpusSpec(str(tiny_corpus))))
    assert [t for _, t in docs] == [t for _, t in local_docs]
    assert docs[0][0] == "part/docs.jsonl:0"  # ids relative to the prefix, like local folders
    assert list(iter_documents(CorpusSpec(f"{mem}/corpus/*/*.jsonl")))[0][1] == docs[0][1]
    with pytest.raises(PipelineError, match="does not exist"):
        list(iter_documents(CorpusSpec(f"{mem}/nothing-here")))
    m = run(LabelConfig(corpus=str(tiny_corpus), out=f"{mem}/ds", teacher=str(tiny_teacher),
                        top_k=4, seq_len=16, shard_rows=64, batch_size=16, limit_docs=30,
                        validation_fraction=0.2, quiet=True))
    want = json.loads((local_ds / "manifest.json").read_text())
    assert m["splits"] == want["splits"]  # the same bytes as a local run, shard by shard
    assert not Store(f"{mem}/ds").exists(".lock")


def local_copy(uri: str):
    return Store(uri).local_folder()


def test_local_copy_refreshes_changed_files(tmp_path, mem, monkeypatch):
    monkeypatch.setenv("SOFTLABELS_CACHE", str(tmp_path / "cache"))
    store = Store(mem)
    store.write_bytes("config.json", b"{}")
    store.write_bytes("model.safetensors", b"v1")
    copy = local_copy(mem)
    assert (copy / "model.safetensors").read_bytes() == b"v1"
    store.write_bytes("model.safetensors", b"version2")
    store.write_bytes("complete.json", b"{}")
    assert (local_copy(mem) / "model.safetensors").read_bytes() == b"version2"
    assert (copy / "complete.json").is_file()
    store.remove("complete.json")  # removed there: removed from the copy
    assert not (local_copy(mem) / "complete.json").exists()
    with pytest.raises(PipelineError, match="does not exist"):
        local_copy(f"{mem}/missing")


def test_remote_lock_refuses_a_live_labeler_and_takes_over_a_dead_one(mem):
    import socket
    import subprocess

    from pipeline.io.locking import DirLock

    store = Store(mem)
    with DirLock(store):
        assert json.loads(store.read_bytes(".lock"))["host"] == socket.gethostname()
        with pytest.raises(PipelineError, match="is locked by pid"):
            DirLock(mem).__enter__()
    assert not store.exists(".lock")
    dead = subprocess.Popen(["true"])
    dead.wait()
    store.write_json(".lock", {"pid": dead.pid, "host": socket.gethostname()})
    with DirLock(store):  # a SIGKILLed labeler's lock: taken over
        assert json.loads(store.read_bytes(".lock"))["pid"] != dead.pid
