"""SIGTERM/SIGINT to real `pipeline` processes: the stop keeps everything, says how to resume in
one line, and exits 75 (pipeline/interrupt.py).

Each test starts the real CLI in a subprocess, waits for a *state* (a marker the test shim writes
when the step or shard in flight begins, completion records on disk), never a fixed moment, then
sends a real signal. The shim only slows the process down (a pause inside one training step, a
delay per shard) so that the signal lands mid-run; the code under test is unchanged. Resumed
runs must equal uninterrupted ones: weights bit for bit, every metric line, every shard.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import REPO
from tests.reliability.conftest import (
    assert_same_dataset,
    label_argv,
    label_here,
    train_unbroken,
    write_student,
)
from tests.reliability.test_train_kills import GPT_DROPOUT, metrics, train_args

EXIT = 75
# The case: 60 steps and checkpoint_every = 100, so without a stop checkpoint an
# interrupted run would keep none of its steps.
TRAIN = {"batch_size": 8, "epochs": None, "max_steps": 60, "checkpoint_every": 100,
         "eval_every": 8, "eval_batches": 1}
AT_STEP = 13

SHIM = """
import os, sys, time
from pathlib import Path
import pipeline.training.trainer as T
import pipeline.labeling.shards as SH
from pipeline import interrupt
from pipeline.cli import main
marker = Path(os.environ["SIG_TEST_MARKER"])
at, hold = int(os.environ.get("SIG_TEST_STEP", "0")), float(os.environ.get("SIG_TEST_HOLD", "0"))
real_step, real_save, real_label = T.StudentRun.train_step, T.save_file, SH.label_tokens
def train_step(self, batch):
    if self.step + 1 == at:  # step `at` is in flight: the signal lands here
        marker.write_text(str(at))
        time.sleep(1.0)
    return real_step(self, batch)
def save_file(tensors, path, *a, **k):
    real_save(tensors, path, *a, **k)
    if hold and interrupt.requested():  # the stop checkpoint, half written: a slow stop
        Path(str(marker) + ".saving").write_text(str(path))
        time.sleep(hold)
def label_tokens(*a, **k):
    time.sleep(float(os.environ.get("SIG_TEST_SHARD_DELAY", "0")))
    return real_label(*a, **k)
