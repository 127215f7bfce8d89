"""Atomic local writes, defined once: `tmp → fsync → rename → fsync dir`.

A reader (or a rerun after a crash) sees the old file or the new one, never half of one; a
failed write (disk full, quota, read-only) leaves no `.tmp` behind and is one line naming the
file. Object storage needs none of this (an object appears whole or not at all): the storage
layer (pipeline/io/storage.py) uses these for local folders and whole-object PUTs for URIs.
"""

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from pipeline.errors import PipelineError

TMP_SUFFIX = ".tmp"


def tmp_path(path: Path) -> Path:
    return path.with_name(path.name + TMP_SUFFIX)


@contextlib.contextmanager
def replacing(path: str | Path, what: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `path` to write (a file or a whole folder); on success it is
    fsynced and renamed onto `path`, on failure removed. `what` names it in the error line."""
    path = Path(path)
    tmp = tmp_path(path)
    _remove(tmp)
    try:
        yield tmp
        for f in (sorted(tmp.iterdir()) if tmp.is_dir() else [tmp]):
            fsync_file(f)
        if tmp.is_dir():
            _remove(path)  # a folder cannot be renamed onto a non-empty one
        os.replace(tmp, path)
    except OSError as exc:  # disk full, quota, read-only: one line, and no half-written .tmp
        with contextlib.suppress(OSError):
            _remove(tmp)
        raise PipelineError(f"writing {what or path} failed: {exc.strerror or exc} (disk full? "
                            "free space and rerun)") from exc
    except BaseException:
        with contextlib.suppress(OSError):
            _remove(tmp)
        raise
    fsync_dir(path.parent)


def write_bytes(path: str | Path, data: bytes) -> None:
    with replacing(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def write_json(path: str | Path, obj) -> None:
    write_bytes(path, json.dumps(obj, indent=2, sort_keys=True).encode())


def copy_file(src: str | Path, dest: str | Path) -> None:
    with replacing(dest) as tmp:
        shutil.copyfile(src, tmp)


def fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
