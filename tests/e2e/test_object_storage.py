"""Object storage end to end against a real S3 API server on loopback (moto in server mode,
127.0.0.1, a free port, dummy credentials, AWS_ENDPOINT_URL): label a corpus that lives in S3
into s3://bucket/ds through the CLI, validate and inspect it, train from it, evaluate into an
S3 report folder, and SIGKILL a labeler mid-run and rerun it to the identical dataset."""

import json
import os
import signal
import subprocess
import sys

import pytest

from pipeline.io.storage import Store
from stages.label import LabelConfig
from stages.label import run as label
from tests.conftest import REPO, run_cli, tool_default_env
from tests.holds import hold_env, kill_in_hold
from tests.interop import moto_s3

# Byte-for-byte comparisons need one thread count in every process (pipeline/threads.py): with
# two threads on a loaded machine, one fp16 log-probability has been seen to differ in the last
# bit between processes. One thread is the tool's default; these runs also say so explicitly.
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
OPTS = {"top_k": 4, "seq_len": 16, "shard_rows": 16, "batch_size": 16, "limit_docs": 30,
        "validation_fraction": 0.2}
STUDENT = ('[model]\nfamily = "gpt"\nn_layer = 1\nn_head = 2\nd_model = 16\n'
           '[schedule]\nwarmup_steps = 1\n[train]\nbatch_size = 8\nmax_steps = 3\n')


def flags(opts: dict) -> list[str]:
    return [x for k, v in opts.items() for x in ("--" + k.replace("_", "-"), str(v))]


@pytest.fixture(scope="module")
def s3(tiny_corpus, tmp_path_factory):
    cache = str(tmp_path_factory.mktemp("cache"))  # local copies and staging: never ~/.cache
    with moto_s3("bucket", SOFTLABELS_CACHE=cache) as env:
        Store("s3://bucket/corpus").put_file(tiny_corpus, "docs.jsonl")
        yield env


def differences(got, want, where: str = "") -> list[str]:
    """The paths at which two JSON-like values differ (a readable failure message)."""
    if isinstance(got, dict) and isinstance(want, dict):
        return [d for k in sorted(set(got) | set(want), key=str)
                for d in differences(got.get(k), want.get(k), f"{where}.{k}")]
    if isinstance(got, list) and isinstance(want, list) and len(got) == len(want):
        return [d for i, (a, b) in enumerate(zip(got, want))
                for d in differences(a, b, f"{where}[{i}]")]
    return [] if got == want else [f"{where}: {got!r} != {want!r}"]


def snapshot(uri: str) -> tuple[dict, dict]:
    """(manifest without created_at, {shard: sha256 of the stored object})."""
    store = Store(uri)
    m = json.loads(store.read_bytes("manifest.json"))
    m.pop("created_at")
    shards = {e["path"]: store.sha256(e["path"]) for s in m["splits"].values() for e in s}
    return m, shards