T.StudentRun.train_step, T.save_file, SH.label_tokens = train_step, save_file, label_tokens
sys.argv = ["pipeline", *sys.argv[1:]]
main()
"""


def start(args: list, tmp_path: Path, **env) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SIG_TEST_MARKER": str(tmp_path / "marker"),
           **{k: str(v) for k, v in env.items()}}
    return subprocess.Popen([sys.executable, "-c", SHIM, *map(str, args)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def wait_for(proc: subprocess.Popen, ready, what: str, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, f"exited before {what}: {proc.communicate()[1][-2000:]}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def finish(proc: subprocess.Popen, timeout: float = 60) -> tuple[int, str, float]:
    """(exit code, stderr, seconds it took to exit)."""
    start_t = time.monotonic()
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err, time.monotonic() - start_t


def same_weights(a: Path, b: Path) -> bool:
    want, got = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    return want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)


def latest_step(run_dir: Path) -> int:
    return json.loads((run_dir / "state" / "latest.json").read_text())["step"]


@pytest.fixture(scope="module")
def reference(small_dataset, tmp_path_factory):
    return train_unbroken(small_dataset, tmp_path_factory.mktemp("interrupt-ref"), GPT_DROPOUT,
                          **TRAIN)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_train_signal_checkpoints_the_step_in_flight_and_resume_equals_unbroken(
        cli, small_dataset, reference, tmp_path, sig):
    student, ref_dir = reference
    args = train_args(small_dataset, student, tmp_path / "runs")
    run_dir = tmp_path / "runs" / "k"
    proc = start(args, tmp_path, SIG_TEST_STEP=AT_STEP)
    wait_for(proc, (tmp_path / "marker").exists, f"step {AT_STEP}")
    proc.send_signal(sig)
    code, err, took = finish(proc)

    assert code == EXIT, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err  # --quiet: the stop line only, no traceback
    stop = latest_step(run_dir)
    assert AT_STEP <= stop < TRAIN["max_steps"], (stop, err)  # the step in flight is kept
    assert f"interrupted by {sig.name}: train stopped at a step boundary, checkpoint saved " \
           f"for k at step {stop}/60; to resume, run: pipeline train " in lines[0]
    assert lines[0].endswith("--resume (exit 75)"), lines[0]
    assert took < 30
    assert metrics(run_dir)[-1]["step"] == stop  # every logged step is in the checkpoint
    assert not (run_dir / "complete.json").exists() and not list(run_dir.rglob("*.tmp"))

    code, _, err = cli(*args, "--resume")
    assert code == 0, err
    assert same_weights(ref_dir, run_dir)
    assert metrics(run_dir) == metrics(ref_dir)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["second signal", "grace period"])
def test_a_second_signal_or_a_slow_stop_exits_at_once_and_resume_still_equals_unbroken(
        cli, small_dataset, reference, tmp_path, how):
    """The stop checkpoint is held half-written (weights saved in step-N.tmp); a second
    SIGTERM, or the grace period running out, ends the process there. The previous checkpoint
    (step 0) stays the valid one and --resume still reaches the unbroken run's weights."""
    student, ref_dir = reference
    args = train_args(small_dataset, student, tmp_path / "runs")
    run_dir = tmp_path / "runs" / "k"
    grace = {"SOFTLABELS_STOP_GRACE_S": 2} if how == "grace period" else {}
    proc = start(args, tmp_path, SIG_TEST_STEP=AT_STEP, SIG_TEST_HOLD=120, **grace)
    wait_for(proc, (tmp_path / "marker").exists, f"step {AT_STEP}")
    proc.send_signal(signal.SIGTERM)
    wait_for(proc, Path(str(tmp_path / "marker") + ".saving").exists, "the stop checkpoint")
    if how == "second signal":
        time.sleep(1.2)  # past the window in which a repeat counts as the same request
        proc.send_signal(signal.SIGTERM)
    code, err, took = finish(proc)

    assert code == EXIT, err
    assert took < 5, took
    reason = "second SIGTERM" if how == "second signal" else "no safe stop within 2 s of SIGTERM"
    assert err.strip().splitlines() == [
        f"interrupted: {reason}; exiting now (exit 75): the last checkpoint or shard on disk "
        "stays the valid one and a rerun resumes"], err
    assert latest_step(run_dir) == 0 and list((run_dir / "state").glob("*.tmp"))
    code, _, err = cli(*args, "--resume")
    assert code == 0, err
    assert same_weights(ref_dir, run_dir)
    assert metrics(run_dir) == metrics(ref_dir)


def records(out: Path) -> int:
    return len(list(out.glob("_progress/*/*.json")))


LABEL_OPTS = {"shard_rows": 2, "batch_size": 2}  # ~44 shards of 2 rows


@pytest.mark.slow
def test_label_signal_keeps_finished_shards_and_rerun_equals_uninterrupted(tmp_path,
                                                                           tiny_corpus,
                                                                           tiny_teacher):
    out = tmp_path / "ds"
    argv = label_argv(tiny_corpus, tiny_teacher, out, **LABEL_OPTS)
    proc = start(argv[3:], tmp_path, SIG_TEST_SHARD_DELAY=0.05)
    wait_for(proc, lambda: records(out) >= 5, "5 finished shards")
    proc.send_signal(signal.SIGTERM)
    code, err, took = finish(proc)

    assert code == EXIT, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    kept = records(out)
    total = len(json.loads((out / "plan.json").read_text())["shards"])
    assert lines[0].startswith(f"interrupted by SIGTERM: label stopped with {kept} of {total} "
                               "shards complete (a shard in flight is discarded, never "
                               "half-kept); to resume, run: pipeline label "), lines[0]
    assert 5 <= kept < total and took < 30
    assert not (out / "manifest.json").exists() and not list(out.rglob("*.tmp"))

    ref = tmp_path / "ref"
    label_here(tiny_corpus, tiny_teacher, ref, **LABEL_OPTS)
    label_here(tiny_corpus, tiny_teacher, out, **LABEL_OPTS)  # the rerun resumes
    assert_same_dataset(out, ref)


