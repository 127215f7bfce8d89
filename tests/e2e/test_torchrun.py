"""One student across 2 processes: `torchrun --nproc-per-node 2 -m pipeline train` on CPU (gloo).

The loss must go down, replicas must stay identical (DDP averages gradients: without it the two
ranks would drift apart on their different rows), rank 0 alone writes the run folder, and its
checkpoint loads as a model directory.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

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


@pytest.mark.slow
def test_two_process_torchrun_trains_one_student(tmp_path, tiny_corpus, tiny_teacher):
    ds = tmp_path / "ds"
    label(LabelConfig(corpus=str(tiny_corpus), out=str(ds), teacher=str(tiny_teacher), top_k=4,
                      seq_len=16, shard_rows=32, row_group_rows=8, batch_size=32,
                      validation_fraction=0.1, quiet=True))
    (tmp_path / "s.toml").write_text(STUDENT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([*torchrun(), "--standalone", "--nproc-per-node", "2", "-m",
                           "pipeline", "train", "--labels", ds, "--student",
                           tmp_path / "s.toml", "--out", tmp_path / "runs", "--device", "cpu",
                           "--quiet"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("s: 30 steps") == 1  # rank 0 reports, rank 1 stays quiet
    run_dir = tmp_path / "runs" / "s"
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
