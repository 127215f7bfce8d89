"""Disk full while labeling: a clear one-line error, nothing half-written counted as complete,
and a rerun with room finishes the same dataset.

The labeler runs in a real subprocess under `RLIMIT_FSIZE` (the largest file it may write), with
SIGXFSZ ignored so an oversized write fails with EFBIG instead of killing the process. Limits
are chosen from the sizes of this tiny dataset so the write that fails is a known one: a shard,
the plan, or the first write after the last shard.
"""

import json
import os
import resource
import signal
import subprocess

import pytest

from tests.conftest import REPO
from tests.reliability.conftest import assert_same_dataset, label_argv, label_here


def run_with_file_limit(argv: list[str], max_bytes: int) -> subprocess.CompletedProcess:
    def limit():  # runs in the child between fork and exec
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    # No bytecode writes: CPython writes a .pyc with one raw write(), which the limit cuts
    # short without an error, leaving a truncated .pyc that breaks every later import.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run(argv, preexec_fn=limit, capture_output=True, text=True, cwd=REPO,
                          env=env, timeout=300)


def completed(out) -> list[str]:
    """Shards the labeler counts as complete (its completion records)."""
    return sorted(json.loads(p.read_text())["path"] for p in out.glob("_progress/*/*.json"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_corpus, tiny_teacher):
    """Uninterrupted datasets: 16-row shards (~10 kB each) and 8-row shards (~7.6 kB)."""
    root = tmp_path_factory.mktemp("full-ref")
    label_here(tiny_corpus, tiny_teacher, root / "r16")
    label_here(tiny_corpus, tiny_teacher, root / "r8", shard_rows=8)
    return root


@pytest.mark.slow
@pytest.mark.parametrize("case,shard_rows,max_bytes,failing_file", [
    ("first shard", 16, 5_000, "shards/train/part-00000.parquet"),
    ("plan", 16, 1_000, "plan.json"),
    ("after the last shard", 8, 8_000, "tokenizer.json"),
])
def test_disk_full_then_rerun_with_room(tmp_path, tiny_corpus, tiny_teacher, reference, case,
                                        shard_rows, max_bytes, failing_file):
    out = tmp_path / "ds"
    ref = reference / f"r{shard_rows}"
    sizes = {p.relative_to(ref).as_posix(): p.stat().st_size for p in ref.rglob("*")
             if p.is_file()}
    assert sizes[failing_file] > max_bytes  # the limit really is below the file that fails

    proc = run_with_file_limit(label_argv(tiny_corpus, tiny_teacher, out, shard_rows=shard_rows),
                               max_bytes)
    err = proc.stderr.strip()
    assert proc.returncode == 1, proc.stderr
    assert len(err.splitlines()) == 1 and err.startswith("error: writing "), err
    assert failing_file in err and "disk full? free space and rerun" in err, err
    # Nothing partial counts: no manifest, no record for a shard whose file is not complete,
    # no temp file left where a reader or a rerun could mistake it for data.
    assert not (out / "manifest.json").exists()
    assert not list(out.rglob("*.tmp")) if out.exists() else True
    records = completed(out) if out.exists() else []
    for rel in records:
        assert (out / rel).stat().st_size == sizes[rel]
    if failing_file.startswith("shards/"):
        assert records == [] and not list(out.rglob("*.parquet"))
    if failing_file == "tokenizer.json":  # every shard was done before the disk filled up
        assert len(records) == len([s for s in sizes if s.startswith("shards/")])
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.parquet")} if out.exists() else {}

    label_here(tiny_corpus, tiny_teacher, out, shard_rows=shard_rows)  # room again
    assert_same_dataset(out, ref)
    assert {p: p.stat().st_mtime_ns for p in before} == before  # completed shards were kept
