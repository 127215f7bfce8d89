"""A lock file so two labelers never write one dataset at once.

The lock records host and pid. A lock left by a process that no longer exists on this host is
stale and is taken over (a SIGKILLed labeler cannot clean up after itself); a live one is refused.

The lock is taken with the store's `create_new` (pipeline/io/storage.py): an exclusive create on
the local disk. Object storage has no exclusive create, so there the lock is advisory (check,
then write one object): it still refuses a second labeler that starts after the first one took
the lock, and a lock left by a dead process on this host is taken over.
"""

import json
import os
import socket

from pipeline.errors import PipelineError
from pipeline.io.storage import Store

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
    def __init__(self, directory):
        self.store = Store.of(directory)
        self.path = self.store.locate(LOCK)

    def __enter__(self) -> "DirLock":
        me = json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode()
        for _ in range(2):
            if self.store.create_new(LOCK, me):
                return self
            self._clear_if_stale()
        raise PipelineError(f"could not take lock {self.path}")

    def _clear_if_stale(self) -> None:
        try:
            owner = json.loads(self.store.read_bytes(LOCK) or b"{}")
        except (OSError, ValueError, UnicodeDecodeError):  # gone meanwhile, or torn
            owner = {}
        self._refuse_if_live(owner if isinstance(owner, dict) else {})
        self.store.remove(LOCK)

    def _refuse_if_live(self, owner: dict) -> None:
        same_host = owner.get("host") == socket.gethostname()
        if owner and (not same_host or _alive(int(owner.get("pid", -1)))):
            raise PipelineError(f"{self.store.root} is locked by pid {owner.get('pid')} on "
                                f"{owner.get('host')}: another labeler is writing it; wait for it "
                                f"or remove {self.path} if that process is gone")

    def __exit__(self, *exc) -> None:
        self.store.remove(LOCK)
