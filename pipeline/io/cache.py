"""Local scratch space: the cache (copies of remote model folders and tokenizers, staging copies
of remote run folders) and temporary folders.

A temporary folder is removed when its `with` ends, but not when its process is SIGKILLed (a
scheduler's timeout, the OOM killer): the labeler's plan spill holds every planned token, so a
nightly job killed each night would fill /tmp. So each folder carries an owner mark (host, pid
and the process's start time), and creating one first removes the folders of the same prefix whose
owner process is gone — only folders that carry our mark, never anything else in /tmp.
"""

import json
import os
import shutil
import socket
import tempfile
from pathlib import Path

OWNER_MARK = ".softlabels-owner"  # {"host", "pid", "start"}: the process that made the folder

CACHE_ENV = "SOFTLABELS_CACHE"


def cache_dir() -> Path:
    """$SOFTLABELS_CACHE or ~/.cache/softlabel-pipeline."""
    root = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "softlabel-pipeline"
    return Path(root)


def temporary_dir(prefix: str = "softlabels-") -> tempfile.TemporaryDirectory:
    """A self-removing folder under the system temp dir, marked as this process's."""
    remove_orphans(prefix)
    tmp = tempfile.TemporaryDirectory(prefix=prefix)
    mark = {"host": socket.gethostname(), "pid": os.getpid(), "start": process_start(os.getpid())}
    (Path(tmp.name) / OWNER_MARK).write_text(json.dumps(mark))
    return tmp


def remove_orphans(prefix: str) -> list[Path]:
    """Remove temp folders named `prefix*` whose mark names a process that no longer runs."""
    removed = []
    for folder in Path(tempfile.gettempdir()).glob(f"{prefix}*"):
        try:
            owner = json.loads((folder / OWNER_MARK).read_text())
            pid, start, host = int(owner["pid"]), owner["start"], owner["host"]
        except (OSError, ValueError, KeyError, TypeError):
            continue  # no readable mark: not provably ours, or not ours to judge
        if host != socket.gethostname():
            continue  # a /tmp shared with another machine or container: its pids are not ours
        if start is None or process_start(pid) == start:
            continue  # its process still runs (or this system cannot tell)
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed


def process_start(pid: int) -> int | None:
    """A process's start time in clock ticks since boot (/proc), which tells a reused pid
    apart; None where there is no /proc or no such process."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[19])
    except (OSError, IndexError, ValueError):
        return None
