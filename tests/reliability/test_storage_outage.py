"""The object storage server goes down in the middle of a run, then comes back.

A real S3 API server (moto in server mode on loopback) is stopped — its socket closed, so every
request is refused — while `pipeline label` is writing shards to it, while `pipeline train` is
uploading checkpoints to it, and while `pipeline train` is streaming its shards from it. Each
command must stop with one clear line naming the object and the settings to check (no
traceback), exit 1, and leave nothing that reads as finished; once the server is back on the
same port, a plain rerun (`--resume` for training) must finish with exactly what an
uninterrupted run gives.
"""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.io.storage import Store
from tests.conftest import REPO
from tests.interop import moto_s3_server
from tests.reliability.conftest import label_argv, label_here, write_student
from tests.reliability.test_failure_modes import STORAGE_DOWN, pattern

OPTS = {"shard_rows": 2, "batch_size": 2}  # many small shards: a window to stop the server in


@pytest.fixture()
def s3(tmp_path):
    with moto_s3_server("bucket", SOFTLABELS_CACHE=str(tmp_path / "cache")) as (env, server):
        yield env, server


def snapshot(uri: str) -> tuple[dict, dict]:
    """(manifest without created_at, {shard: sha256 of the stored object})."""
    store = Store(uri)
    m = json.loads(store.read_bytes("manifest.json"))
    m.pop("created_at")
    return m, {e["path"]: store.sha256(e["path"]) for s in m["splits"].values() for e in s}


def stop_when(server, proc: subprocess.Popen, ready, what: str) -> None:
    """Stop the server once `ready()` holds, while `proc` is still running."""
    deadline = time.monotonic() + 300
    while not ready():
        assert proc.poll() is None, f"{what} ended before the outage:\n{proc.stderr.read()}"
        assert time.monotonic() < deadline, f"{what} made no progress"
        time.sleep(0.05)
    server.stop()


def assert_one_line_storage_error(proc: subprocess.Popen, uri: str) -> str:
    try:
        proc.wait(timeout=240)  # botocore and s3fs retry a refused connection for a while
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError("the command hung after the storage server went down") from None
    stderr = proc.stderr.read()
    assert proc.returncode == 1, stderr
    assert "Traceback" not in stderr, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {uri}/"), last  # names the object it was writing/reading
    assert re.fullmatch(pattern(STORAGE_DOWN), last), last  # the README's failure-modes row
    return last


def spawn(argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen(argv, cwd=REPO, env=one_thread_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def one_thread_env() -> dict:
    """Like the in-process runs here (tests/reliability/conftest.py), one torch thread: the
    outputs are compared byte for byte."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.mark.slow
def test_labeler_stops_cleanly_when_storage_goes_down_and_rerun_finishes(
        s3, tiny_corpus, tiny_teacher):
    _, server = s3
    label_here(tiny_corpus, tiny_teacher, "s3://bucket/full", **OPTS)
    out = Store("s3://bucket/out")
    argv = label_argv(tiny_corpus, tiny_teacher, out.uri, **OPTS)
    proc = spawn(argv)
    stop_when(server, proc, lambda: len(out.listdir("_progress/train")) >= 3, "the labeler")
    assert_one_line_storage_error(proc, "s3://bucket/out")

    server.start()  # back on the same port, with the objects written before the outage
    assert not out.exists("manifest.json")  # nothing reads as a finished dataset
    assert len(out.listdir("_progress/train")) >= 3  # the completed shards are kept ...
    subprocess.run(argv, cwd=REPO, check=True, capture_output=True,
                   env=one_thread_env())  # ... and reused
    assert snapshot(out.uri) == snapshot("s3://bucket/full")
    assert not out.exists(".lock")


@pytest.mark.slow
def test_training_stops_cleanly_when_storage_goes_down_and_resume_finishes(
        s3, tmp_path, small_dataset):
    _, server = s3
    student = write_student(tmp_path, epochs=None, max_steps=8, checkpoint_every=1)
    args = [sys.executable, "-m", "pipeline.cli", "train", "--labels", str(small_dataset),
            "--student", str(student), "--quiet", "--device", "cpu"]
    subprocess.run([*args, "--out", str(tmp_path / "unbroken")], cwd=REPO, check=True,
                   capture_output=True, env=one_thread_env())
    remote = Store("s3://bucket/runs/s")

    def checkpointed() -> bool:
        return remote.exists("state/latest.json") and \
            json.loads(remote.read_bytes("state/latest.json"))["step"] >= 2

    proc = spawn([*args, "--out", "s3://bucket/runs"])
    stop_when(server, proc, checkpointed, "training")
    assert_one_line_storage_error(proc, "s3://bucket/runs")

    server.start()
    assert not remote.exists("complete.json")
    resumed = subprocess.run([*args, "--out", "s3://bucket/runs", "--resume"], cwd=REPO,
                             capture_output=True, text=True, env=one_thread_env())
    assert resumed.returncode == 0, resumed.stderr
    assert "s: 8 steps" in resumed.stdout
    assert remote.read_bytes("model.safetensors") == \
        Path(tmp_path / "unbroken" / "s" / "model.safetensors").read_bytes()


@pytest.mark.slow
def test_training_from_s3_labels_stops_cleanly_when_storage_goes_down(
        s3, tmp_path, tiny_corpus, tiny_teacher):
    _, server = s3
    label_here(tiny_corpus, tiny_teacher, "s3://bucket/ds", row_group_rows=4)  # many reads
    student = write_student(tmp_path, epochs=None, max_steps=40, checkpoint_every=1)
    args = [sys.executable, "-m", "pipeline.cli", "train", "--labels", "s3://bucket/ds",
            "--student", str(student), "--quiet", "--device", "cpu", "--out",
            str(tmp_path / "runs")]
    latest = tmp_path / "runs" / "s" / "state" / "latest.json"
    proc = spawn(args)
    stop_when(server, proc, lambda: latest.is_file() and json.loads(latest.read_text())["step"]
              >= 2, "training")
    line = assert_one_line_storage_error(proc, "s3://bucket/ds")
    assert "shards/" in line  # names the shard it was streaming

    server.start()
    resumed = subprocess.run([*args, "--resume"], cwd=REPO, capture_output=True, text=True,
                             env=one_thread_env())
    assert resumed.returncode == 0, resumed.stderr
    unbroken = subprocess.run([*args[:-1], str(tmp_path / "unbroken")], cwd=REPO,
                              capture_output=True, text=True, env=one_thread_env())
    assert unbroken.returncode == 0, unbroken.stderr
    assert (tmp_path / "runs/s/model.safetensors").read_bytes() == \
        (tmp_path / "unbroken/s/model.safetensors").read_bytes()
