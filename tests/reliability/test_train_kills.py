"""SIGKILL `pipeline train` at 4 moments; `--resume` must give bit-identical final weights.

tests/stages/test_train.py kills between checkpoints; these are the other four places a kill
can land, each leaving a different state:
  first checkpoint  - the run folder was just created: config.toml, maybe a half-written
                      state/step-00000000.tmp, maybe no checkpoint at all
  mid-checkpoint    - step K's checkpoint half-written (weights saved in state/step-K.tmp,
                      optimizer file written, not committed): resume must use step K-4's
  before weights    - the last checkpoint committed (latest.json points at it) but the run
                      folder's model files not yet linked to it: they are the previous
                      checkpoint's, so completing the run must publish the latest weights
  before complete   - every step done and checkpointed, complete.json not yet written
The first is hit by timing (a seeded delay after config.toml appears), never raced: the trainer
holds before its first latest.json until killed (tests/holds.py); the others last
milliseconds, so the trainer runs under a tiny shim that pauses at that point (the step K is
drawn by seed) and the kill lands in the pause. The student uses dropout, so the per-student
RNG state must be restored too. CPU, one thread, fixed seeds.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pipeline.training.layout import OPTIMIZER, STATE, checkpoint_name
from tests.conftest import REPO
from tests.holds import cli_shim, hold_env
from tests.reliability.conftest import train_unbroken

SEED = 7
GPT_DROPOUT = '[model]\nfamily = "gpt"\nn_layer = 1\nn_head = 2\nd_model = 16\ndropout = 0.1\n'
TRAIN = {"batch_size": 8, "epochs": None, "max_steps": 24, "checkpoint_every": 4,
         "eval_every": 8, "eval_batches": 1}  # ~3 epochs of the small dataset

SHIM = cli_shim("""
import pipeline.training.trainer as T
import stages.train as TR
from pipeline.training.layout import checkpoint_name
phase, marker = os.environ["KILL_TEST_PHASE"], os.environ["KILL_TEST_MARKER"]
step = int(os.environ.get("KILL_TEST_STEP", "0"))
def pause():
    Path(marker).write_text(phase)
    time.sleep(120)
if phase == "mid-checkpoint":
    real_save = T.save_file
    def save_file(tensors, path, *a, **k):
        real_save(tensors, path, *a, **k)
        if Path(path).parent.name == checkpoint_name(step) + ".tmp":
            pause()
    T.save_file = save_file
if phase == "before weights":
    real_latest = T.write_json_atomic
    def write_latest(path, obj):
        real_latest(path, obj)
        if Path(path).name == "latest.json" and obj["step"] == step:
            pause()
    T.write_json_atomic = write_latest
if phase == "before complete":
    real_write = TR.write_json_atomic
    def write_json_atomic(path, obj):
        if Path(path).name == "complete.json":
            pause()
        return real_write(path, obj)
    TR.write_json_atomic = write_json_atomic
""")


def train_args(labels, student, out) -> list[str]:
    return ["train", "--labels", str(labels), "--student", str(student), "--out", str(out),
            "--device", "cpu", "--quiet"]


def kill_train(args: list[str], run_dir: Path, phase: str, marker: Path, rng: random.Random,
               step: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "KILL_TEST_PHASE": phase,
           "KILL_TEST_MARKER": str(marker), "KILL_TEST_STEP": str(step)}
    if phase == "first checkpoint":  # held before its first latest.json: it cannot get further
        env.update(hold_env("pipeline.training.trainer:write_json_atomic",
                            marker.with_suffix(".cap"),
                            where="Path(args[0]).name == 'latest.json'"))
    proc = subprocess.Popen([sys.executable, "-c", SHIM, *args], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    trigger = marker if phase != "first checkpoint" else run_dir / "config.toml"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None and not trigger.exists():
        time.sleep(0.001)
    time.sleep(rng.uniform(0.0, 0.02) if phase == "first checkpoint" else rng.uniform(0, 0.2))
    assert proc.poll() is None, f"trainer exited before the {phase} kill"
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def metrics(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("tokens_per_s", "elapsed_s")} for r in rows]


@pytest.fixture(scope="module")
def reference(small_dataset, tmp_path_factory):
    return train_unbroken(small_dataset, tmp_path_factory.mktemp("train-ref"), GPT_DROPOUT,
                          **TRAIN)


@pytest.mark.slow
@pytest.mark.parametrize("phase", ["first checkpoint", "mid-checkpoint", "before weights",
                                   "before complete"])
def test_sigkill_then_resume_gives_identical_weights(cli, small_dataset, reference, tmp_path,
                                                     phase):
    rng = random.Random(f"{SEED}-{phase}")
    step = rng.choice([8, 12, 16, 20]) if phase != "before weights" else TRAIN["max_steps"]
    student, ref_dir = reference
    args = train_args(small_dataset, student, tmp_path / "runs")
    run_dir = tmp_path / "runs" / "k"
    kill_train(args, run_dir, phase, tmp_path / "marker", rng, step)

    assert not (run_dir / "complete.json").exists()
    latest = run_dir / "state" / "latest.json"
    if phase == "mid-checkpoint":  # the half-written checkpoint is not the one resumed from
        assert (run_dir / STATE / (checkpoint_name(step) + ".tmp") / OPTIMIZER).exists()
        assert json.loads(latest.read_text())["step"] == step - TRAIN["checkpoint_every"]
    if phase in ("before weights", "before complete"):
        assert json.loads(latest.read_text())["step"] == TRAIN["max_steps"]
    if phase == "before weights":  # the run folder still holds the previous checkpoint's weights
        assert (run_dir / "model.safetensors").read_bytes() != \
            (ref_dir / "model.safetensors").read_bytes()
    code, _, err = cli(*args)
    assert code == 1 and "--resume" in err, err  # an unfinished run is never silently redone

    code, _, err = cli(*args, "--resume")
    assert code == 0, err
    want, got = load_file(str(ref_dir / "model.safetensors")), \
        load_file(str(run_dir / "model.safetensors"))
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    assert metrics(run_dir) == metrics(ref_dir)  # each step logged once, same losses
    done = json.loads((run_dir / "complete.json").read_text())
    assert done["step"] == TRAIN["max_steps"]
    assert not list(run_dir.rglob("*.tmp"))
