"""One student across 2 processes: `torchrun --nproc-per-node 2 -m pipeline train` on CPU (gloo).

The loss must go down, replicas must stay identical (DDP averages gradients: without it the two
ranks would drift apart on their different rows), rank 0 alone writes the run folder, and its
checkpoint loads as a model directory.
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

from pipeline.models.checkpoint import load_model_dir
from stages.label import LabelConfig
from stages.label import run as label
from tests.conftest import REPO

STUDENT = ('[model]\nfamily = "gpt"\nn_layer = 1\nn_head = 2\nd_model = 32\n[optimizer]\n'
           'lr = 0.01\n[schedule]\nwarmup_steps = 3\n[train]\nbatch_size = 8\nmax_steps = 30\n'
           'eval_every = 10\neval_batches = 2\ncheckpoint_every = 10\n')


def torchrun() -> list[str]:
    exe = Path(sys.executable).parent / "torchrun"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "torch.distributed.run"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, tiny_corpus, tiny_teacher) -> Path:
    ds = tmp_path_factory.mktemp("torchrun") / "ds"
    label(LabelConfig(corpus=str(tiny_corpus), out=str(ds), teacher=str(tiny_teacher), top_k=4,
                      seq_len=16, shard_rows=32, row_group_rows=8, batch_size=32,
                      validation_fraction=0.1, quiet=True))
    (ds.parent / "s.toml").write_text(STUDENT)
    return ds


def train_args(ds: Path, out: Path, *extra) -> list:
    return ["train", "--labels", ds, "--student", ds.parent / "s.toml", "--out", out,
            "--device", "cpu", "--quiet", *extra]


@pytest.fixture(scope="module")
def unbroken(dataset) -> tuple[subprocess.CompletedProcess, Path]:
    """One uninterrupted 2-rank run (also the reference of the interruption test)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([*torchrun(), "--standalone", "--nproc-per-node", "2", "-m",
                           "pipeline", *train_args(dataset, dataset.parent / "runs")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    return proc, dataset.parent / "runs" / "s"


@pytest.mark.slow
def test_two_process_torchrun_trains_one_student(unbroken):
    proc, run_dir = unbroken
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("s: 30 steps") == 1  # rank 0 reports, rank 1 stays quiet
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 31))  # one writer: no duplicate lines
    assert all(r["ddp_ranks"] == 2 and r["ddp_param_spread"] == 0.0 for r in rows)
    first, last = (sum(r["loss"] for r in part) / 5 for part in (rows[:5], rows[-5:]))
    assert last < first * 0.8, (first, last)
    assert rows[-1]["tokens"] == 2 * 30 * 8 * 16  # both ranks' rows counted
    done = json.loads((run_dir / "complete.json").read_text())
    assert done["ranks"] == 2 and done["step"] == 30
    loaded = load_model_dir(run_dir, "cpu")
    ids = torch.randint(0, loaded.config["vocab_size"], (2, 16))
    assert torch.isfinite(loaded.model(ids)).all()
    assert not list((run_dir / "state").glob("*.tmp"))


# Each step sleeps a little, so that the signal lands mid-run; the trainer itself is unchanged.
SLOW_STEPS = """
import sys, time
import pipeline.training.trainer as T
real = T.StudentRun.train_step
def train_step(self, batch):
    time.sleep(0.2)
    return real(self, batch)
T.StudentRun.train_step = train_step
from pipeline.cli import main
main(sys.argv[1:])
"""


def rank_pid(rank: int, script: str) -> int:
    """The pid of the torchrun worker running `script` with this RANK (from /proc)."""
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            cmdline = (environ.parent / "cmdline").read_bytes()
            env = environ.read_bytes().split(b"\0")
        except OSError:
            continue
        if script.encode() in cmdline and f"RANK={rank}".encode() in env:
            return int(environ.parent.name)
    raise AssertionError(f"no rank {rank} running {script}")


@pytest.mark.slow
def test_sigterm_to_one_rank_stops_every_rank_at_the_same_step(dataset, unbroken, tmp_path):
    """A signal that reaches one rank only (srun per task, a node's own preemption notice):
    the all-reduced stop flag makes both ranks stop after the same step, rank 0 checkpoints
    it and reports, each rank exits 75, and --resume ends with the unbroken run's weights."""
    script = tmp_path / "slow_steps.py"
    script.write_text(SLOW_STEPS)
    out = tmp_path / "runs"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    launch = [*torchrun(), "--standalone", "--nproc-per-node", "2"]
    proc = subprocess.Popen([*launch, script, *train_args(dataset, out)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = out / "s" / "metrics.jsonl"
    deadline = time.monotonic() + 240
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1]
        time.sleep(0.01)
    os.kill(rank_pid(1, script.name), signal.SIGTERM)
    _, err = proc.communicate(timeout=120)

    run_dir = out / "s"
    stop = json.loads((run_dir / "state" / "latest.json").read_text())["step"]
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert 3 <= stop < 30 and rows[-1]["step"] == stop, (stop, err[-3000:])
    assert err.count(f"interrupted by a signal to another rank: train stopped at a step "
                     f"boundary, checkpoint saved for s at step {stop}/30") == 1, err[-3000:]
    assert "exitcode  : 75" in err, err[-3000:]  # torchrun's report of rank 1
    assert not (run_dir / "complete.json").exists()

    done = subprocess.run([*launch, "-m", "pipeline", *train_args(dataset, out, "--resume")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    want, got = (load_file(str(d / "model.safetensors")) for d in (unbroken[1], run_dir))
    assert all(torch.equal(want[k], got[k]) for k in want)
