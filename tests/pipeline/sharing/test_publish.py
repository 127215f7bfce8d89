"""`pipeline publish`: a verified copy that is a valid dataset and a valid Hugging Face dataset
repository (datasets.load_dataset(FOLDER) with no arguments), on a local folder and on a real S3
API server (moto); refusals of a different dataset, a corrupt shard and an unwritable place."""

import json
import shutil

import numpy as np
import pytest

from pipeline.io.storage import Store
from pipeline.softlabels.reader import SoftLabelDataset
from tests.conftest import run_cli
from tests.interop import OFFLINE

SECRET = "wJalrXUtnFEMIK7MDENGbPxRfiCYzSECRET"


def shard_paths(m: dict) -> list[str]:
    return [e["path"] for shards in m["splits"].values() for e in shards]


def load_with_datasets(dest, tmp_path, monkeypatch):
    """`datasets.load_dataset(FOLDER)` with no arguments, offline, in a private cache."""
    datasets = pytest.importorskip("datasets")
    for k, v in OFFLINE.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    return datasets.load_dataset(str(dest))


def test_publish_local_is_a_valid_dataset_and_hf_repo(dataset, tmp_path, monkeypatch):
    dest = tmp_path / "pub"
    proc = run_cli("publish", dataset, dest, "--license", "cc-by-4.0", "--corpus-name",
                   "tiny-docs", "--teacher-license", "apache-2.0")
    assert "published" in proc.stdout and "corpus licence is unknown" in proc.stderr
    assert "valid: " in run_cli("validate", dest).stdout
    m = json.loads((dest / "manifest.json").read_text())
    src = json.loads((dataset / "manifest.json").read_text())
    assert shard_paths(m) == shard_paths(src) and m["corpus"]["uri"] == "tiny-docs"
    assert m["license"] == {"dataset": "cc-by-4.0", "corpus": None, "teacher": "apache-2.0"}
    assert str(tmp_path.parents[1]) not in json.dumps(m)  # no machine-local absolute path
    assert sorted(p.name for p in dest.iterdir()) == ["README.md", "manifest.json", "shards",
                                                      "tokenizer.json"]
    card = (dest / "README.md").read_text()
    front = card.split("---\n")[1]
    assert "*" not in front  # every shard listed explicitly, never a glob
    assert all(f'"{p}"' in front for p in shard_paths(m))
    assert 'license: "cc-by-4.0"' in front and "size_categories" in front
    assert "ascending id order" in card and "Warning:** a licence is unknown" in card

    # datasets.load_dataset(FOLDER), no arguments: the card's configs find the splits
    hf = load_with_datasets(dest, tmp_path, monkeypatch)
    assert {s: hf[s].num_rows for s in hf} == {
        s: sum(e["rows"] for e in sh) for s, sh in m["splits"].items()}
    # the card's decode recipe gives the reference reader's rank-ordered ids
    row = hf["train"].with_format("numpy")[0]
    L, k = m["seq_len"], m["labels"]["k"]
    counts = np.full(L, k)
    pos, start = np.repeat(np.arange(L), counts), np.cumsum(counts) - counts
    deltas = row["label_id_deltas"].astype(np.int64)
    lp = row["label_logprobs"].astype(np.float64)
    total = np.cumsum(deltas)
    ids = (total - (total[start] - deltas[start])[pos])[np.lexsort((
        total - (total[start] - deltas[start])[pos], -lp, pos))]
    ref = SoftLabelDataset(dest)
    want = ref.decode(ref.read_table(ref.split_shards("train")[0]))["topk_ids"][0]
    assert np.array_equal(ids.reshape(L, k), want.numpy())


def test_publish_again_resumes_and_copies_nothing(dataset, tmp_path):
    dest = tmp_path / "pub"
    run_cli("publish", dataset, dest)
    (dest / "manifest.json").unlink()  # as if killed before the commit point
    again = run_cli("publish", dataset, dest).stdout
    assert "(0 copied" in again and (dest / "manifest.json").is_file()


