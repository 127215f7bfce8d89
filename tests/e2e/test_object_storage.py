"""Object storage end to end against a real S3 API server on loopback (moto in server mode,
127.0.0.1, a free port, dummy credentials, AWS_ENDPOINT_URL): label a corpus that lives in S3
into s3://bucket/ds through the CLI, validate and inspect it, train from it, evaluate into an
S3 report folder, and SIGKILL a labeler mid-run and rerun it to the identical dataset."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from pipeline.storage import Store
from stages.label import LabelConfig
from stages.label import run as label
from tests.conftest import REPO, run_cli
from tests.interop import moto_s3

OPTS = {"top_k": 4, "seq_len": 16, "shard_rows": 16, "batch_size": 16, "limit_docs": 30,
        "validation_fraction": 0.2}
STUDENT = ('[model]\nfamily = "gpt"\nn_layer = 1\nn_head = 2\nd_model = 16\n'
           '[schedule]\nwarmup_steps = 1\n[train]\nbatch_size = 8\nmax_steps = 3\n')


def flags(opts: dict) -> list[str]:
    return [x for k, v in opts.items() for x in ("--" + k.replace("_", "-"), str(v))]


@pytest.fixture(scope="module")
def s3(tiny_corpus):
    with moto_s3("bucket") as env:
        Store("s3://bucket/corpus").put_file(tiny_corpus, "docs.jsonl")
        yield env


def snapshot(uri: str) -> tuple[dict, dict]:
    """(manifest without created_at, {shard: sha256 of the stored object})."""
    store = Store(uri)
    m = json.loads(store.read_bytes("manifest.json"))
    m.pop("created_at")
    shards = {e["path"]: store.sha256(e["path"]) for s in m["splits"].values() for e in s}
    return m, shards


@pytest.mark.slow
def test_label_validate_train_evaluate_on_s3(s3, tmp_path, tiny_teacher):
    run_cli("label", "--corpus", "s3://bucket/corpus", "--teacher", tiny_teacher, "--out",
            "s3://bucket/ds", "--quiet", *flags(OPTS))
    local = tmp_path / "local"  # same corpus URI (it is part of the plan), local --out
    label(LabelConfig(corpus="s3://bucket/corpus", out=str(local), teacher=str(tiny_teacher),
                      quiet=True, **OPTS))
    remote_m, remote_shards = snapshot("s3://bucket/ds")
    local_m, local_shards = snapshot(str(local))
    assert remote_m == local_m and remote_shards == local_shards  # byte for byte
    assert not Store("s3://bucket/ds").exists(".lock")

    assert "valid: " in run_cli("validate", "s3://bucket/ds").stdout
    assert "s3://bucket/corpus" in run_cli("inspect", "s3://bucket/ds").stdout
    # --endpoint-url instead of AWS_ENDPOINT_URL
    env = {k: v for k, v in os.environ.items() if k != "AWS_ENDPOINT_URL"}
    assert run_cli("--endpoint-url", s3["AWS_ENDPOINT_URL"], "validate", "s3://bucket/ds",
                   env=env).returncode == 0

    (tmp_path / "s.toml").write_text(STUDENT)
    for labels, out in (("s3://bucket/ds", tmp_path / "runs"), (local, tmp_path / "runs-l")):
        run_cli("train", "--labels", labels, "--student", tmp_path / "s.toml", "--out", out,
                "--quiet", "--device", "cpu", "--num-workers", "2")  # forked readers too
    weights = [(d / "s" / "model.safetensors").read_bytes() for d in
               (tmp_path / "runs", tmp_path / "runs-l")]
    assert weights[0] == weights[1]  # the same batches, read from S3 or from disk
    refused = run_cli("train", "--labels", "s3://bucket/ds", "--student", tmp_path / "s.toml",
                      "--out", "s3://bucket/runs", check=False)
    assert refused.returncode == 1 and "run folders must be local" in refused.stderr

    runs = Store("s3://bucket/runs/s")
    for f in (tmp_path / "runs" / "s").iterdir():
        if f.is_file():
            runs.put_file(f, f.name)
    run_cli("evaluate", "--labels", "s3://bucket/ds", "--run", "s3://bucket/runs/s",
            "--teacher", tiny_teacher, "--out", "s3://bucket/report", "--quiet", "--device",
            "cpu", "--bench-repeats", "1")
    report = Store("s3://bucket/report")
    assert {"results.json", "report.md", "results.parquet"} <= set(report.listdir())
    rows = json.loads(report.read_bytes("results.json"))["rows"]
    assert [r["name"] for r in rows] == [tiny_teacher.name, "s"]  # teacher row first
    assert rows[1]["kl_tail"] > 0 and rows[1]["train_steps"] == 3


@pytest.mark.slow
def test_sigkilled_labeler_resumes_to_identical_dataset_on_s3(s3, tmp_path, tiny_teacher):
    opts = {**OPTS, "shard_rows": 2, "batch_size": 2}  # many small shards: time to kill
    argv = [sys.executable, "-m", "pipeline.cli", "label", "--corpus", "s3://bucket/corpus",
            "--teacher", str(tiny_teacher), "--quiet", *flags(opts)]
    label(LabelConfig(corpus="s3://bucket/corpus", out="s3://bucket/full",
                      teacher=str(tiny_teacher), quiet=True, **opts))
    out = Store("s3://bucket/killed")
    proc = subprocess.Popen([*argv, "--out", out.uri], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        while len(out.listdir("_progress/train")) < 4 and proc.poll() is None:
            assert time.monotonic() < deadline, "labeler made no progress"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()
    done = len(out.listdir("_progress/train"))
    assert not out.exists("manifest.json") and done >= 4  # killed mid-run: no dataset yet
    assert out.exists(".lock")  # a dead labeler's lock, taken over by the rerun (same host)
    subprocess.run([*argv, "--out", out.uri], cwd=REPO, check=True, capture_output=True)
    assert snapshot(out.uri) == snapshot("s3://bucket/full")
    assert not out.exists(".lock")