def descendants(pid: int) -> set[int]:
    """Every live process below `pid` (from /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def assert_gone(pids: set[int]) -> None:
    """The workers exit with their client (or are killed by it), within seconds."""
    deadline = time.monotonic() + 10
    while (alive := {p for p in pids if Path(f"/proc/{p}").exists()}) and \
            time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive, [Path(f"/proc/{p}/cmdline").read_bytes()[:120] for p in alive]


@pytest.mark.slow
def test_label_on_dask_workers_stops_cleanly_on_sigint_to_the_process_group(tmp_path,
                                                                            tiny_corpus,
                                                                            tiny_teacher):
    """Ctrl-C reaches the client and every worker process: one line, exit 75, no worker left,
    no traceback from the workers; the rerun (in process) gives the uninterrupted dataset."""
    out = tmp_path / "ds"
    opts = {**LABEL_OPTS, "limit_docs": 60}
    proc = start([*label_argv(tiny_corpus, tiny_teacher, out, **opts)[3:], "--workers", "2"],
                 tmp_path)
    wait_for(proc, lambda: records(out) >= 3, "3 finished shards")
    workers = descendants(proc.pid)
    os.killpg(proc.pid, signal.SIGINT)
    code, err, took = finish(proc)

    assert code == EXIT, err
    assert err.strip().splitlines()[-1].startswith("interrupted by SIGINT: label stopped with ")
    assert "Traceback" not in err, err
    assert took < 30
    assert_gone(workers)
    assert not (out / "manifest.json").exists()
    ref = tmp_path / "ref"
    label_here(tiny_corpus, tiny_teacher, ref, **opts)
    label_here(tiny_corpus, tiny_teacher, out, **opts)
    assert_same_dataset(out, ref)


@pytest.mark.slow
def test_train_on_dask_workers_stops_cleanly_on_sigterm_to_the_process_group(cli, small_dataset,
                                                                             tmp_path):
    """Each student is a task on a worker: the client stops, the cluster closes with it, and
    --resume continues every student from its last checkpoint."""
    student = write_student(tmp_path, "d", max_steps=600, epochs=None, checkpoint_every=50)
    args = train_args(small_dataset, student, tmp_path / "runs")
    proc = start([*args, "--workers", "2"], tmp_path)
    logged = tmp_path / "runs" / "d" / "metrics.jsonl"
    wait_for(proc, lambda: logged.exists() and len(logged.read_text().splitlines()) > 5,
             "5 steps on a worker")
    workers = descendants(proc.pid)
    os.killpg(proc.pid, signal.SIGTERM)
    code, err, took = finish(proc)

    assert code == EXIT, err
    assert err.strip().splitlines() == [
        "interrupted by SIGTERM: train stopped; to resume, run: pipeline "
        f"{' '.join(map(str, args))} --workers 2 --resume (exit 75)"], err
    assert took < 30
    assert_gone(workers)
    code, _, err = cli(*args, "--resume")
    assert code == 0, err
    assert json.loads((tmp_path / "runs" / "d" / "complete.json").read_text())["step"] == 600


@pytest.mark.slow
def test_run_names_the_stage_it_interrupted_and_a_rerun_finishes(cli, tmp_path, tiny_corpus,
                                                                 tiny_teacher):
    student = write_student(tmp_path, "k", GPT_DROPOUT, **TRAIN)
    job = tmp_path / "job.toml"
    job.write_text(f'students = ["{student}"]\n[job]\nout = "{tmp_path / "job"}"\n'
                   f'device = "cpu"\n[corpus]\nsource = "{tiny_corpus}"\nlimit_docs = 30\n'
                   f'[teacher]\ndir = "{tiny_teacher}"\n[label]\ntop_k = 4\nseq_len = 16\n'
                   "shard_rows = 16\nvalidation_fraction = 0.2\n[evaluate]\nmax_rows = 8\n"
                   "bench_repeats = 1\nbench_warmup = 1\n")
    proc = start(["run", job, "--quiet"], tmp_path, SIG_TEST_STEP=AT_STEP)
    wait_for(proc, (tmp_path / "marker").exists, f"train step {AT_STEP}")
    proc.send_signal(signal.SIGTERM)
    code, err, _ = finish(proc)

    assert code == EXIT, err
    line = err.strip().splitlines()[-1]
    assert line.startswith("interrupted by SIGTERM during stage train: train stopped at a step "
                           "boundary, checkpoint saved for k at step "), line
    assert line.endswith(f"; to resume, run: pipeline run {job} --quiet (exit 75)"), line
    assert not (tmp_path / "job" / "report").exists()
    code, out, err = cli("run", job, "--quiet")
    assert code == 0, err
    assert "label: complete, skipped" in out and "train: running" in out
    assert (tmp_path / "job" / "runs" / "k" / "complete.json").is_file()