def test_publish_strips_credentials_from_the_manifest_and_card(dataset, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(dataset, src)
    m = json.loads((src / "manifest.json").read_text())
    m["corpus"]["uri"] = f"s3://AKIA:{SECRET}@bucket/c?X-Amz-Signature={SECRET}"
    m["teacher"]["spec"] = f"https://host/teacher?token={SECRET}"
    (src / "manifest.json").write_text(json.dumps(m))
    run_cli("publish", src, tmp_path / "pub")
    for name in ("manifest.json", "README.md"):
        text = (tmp_path / "pub" / name).read_text()
        assert SECRET not in text and "AKIA" not in text and "s3://bucket/c" in text


def test_publish_refuses_a_corrupt_shard_and_writes_no_manifest(dataset, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(dataset, src)
    bad = src / "shards/train/part-00001.parquet"
    data = bytearray(bad.read_bytes())
    data[100] ^= 0xFF
    bad.write_bytes(bytes(data))
    proc = run_cli("publish", src, tmp_path / "pub", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "shards/train/part-00001.parquet" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "pub/manifest.json").exists()
    assert not (tmp_path / "pub/shards/train/part-00001.parquet").exists()


def test_publish_refuses_a_destination_holding_something_else(dataset, tmp_path, tiny_corpus,
                                                               tiny_teacher):
    other = tmp_path / "other"
    shutil.copytree(dataset, other)
    m = json.loads((other / "manifest.json").read_text())
    m["splits"]["train"] = m["splits"]["train"][:1]
    (other / "manifest.json").write_text(json.dumps(m))
    before = (other / "manifest.json").read_bytes()
    proc = run_cli("publish", dataset, other, check=False)
    assert proc.returncode == 1 and "already holds a different dataset" in proc.stderr
    assert (other / "manifest.json").read_bytes() == before
    foreign = tmp_path / "repo"
    foreign.mkdir()
    (foreign / "README.md").write_text("# my notes\n")
    proc = run_cli("publish", dataset, foreign, check=False)
    assert proc.returncode == 1 and "not written by this tool" in proc.stderr
    assert (foreign / "README.md").read_text() == "# my notes\n"
    assert sorted(p.name for p in foreign.iterdir()) == ["README.md"]


def test_publish_to_an_unwritable_folder_is_one_line(dataset, tmp_path):
    (tmp_path / "file").write_text("x")
    proc = run_cli("publish", dataset, tmp_path / "file" / "pub", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "cannot write to" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_publish_to_s3_and_back(dataset, s3, tmp_path):
    run_cli("publish", dataset, "s3://bucket/pub", "--license", "mit")
    pub = Store("s3://bucket/pub")
    assert pub.isfile("manifest.json") and pub.isfile("README.md")
    assert "valid: " in run_cli("validate", "s3://bucket/pub").stdout
    # S3 → local, and S3 → S3: the same bytes
    run_cli("publish", "s3://bucket/pub", tmp_path / "back")
    for path in shard_paths(json.loads((dataset / "manifest.json").read_text())):
        assert (tmp_path / "back" / path).read_bytes() == (dataset / path).read_bytes()
    # a bucket that does not exist: one line, no manifest anywhere
    proc = run_cli("publish", dataset, "s3://no-such-bucket/pub", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_publish_to_unreachable_object_storage_is_one_line(dataset, tmp_path):
    import os
    env = {**os.environ, "AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_ACCESS_KEY_ID": "x",
           "AWS_SECRET_ACCESS_KEY": "y", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_MAX_ATTEMPTS": "1", "AWS_CONFIG_FILE": "/dev/null",
           "AWS_SHARED_CREDENTIALS_FILE": "/dev/null", "AWS_EC2_METADATA_DISABLED": "true"}
    proc = run_cli("publish", dataset, "s3://bucket/pub", check=False, env=env)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "unreachable" in proc.stderr


def test_label_overwrite_takes_a_published_card_for_its_own(dataset, tmp_path, tiny_corpus,
                                                            tiny_teacher):
    """A published folder (README.md opens with Hugging Face front matter) relabeled with
    --overwrite: the card is the tool's own file, so the folder is replaced; a file the tool
    did not write still stops it, and is kept."""
    dest = tmp_path / "pub"
    run_cli("publish", dataset, dest)
    assert (dest / "README.md").read_text().startswith("---\n")
    label = ["label", "--corpus", tiny_corpus, "--teacher", tiny_teacher, "--out", dest,
             "--top-k", "2", "--seq-len", "16", "--shard-rows", "16", "--limit-docs", "12",
             "--quiet", "--device", "cpu", "--overwrite"]
    (dest / "notes.txt").write_text("mine")
    proc = run_cli(*label, check=False)
    assert proc.returncode == 1 and "notes.txt" in proc.stderr
    assert (dest / "notes.txt").read_text() == "mine" and (dest / "manifest.json").is_file()
    (dest / "notes.txt").unlink()
    run_cli(*label)
    m = json.loads((dest / "manifest.json").read_text())
    assert m["labels"]["k"] == 2 and "published" not in m
    assert (dest / "README.md").read_text().startswith("# Soft-label dataset\n")


def test_publish_one_version_of_a_versioned_dataset(tmp_path, tiny_teacher, monkeypatch):
    """Format 1.4 with two versions: `--version 1` publishes exactly version 1's shards, the
    card's configs list only those, and datasets.load_dataset(DEST) loads them."""
    from stages.label import LabelConfig, run
    from tests.conftest import make_docs

    corpus, out = tmp_path / "c.jsonl", tmp_path / "ds"
    docs = make_docs(30)
    for n in (16, 30):  # version 1: 16 documents; version 2: 14 more
        corpus.write_text("".join(json.dumps(d) + "\n" for d in docs[:n]))
        run(LabelConfig(corpus=str(corpus), out=str(out), teacher=str(tiny_teacher), top_k=4,
                        seq_len=16, shard_rows=8, batch_size=8, id_column="id",
                        validation_fraction=0.2, incremental=True, quiet=True, device="cpu"))
    v1 = json.loads((out / "versions/00001.json").read_text())
    assert shard_paths(v1) != shard_paths(json.loads((out / "manifest.json").read_text()))
    dest = tmp_path / "pub"
    run_cli("publish", out, dest, "--version", "1")
    m = json.loads((dest / "manifest.json").read_text())
    assert shard_paths(m) == shard_paths(v1) and m["published"]["version"] == 1
    assert "version" not in m and not (dest / "versions").exists()
    front = (dest / "README.md").read_text().split("---\n")[1]
    listed = [line.strip()[2:].strip('"') for line in front.splitlines()
              if line.strip().startswith('- "')]
    assert sorted(listed) == sorted(shard_paths(v1))
    assert "valid: " in run_cli("validate", dest).stdout
    hf = load_with_datasets(dest, tmp_path, monkeypatch)
    assert {s: hf[s].num_rows for s in hf} == {
        s: sum(e["rows"] for e in sh) for s, sh in v1["splits"].items() if sh}


def test_publish_with_an_audit_shows_its_figures(dataset, tiny_teacher, tmp_path):
    """`publish --audit` takes what `pipeline audit --json` printed; the card shows it, and a
    file that is not an audit is refused in one line."""
    audit = run_cli("audit", "--labels", dataset, "--teacher", tiny_teacher, "--rows", "2",
                    "--device", "cpu", "--json").stdout
    (tmp_path / "audit.json").write_text(audit)
    figures = json.loads(audit)
    run_cli("publish", dataset, tmp_path / "pub", "--audit", tmp_path / "audit.json")
    card = (tmp_path / "pub" / "README.md").read_text()
    assert "## Audit" in card and f"| kl_mean | {figures['kl_mean']:.6g} |" in card
    assert f"| positions | {figures['positions']} |" in card
    m = json.loads((tmp_path / "pub" / "manifest.json").read_text())
    assert m["audit"]["kl_mean"] == figures["kl_mean"]
    assert str(tmp_path.parents[1]) not in json.dumps(m["audit"])  # scrubbed: no local path
    (tmp_path / "notes.json").write_text('{"x": 1}')
    proc = run_cli("publish", dataset, tmp_path / "pub2", "--audit", tmp_path / "notes.json",
                   check=False)
    assert proc.returncode == 1 and "not the output of `pipeline audit --json`" in proc.stderr
    assert not (tmp_path / "pub2").exists()
