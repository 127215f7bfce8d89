"""SIGKILL `pipeline label` mid-run, rerun it, and get exactly the uninterrupted dataset."""

import os
import signal
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from tests.conftest import REPO, run_cli
from tests.holds import cli_shim, hold_env, wait_for_marker

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
    # the real CLI, held before its 4th shard write (3 shards complete) until the kill lands
    marker = tmp_path / "held"
    env = {**os.environ, **hold_env("pipeline.labeling.shards:write_shard", marker, nth=4)}
    proc = subprocess.Popen([sys.executable, "-c", cli_shim(),
                             *label_cmd(tiny_corpus, tiny_teacher, out)[3:]], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_marker(proc, marker)
        done = list((out / "_progress").rglob("*.json"))
        assert len(done) == 3
        assert proc.poll() is None, "labeler finished before it could be killed; make it slower"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not (out / "manifest.json").exists()
    run_cli(*label_cmd(tiny_corpus, tiny_teacher, out)[3:])
    assert rows(out) == rows(ref)
    assert not list(out.rglob("*.tmp"))
    assert run_cli("validate", out).returncode == 0
