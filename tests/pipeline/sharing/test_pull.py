"""`pipeline pull`: a verified subset that is itself a valid dataset, resumable, stopping at a
corrupt shard with what was verified kept; from a local folder and from S3 (moto)."""

import json
import shutil

from tests.conftest import run_cli


def manifest(path) -> dict:
    return json.loads((path / "manifest.json").read_text())


def test_pull_a_split_and_a_range_is_a_valid_subset(dataset, tmp_path):
    dest = tmp_path / "part"
    run_cli("pull", dataset, dest, "--split", "validation", "--shards", "0:2")
    assert "valid: 2 shards" in run_cli("validate", dest).stdout
    m, src = manifest(dest), manifest(dataset)
    assert list(m["splits"]) == ["validation"]
    assert m["splits"]["validation"] == src["splits"]["validation"][:2]
    assert m["summary"]["rows"] == sum(e["rows"] for e in m["splits"]["validation"])
    assert m["subset"]["of_plan_fingerprint"] == src["plan_fingerprint"]
    assert "validation: 2 of" in m["subset"]["description"]
    assert sorted(p.name for p in dest.iterdir()) == ["README.md", "manifest.json", "shards",
                                                      "tokenizer.json"]
    assert "a subset" in (dest / "README.md").read_text()


def test_pull_max_positions_takes_whole_shards(dataset, tmp_path):
    src = manifest(dataset)
    first = src["splits"]["train"][0]["positions"]
    run_cli("pull", dataset, tmp_path / "p", "--split", "train", "--max-positions", first + 1)
    assert len(manifest(tmp_path / "p")["splits"]["train"]) == 2


def test_pull_stops_at_a_corrupt_shard_keeps_the_verified_and_resumes(dataset, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(dataset, src)
    bad = src / "shards/train/part-00002.parquet"
    good = bad.read_bytes()
    bad.write_bytes(good[:-10] + b"0123456789")
    dest = tmp_path / "part"
    proc = run_cli("pull", src, dest, "--split", "train", "--shards", "0:4", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "shards/train/part-00002.parquet" in proc.stderr and "2 shards verified" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (dest / "manifest.json").exists()
    kept = sorted(p.name for p in (dest / "shards/train").iterdir())
    assert kept == ["part-00000.parquet", "part-00001.parquet"]
    bad.write_bytes(good)  # the source is repaired: the rerun fetches only what is missing
    again = run_cli("pull", src, dest, "--split", "train", "--shards", "0:4").stdout
    assert "(2 downloaded)" in again
    assert "valid: 4 shards" in run_cli("validate", dest).stdout


def test_pull_refuses_a_destination_with_another_dataset(dataset, tmp_path):
    run_cli("pull", dataset, tmp_path / "p", "--split", "validation")
    proc = run_cli("pull", dataset, tmp_path / "p", "--split", "train", check=False)
    assert proc.returncode == 1 and "different dataset" in proc.stderr


def test_pull_bad_selection_is_one_line(dataset, tmp_path):
    for args in (["--split", "test"], ["--shards", "x"], ["--shards", "500:600"]):
        proc = run_cli("pull", dataset, tmp_path / "p", *args, check=False)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "p").exists()


def test_pull_from_s3(dataset, s3, tmp_path):
    run_cli("publish", dataset, "s3://bucket/pub")
    run_cli("pull", "s3://bucket/pub", tmp_path / "p", "--split", "validation", "--shards",
            ":1")
    assert "valid: 1 shards" in run_cli("validate", tmp_path / "p").stdout
    assert manifest(tmp_path / "p")["subset"]["source"] == "s3://bucket/pub"
    run_cli("pull", "s3://bucket/pub", "s3://bucket/part", "--split", "validation")
    assert "valid: " in run_cli("validate", "s3://bucket/part").stdout
    proc = run_cli("pull", "s3://KEYID:Sup3rSecretValue@bucket/pub", tmp_path / "q",
                   check=False)
    assert proc.returncode == 1 and "Sup3rSecretValue" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
