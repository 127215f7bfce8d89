"""A lock file so two labelers never write one dataset at once.

The lock records host and pid. A lock left by a process that no longer exists on this host is
stale and is taken over (a SIGKILLed labeler cannot clean up after itself); a live one is refused.

On object storage (a `pipeline.io.storage.Store` or URI) there is no exclusive create, so the lock
is advisory: check, then write one object. It still refuses a second labeler that starts after
the first one took the lock, and a lock left by a dead process on this host is taken over.
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
    def __init__(self, directory):
        from pipeline.io.storage import Store

        store = directory if isinstance(directory, Store) else Store(directory)
        self.store = store if store.remote else None  # None: the local O_EXCL lock file
        self.path = store.uri_of(LOCK) if store.remote else Path(store.path()) / LOCK

    def __enter__(self) -> "DirLock":
        me = {"pid": os.getpid(), "host": socket.gethostname()}
        if self.store is not None:
            return self._enter_remote(me)
        self.path.parent.mkdir(parents=True, exist_ok=True)
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

    def _enter_remote(self, me: dict) -> "DirLock":
        if self.store.isfile(LOCK):
            try:
                owner = json.loads(self.store.read_bytes(LOCK) or b"{}")
            except (json.JSONDecodeError, UnicodeDecodeError):
                owner = {}
            self._refuse_if_live(owner, self.store.uri, self.path)
        self.store.write_json(LOCK, me)
        return self

    def _clear_if_stale(self) -> None:
        try:
            owner = json.loads(self.path.read_text() or "{}")
        except (OSError, json.JSONDecodeError):
            owner = {}
        self._refuse_if_live(owner, self.path.parent, self.path)
        self.path.unlink(missing_ok=True)

    @staticmethod
    def _refuse_if_live(owner: dict, where, lock) -> None:
        same_host = owner.get("host") == socket.gethostname()
        if owner and (not same_host or _alive(int(owner.get("pid", -1)))):
            raise PipelineError(f"{where} is locked by pid {owner.get('pid')} on "
                                f"{owner.get('host')}: another labeler is writing it; wait for it "
                                f"or remove {lock} if that process is gone")

    def __exit__(self, *exc) -> None:
        if self.store is not None:
            self.store.remove(LOCK)
            return
        self.path.unlink(missing_ok=True)
