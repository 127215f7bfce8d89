"""The dataset folder's names (pipeline/softlabels/layout.py) and what makes `--overwrite`
safe: a file is the labeler's only when its name (and, for files a user could also have, its
content) proves it. Folders are built here file by file; expected names are written out.
"""

import hashlib
import json

import pytest

from pipeline.io.storage import Store
from pipeline.softlabels import layout

PLAN = {"params": {"tokenizer_sha256": None}, "shards": [], "fingerprint": "f"}
MANIFEST = {"format_version": "1.2", "tool": {"name": "softlabel-pipeline"}, "tokenizer": {}}


def test_file_names():
    assert layout.shard_name("validation", 7) == "validation/part-00007"
    assert layout.shard_relpath("train", 12345) == "shards/train/part-12345.parquet"
    assert layout.record_relpath("train", 3) == "_progress/train/part-00003.json"
    assert layout.version_relpath(4) == "versions/00004.json"
    assert layout.index_relpath(4) == "versions/00004.index.json"


@pytest.mark.parametrize("rel, ok", [
    ("shards/train/part-00001.parquet", True), ("shards/my_split-2/part-99999.parquet", True),
    ("shards/train/part-00001.parquet.tmp", True), ("shards/train/part-1.parquet", False),
    ("shards/train/part-000001.parquet", False), ("shards/tr ain/part-00001.parquet", False),
    ("x/shards/train/part-00001.parquet", False), ("shards/train/part-00001.parquetx", False),
])
def test_shard_paths(rel, ok):
    assert layout.is_shard_path(rel) is ok


def folder(tmp_path, files: dict) -> Store:
    for rel, content in files.items():
        path = tmp_path / rel
        if rel.endswith("/"):
            path.mkdir(parents=True, exist_ok=True)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        data = json.dumps(content) if isinstance(content, (dict, list)) else content
        path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return Store(tmp_path)


def test_read_json_is_none_for_a_missing_or_broken_file(tmp_path):
    store = folder(tmp_path, {"a.json": {"x": 1}, "b.json": "{", "c.json": b"\xff\xfe"})
    assert layout.read_json(store, "a.json") == {"x": 1}
    assert layout.read_json(store, "b.json") is None
    assert layout.read_json(store, "c.json") is None
    assert layout.read_json(store, "d.json") is None


def test_an_empty_or_missing_folder_has_nothing_foreign(tmp_path):
    assert layout.foreign_files(Store(tmp_path)) == []
    assert layout.foreign_files(Store(tmp_path / "missing")) == []


def test_a_whole_dataset_of_ours_has_nothing_foreign(tmp_path):
    tok = b'{"model": "tokenizer"}'
    sha = hashlib.sha256(tok).hexdigest()
    store = folder(tmp_path, {
        "plan.json": {**PLAN, "params": {"tokenizer_sha256": sha}},
        "manifest.json": MANIFEST, "tokenizer.json": tok,
        "README.md": "# Soft-label dataset\nabout it", "README.md.tmp": "# Soft-label dataset\n",
        ".lock": "", "plan.json.tmp": "x", "manifest.json.tmp": "x",
        "shards/train/part-00000.parquet": "x", "shards/train/part-00001.parquet.tmp": "x",
        "_progress/train/part-00000.json": "{}", "_progress/validation/part-00000.json.tmp": "",
        "versions/00001.json": "{}", "versions/00001.index.json": "{}",
        "versions/seen.json": "{}", "versions/seen.json.tmp": "", "shards/validation/": None,
        "_progress/": None})
    assert layout.foreign_files(store) == []
    assert layout.owned_entries(store) == sorted(
        ["plan.json", "manifest.json", "tokenizer.json", "README.md", "README.md.tmp",
         "plan.json.tmp", "manifest.json.tmp", "shards", "_progress", "versions"])


@pytest.mark.parametrize("files, foreign", [
    ({"notes.txt": "mine"}, ["notes.txt"]),
    ({"plan.json": {"other": "json"}}, ["plan.json"]),
    ({"manifest.json": {"format_version": "1.0", "tool": {"name": "other"}}}, ["manifest.json"]),
    ({"manifest.json": {"tool": {"name": "softlabel-pipeline"}}}, ["manifest.json"]),
    ({"manifest.json": {"format_version": "1.0"}}, ["manifest.json"]),
    ({"plan.json": {"params": {}, "shards": []}}, ["plan.json"]),
    ({"tokenizer.json": "{}", "README.md": "# Soft-label dataset\n"},
     ["README.md", "tokenizer.json"]),  # ours only beside our plan or manifest
    ({"plan.json": PLAN, "README.md": "# My notes\n"}, ["README.md"]),
    ({"manifest.json": MANIFEST, "README.md": "---\nlicense: mit\n---\n# My notes\n"},
     ["README.md"]),  # front matter, but not our card after it
    ({"manifest.json": MANIFEST, "README.md": "---\nlicense: mit\n---\n# Soft-label dataset\n"},
     []),  # the card `publish` writes (Hugging Face front matter, then our heading)
    ({"manifest.json": MANIFEST, "tokenizer.json": "{}"}, ["tokenizer.json"]),
    ({"plan.json": PLAN, "shards/train/notes.txt": "x", "other/": None},
     ["other/", "shards/train/notes.txt"]),
    ({"plan.json": PLAN, "versions/1.json": "{}"}, ["versions/1.json"]),
])
def test_a_file_the_labeler_cannot_prove_it_wrote_is_foreign(tmp_path, files, foreign):
    assert layout.foreign_files(folder(tmp_path, files)) == foreign


def test_the_tokenizer_is_ours_by_the_hash_in_the_plan_or_the_manifest(tmp_path):
    tok = b'{"model": "mine"}'
    sha = hashlib.sha256(tok).hexdigest()
    by_plan = folder(tmp_path / "a", {"plan.json": {**PLAN, "params": {"tokenizer_sha256": sha}},
                                      "tokenizer.json": tok})
    assert layout.foreign_files(by_plan) == []
    by_manifest = folder(tmp_path / "b", {"manifest.json": {**MANIFEST,
                                                            "tokenizer": {"sha256": sha}},
                                          "tokenizer.json": tok})
    assert layout.foreign_files(by_manifest) == []
    no_params = folder(tmp_path / "c", {"plan.json": {**PLAN, "params": None},
                                        "manifest.json": {**MANIFEST, "tokenizer": None},
                                        "tokenizer.json": tok})
    assert layout.foreign_files(no_params) == ["tokenizer.json"]


def test_the_lock_is_never_removed(tmp_path):
    store = folder(tmp_path, {".lock": "", "plan.json": PLAN})
    assert layout.owned_entries(store) == ["plan.json"]
