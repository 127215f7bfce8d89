"""Temporary folders of SIGKILLed processes are removed by the next run, and nothing else is."""

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from pipeline.io.cache import OWNER_MARK, process_start, remove_orphans, temporary_dir

PREFIX = f"softlabels-testcache-{os.getpid()}-"


@pytest.fixture
def root():
    yield Path(tempfile.gettempdir())
    for left in Path(tempfile.gettempdir()).glob(f"{PREFIX}*"):
        subprocess.run(["rm", "-rf", str(left)], check=False)


def folder(root: Path, name: str, mark: dict | str | None) -> Path:
    path = root / f"{PREFIX}{name}"
    path.mkdir()
    (path / "tokens.npy").write_bytes(b"x" * 10)
    if mark is not None:
        (path / OWNER_MARK).write_text(mark if isinstance(mark, str) else json.dumps(mark))
    return path


def test_the_folder_of_a_sigkilled_process_is_removed_by_the_next_one(root):
    """A real child makes a folder and is SIGKILLed inside its `with`: the folder stays behind;
    the next temporary_dir of the same prefix removes it."""
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom pipeline.io.cache import temporary_dir\n"
         f"t = temporary_dir({PREFIX!r})\nprint(t.name, flush=True)\ntime.sleep(600)"],
        stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[3])
    left = Path(child.stdout.readline().strip())
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert (left / OWNER_MARK).is_file()
    with temporary_dir(PREFIX) as mine:
        assert not left.exists()
        assert Path(mine).is_dir()
    assert not Path(mine).exists()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc (Linux)")
def test_only_folders_provably_of_a_dead_process_on_this_host_are_removed(root):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead_start = process_start(dead.pid)
    dead.wait()
    here = socket.gethostname()
    me = {"host": here, "pid": os.getpid(), "start": process_start(os.getpid())}
    gone = [folder(root, "gone", {"host": here, "pid": dead.pid, "start": dead_start or 1}),
            # our pid, another start time: the pid was reused, its owner is gone
            folder(root, "pid-reused", {**me, "start": me["start"] - 1})]
    kept = [folder(root, "alive", me),
            folder(root, "no-mark", None),
            folder(root, "bad-mark", "{not json"),
            folder(root, "other-host", {**me, "host": here + "-elsewhere", "pid": dead.pid}),
            folder(root, "cannot-tell", {"host": here, "pid": dead.pid, "start": None})]
    assert sorted(remove_orphans(PREFIX)) == sorted(gone)
    assert not any(path.exists() for path in gone)
    for path in kept:
        assert (path / "tokens.npy").is_file(), path.name
