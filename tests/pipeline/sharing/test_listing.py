"""`pipeline ls`: one line per dataset under a prefix, from manifests alone; local and S3."""

import json
import shutil

from tests.conftest import run_cli


def test_ls_lists_each_dataset_once_from_its_manifest(dataset, tmp_path):
    root = tmp_path / "team"
    shutil.copytree(dataset, root / "a")
    run_cli("publish", dataset, root / "nested" / "b")
    (root / "notes").mkdir()
    (root / "notes" / "x.txt").write_text("not a dataset")
    lines = run_cli("ls", root).stdout.strip().splitlines()
    assert [ln.split()[0] for ln in lines] == ["a", "nested/b"]
    m = json.loads((dataset / "manifest.json").read_text())
    assert f"rows={m['summary']['rows']:,}" in lines[0] and "labels=topk/4" in lines[0]
    assert "format=1.2" in lines[0] and "encoding=fp16/sorted_delta" in lines[0]
    rows = json.loads(run_cli("ls", root, "--json").stdout)
    assert [r["name"] for r in rows] == ["a", "nested/b"]
    assert rows[0]["tokenizer"] == m["tokenizer"]["sha256"][:12]
    assert rows[0]["bytes"] == m["summary"]["bytes"] and "/" not in rows[1]["teacher"]


def test_ls_reads_only_manifests(dataset, tmp_path):
    root = tmp_path / "team"
    shutil.copytree(dataset, root / "a")
    for shard in (root / "a" / "shards").rglob("*.parquet"):
        shard.write_bytes(b"garbage")  # never opened
    assert run_cli("ls", root).stdout.startswith("a  ")


def test_ls_on_s3_and_an_unreadable_prefix(dataset, s3):
    run_cli("publish", dataset, "s3://bucket/team/one")
    run_cli("publish", dataset, "s3://bucket/team/two")
    out = run_cli("ls", "s3://bucket/team").stdout.strip().splitlines()
    assert [ln.split()[0] for ln in out] == ["one", "two"]
    secret = "AKIAXX:Sup3rSecretValue"
    proc = run_cli("ls", f"s3://{secret}@bucket/team", check=False)
    proc2 = run_cli("ls", "s3://no-such-bucket/x?token=Sup3rSecretValue", check=False)
    for p in (proc, proc2):
        assert p.returncode == 1 and "Traceback" not in p.stderr
        assert "Sup3rSecretValue" not in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_ls_of_a_missing_folder_is_one_line(tmp_path):
    proc = run_cli("ls", tmp_path / "nothing", check=False)
    assert proc.returncode == 1 and "nothing there" in proc.stderr
