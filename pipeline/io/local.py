"""The local-disk half of the storage layer: a folder on this machine (used only through
pipeline/io/storage.py's `Store`, which gives it and the object-storage half one interface).

Why these semantics: every whole-file write is `tmp → fsync → rename → fsync dir`
(pipeline/io/atomic.py), so a reader, or a rerun after a crash, sees the old file or the new one,
never half of one; a file written through a local path (`writing`) is that same `NAME.tmp`
renamed into place.
"""

import contextlib
import glob as globlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from pipeline.io import atomic


def local_path(uri: str | Path) -> Path:
    """A plain path, or a `file://` URI, as a Path."""
    text = str(uri)
    return Path(text.split("://", 1)[1]) if text.startswith("file://") else Path(text)


class LocalFolder:
    """A folder on the local disk; `rel` paths below it are POSIX-relative."""

    def __init__(self, root: str | Path):
        self.root = local_path(root)
        self.uri = str(self.root)

    def locate(self, rel: str = "") -> Path:
        return self.root / rel if rel else self.root

    local_path = locate  # every file here is a real file
    input_file = locate  # libraries that take a path (pyarrow) read it natively

    def guard(self, rel: str = ""):
        """Local errors (OSError) keep their own type: callers handle them."""
        return contextlib.nullcontext()

    def check_resolved(self, rel: str) -> bool:
        """True when `rel` stays inside the folder after links are followed."""
        return (self.root / rel).resolve().is_relative_to(self.root.resolve())

    # -- reads ---------------------------------------------------------------------------------

    def exists(self, rel: str = "") -> bool:
        return self.locate(rel).exists()

    def isdir(self, rel: str = "") -> bool:
        return self.locate(rel).is_dir()

    def isfile(self, rel: str) -> bool:
        return self.locate(rel).is_file()

    def size(self, rel: str) -> int:
        return self.locate(rel).stat().st_size

    def read_bytes(self, rel: str) -> bytes:
        return self.locate(rel).read_bytes()

    def open(self, rel: str, mode: str = "rb"):
        return open(self.locate(rel), mode)

    def listdir(self, rel: str = "") -> list[str]:
        p = self.locate(rel)
        return sorted(c.name for c in p.iterdir()) if p.is_dir() else []

    def walk(self) -> list[str]:
        root = self.root
        if not root.is_dir():
            return []
        found = []
        for here, dirs, names in os.walk(root):
            rel = Path(here).relative_to(root)
            links = [d for d in dirs if (Path(here) / d).is_symlink()]
            found += [(rel / n).as_posix() for n in names + links]
            if not dirs and not names and here != str(root):
                found.append(rel.as_posix() + "/")
        return sorted(found)

    def get_file(self, rel: str, dest: Path) -> None:
        Path(dest).parent.mkdir(parents=True, exist_ok=True)
        atomic.copy_file(self.locate(rel), dest)

    def fetch(self, rel: str, dest: Path, sha256: str | None = None) -> Path:
        return self.locate(rel)  # already a real file: no copy

    def local_folder(self) -> Path:
        return self.root

    # -- writes --------------------------------------------------------------------------------

    def makedirs(self, rel: str = "") -> None:
        self.locate(rel).mkdir(parents=True, exist_ok=True)

    def write_bytes(self, rel: str, data: bytes) -> None:
        self.locate(rel).parent.mkdir(parents=True, exist_ok=True)
        atomic.write_bytes(self.locate(rel), data)

    def put_file(self, local: str | Path, rel: str) -> None:
        dest = self.locate(rel)
        if Path(local).resolve() == dest.resolve():
            return
        dest.parent.mkdir(parents=True, exist_ok=True)
        atomic.copy_file(local, dest)

    @contextlib.contextmanager
    def writing(self, rel: str) -> Iterator[Path]:
        self.locate(rel).parent.mkdir(parents=True, exist_ok=True)
        with atomic.replacing(self.locate(rel)) as tmp:
            yield tmp

    def create_new(self, rel: str, data: bytes) -> bool:
        """Exclusive create (O_EXCL): False when the file already exists."""
        path = self.locate(rel)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return True

    def remove(self, rel: str) -> None:
        p = self.locate(rel)
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)


def find_local_files(uri: str) -> tuple[Path, list[Path]] | None:
    """(root, sorted files) of a local file, folder (recursively) or glob; None when the path
    does not exist (a glob that matches nothing gives no files)."""
    path = Path(uri)
    if any(ch in uri for ch in "*?["):
        files = sorted(Path(p) for p in globlib.glob(uri, recursive=True) if Path(p).is_file())
        return (Path(globlib.escape(uri).split("*")[0]).parent if files else path.parent), files
    if path.is_dir():
        return path, sorted(p for p in path.rglob("*") if p.is_file())
    if path.is_file():
        return path.parent, [path]
    return None
