"""SIGKILL `pipeline label` mid-run, rerun it, and get exactly the uninterrupted dataset."""

import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest

from tests.conftest import REPO, run_cli

ARGS = ["--top-k", "4", "--seq-len", "32", "--shard-rows", "2", "--batch-size", "2", "--quiet",
        "--device", "cpu", "--validation-fraction", "0.2"]


def label_cmd(corpus, teacher, out):
    return [sys.executable, "-m", "pipeline.cli", "label", "--corpus", str(corpus),
            "--teacher", str(teacher), "--out", str(out), *ARGS]


def rows(d):
    """Every shard's rows, by path, as Python values (row-for-row comparison)."""
    return {p.relative_to(d).as_posix(): pq.read_table(p).to_pylist()
            for p in sorted((d / "shards").rglob("*.parquet"))}


@pytest.mark.slow
def test_sigkill_mid_run_then_rerun_equals_uninterrupted(tmp_path, tiny_corpus, tiny_teacher):
    ref = tmp_path / "ref"
    run_cli(*label_cmd(tiny_corpus, tiny_teacher, ref)[3:])
    out = tmp_path / "crashed"
    proc = subprocess.Popen(label_cmd(tiny_corpus, tiny_teacher, out), cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        done = list((out / "_progress").rglob("*.json")) if (out / "_progress").exists() else []
        if len(done) >= 3:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "labeler finished before it could be killed; make it slower"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "manifest.json").exists()
    run_cli(*label_cmd(tiny_corpus, tiny_teacher, out)[3:])
    assert rows(out) == rows(ref)
    assert not list(out.rglob("*.tmp"))
    assert run_cli("validate", out).returncode == 0