@pytest.mark.slow
def test_label_validate_train_evaluate_on_s3(s3, tmp_path, tiny_teacher):
    for out in ("s3://bucket/ds", tmp_path / "local"):  # same corpus URI (part of the plan)
        run_cli("label", "--corpus", "s3://bucket/corpus", "--teacher", tiny_teacher, "--out",
                out, "--quiet", *flags(OPTS), env={**os.environ, **ONE_THREAD})
    local = tmp_path / "local"
    remote_m, remote_shards = snapshot("s3://bucket/ds")
    local_m, local_shards = snapshot(str(local))
    assert remote_m == local_m and remote_shards == local_shards  # byte for byte
    assert not Store("s3://bucket/ds").exists(".lock")

    # validate through the CLI, with --endpoint-url instead of AWS_ENDPOINT_URL
    env = {k: v for k, v in os.environ.items() if k != "AWS_ENDPOINT_URL"}
    assert "valid: " in run_cli("--endpoint-url", s3["AWS_ENDPOINT_URL"], "validate",
                                "s3://bucket/ds", env=env).stdout

    (tmp_path / "s.toml").write_text(STUDENT)
    for labels, out in (("s3://bucket/ds", "s3://bucket/runs"), (local, tmp_path / "runs-l")):
        run_cli("train", "--labels", labels, "--student", tmp_path / "s.toml", "--out", out,
                "--quiet", "--device", "cpu", "--num-workers", "2")  # forked readers too
    runs = Store("s3://bucket/runs/s")
    assert {"complete.json", "config.json", "model.safetensors", "metrics.jsonl",
            "config.toml", "tokenizer.json", "state"} <= set(runs.listdir())
    # the same batches, read from S3 or from disk, and the same weights
    assert runs.read_bytes("model.safetensors") == (
        tmp_path / "runs-l" / "s" / "model.safetensors").read_bytes()
    again = run_cli("train", "--labels", "s3://bucket/ds", "--student", tmp_path / "s.toml",
                    "--out", "s3://bucket/runs", "--quiet", "--num-workers", "2")  # skipped
    assert "s: 3 steps" in again.stdout and "s3://bucket/runs/s" in again.stdout

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
    # every run is a process with one torch thread (ONE_THREAD)
    env = {**os.environ, **ONE_THREAD}
    subprocess.run([*argv, "--out", "s3://bucket/full"], cwd=REPO, check=True,
                   capture_output=True, env=env)
    out = Store("s3://bucket/killed")
    # held before its 5th train shard write (4 complete) until killed: tests/holds.py
    hold = hold_env("pipeline.labeling.shards:write_shard", tmp_path / "held", nth=5,
                    where="args[1] == 'train'")
    ended = kill_in_hold([*argv[3:], "--out", out.uri], hold, tmp_path / "held", env=env)
    assert ended.returncode == -signal.SIGKILL, ended.stderr
    done = len(out.listdir("_progress/train"))
    assert not out.exists("manifest.json") and done >= 4  # killed mid-run: no dataset yet
    assert out.exists(".lock")  # a dead labeler's lock, taken over by the rerun (same host)
    subprocess.run([*argv, "--out", out.uri], cwd=REPO, check=True, capture_output=True,
                   env=env)
    (got_m, got_shards), (want_m, want_shards) = snapshot(out.uri), snapshot("s3://bucket/full")
    assert got_m == want_m, differences(got_m, want_m)
    assert got_shards == want_shards, differences(got_shards, want_shards)
    assert not out.exists(".lock")


# Runs the real CLI; pauses right after a checkpoint (step >= 4) is uploaded, so the kill lands
# between two uploads of an unfinished run.
SHIM = """
import json, os, sys, time
from pathlib import Path
import pipeline.training.remote as R
from pipeline.cli import main
real = R.upload_run
def upload(local, remote, name):
    real(local, remote, name)
    step = json.loads((local / "state" / "latest.json").read_text())["step"]
    if step >= 4 and not (local / "complete.json").exists():
        Path(os.environ["PAUSED"]).write_text(str(step))
        time.sleep(120)
R.upload_run = upload
sys.argv = ["pipeline", *sys.argv[1:]]
main()
"""


@pytest.mark.slow
def test_training_to_s3_resumes_after_sigkill_elsewhere(s3, tmp_path, tiny_corpus,
                                                         tiny_teacher):
    labels = tmp_path / "ds"
    label(LabelConfig(corpus=str(tiny_corpus), out=str(labels), teacher=str(tiny_teacher),
                      quiet=True, **OPTS))
    student = tmp_path / "s.toml"
    student.write_text(STUDENT.replace("max_steps = 3", "max_steps = 8\ncheckpoint_every = 2"))
    args = ["train", "--labels", str(labels), "--student", str(student), "--quiet", "--device",
            "cpu"]
    # Every process runs with the tool's own thread settings (no thread variables inherited):
    # bit-exact resume is the CLI's default, not something this test arranges.
    run_cli(*args, "--out", tmp_path / "unbroken", env=tool_default_env())
    env = tool_default_env(PAUSED=str(tmp_path / "paused"),
                           SOFTLABELS_CACHE=str(tmp_path / "cache-a"))
    # held after an upload (a state), then killed
    ended = kill_in_hold([*args, "--out", "s3://bucket/k"], {}, tmp_path / "paused", env=env,
                         program=SHIM)
    assert ended.returncode == -signal.SIGKILL, ended.stderr
    remote = Store("s3://bucket/k/s")
    assert not remote.exists("complete.json")
    step = json.loads(remote.read_bytes("state/latest.json"))["step"]
    assert 4 <= step < 8
    # another machine: an empty cache, so everything comes from the bucket
    done = run_cli(*args, "--out", "s3://bucket/k", "--resume",
                   env=tool_default_env(SOFTLABELS_CACHE=str(tmp_path / "cache-b")))
    assert "s: 8 steps" in done.stdout
    assert remote.read_bytes("model.safetensors") == (
        tmp_path / "unbroken" / "s" / "model.safetensors").read_bytes()
    assert remote.listdir("state") == ["latest.json", "step-00000008"]
