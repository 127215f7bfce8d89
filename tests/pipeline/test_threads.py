"""Every process the tool starts fixes its compute thread count (pipeline/threads.py): the CLI's
default is one thread with dynamic threading off, `--threads`, SOFTLABELS_THREADS and a user's
OMP_NUM_THREADS override it in that order, and the count reaches torch."""

import subprocess
import sys

import pytest

from pipeline.errors import PipelineError
from pipeline.threads import DEFAULT_THREADS, requested_threads
from tests.conftest import REPO, THREAD_VARS, tool_default_env

# Runs the CLI's start-up (a verb that fails at once: the global options still ran), then
# reports what torch, OpenMP and MKL were told.
PROBE = """
import os, sys
from pipeline.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
import torch
print(torch.get_num_threads(), os.environ["OMP_DYNAMIC"], os.environ["MKL_DYNAMIC"],
      os.environ["SOFTLABELS_THREADS"])
"""


def probe(*args: str, **env: str) -> str:
    proc = subprocess.run([sys.executable, "-c", PROBE, *args, "inspect", "/nonexistent"],
                          cwd=REPO, capture_output=True, text=True,
                          env=tool_default_env(**env))
    return proc.stdout.strip() or proc.stderr


@pytest.mark.parametrize("env, want", [
    ({}, DEFAULT_THREADS),
    ({"OMP_NUM_THREADS": "3"}, 3),
    ({"OMP_NUM_THREADS": "4,2"}, 4),  # one count per nesting level: the first is ours
    ({"SOFTLABELS_THREADS": "2", "OMP_NUM_THREADS": "3"}, 2),
])
def test_requested_threads_follows_the_documented_order(monkeypatch, env, want):
    for name in THREAD_VARS:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert requested_threads() == want
    assert requested_threads(5) == 5  # --threads beats every variable


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5"])
def test_a_bad_count_is_one_line_naming_the_variable(monkeypatch, value):
    monkeypatch.setenv("SOFTLABELS_THREADS", value)
    with pytest.raises(PipelineError, match=f"SOFTLABELS_THREADS='{value}' is not a positive"):
        requested_threads()


@pytest.mark.slow
def test_the_cli_pins_threads_before_torch_starts():
    # default: one thread, dynamic threading off, exported for the processes it starts
    assert probe() == "1 FALSE FALSE 1"
    assert probe("--threads", "2") == "2 FALSE FALSE 2"
    assert probe(OMP_NUM_THREADS="2") == "2 FALSE FALSE 2"  # a user's setting is respected
    assert probe("--threads", "3", SOFTLABELS_THREADS="2") == "3 FALSE FALSE 3"
    bad = subprocess.run([sys.executable, "-m", "pipeline.cli", "--threads", "0", "inspect",
                          "x"], cwd=REPO, capture_output=True, text=True)
    assert bad.returncode == 2 and "--threads" in bad.stderr
