"""A lock file so two labelers never write one dataset at once.

The lock records host and pid. A lock left by a process that no longer exists on this host is
stale and is taken over (a SIGKILLed labeler cannot clean up after itself); a live one is refused.
"""

import json
import os
import socket
from pathlib import Path

from pipeline.errors import PipelineError

LOCK = ".lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class DirLock:
    def __init__(self, directory: Path):
        self.path = Path(directory) / LOCK

    def __enter__(self) -> "DirLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname()}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                self._clear_if_stale()
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            return self
        raise PipelineError(f"could not take lock {self.path}")

    def _clear_if_stale(self) -> None:
        try:
            owner = json.loads(self.path.read_text() or "{}")
        except (OSError, json.JSONDecodeError):
            owner = {}
        same_host = owner.get("host") == socket.gethostname()
        if owner and (not same_host or _alive(int(owner.get("pid", -1)))):
            raise PipelineError(f"{self.path.parent} is locked by pid {owner.get('pid')} on "
                                f"{owner.get('host')}: another labeler is writing it; wait for it "
                                f"or remove {self.path} if that process is gone")
        self.path.unlink(missing_ok=True)

    def __exit__(self, *exc) -> None:
        self.path.unlink(missing_ok=True)
