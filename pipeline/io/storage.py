"""Where datasets, corpora, models, run folders and reports live: one `Store` for a folder on the
local disk or on object storage (an fsspec URI: `s3://bucket/prefix`, `gs://...`, `memory://...`).

Every path the CLI takes may be either, and no caller outside pipeline/io asks which: `Store(root)`
decides once, here, and composes a small backend for it (pipeline/io/local.py or
pipeline/io/objects.py; their docstrings say why each behaves as it does). What the store owns:

- **whole-file writes are atomic**: a reader sees the old file or the new one, never half
  (locally tmp → fsync → rename → fsync dir; on object storage one whole-object PUT). The commit
  points of each folder kind (a dataset's manifest, a report's results.json) rely on it.
- **`writing(rel)`** yields a local temporary path for libraries that write files themselves
  (Parquet, PNG) and commits it whole on success: renamed into place, or uploaded.
- **real local files on request**: `local_path` (None where there is none), `fetch` (one file,
  downloaded if need be), `local_folder` (a cached copy of a model folder).
- **the "stays inside this folder" rule** (`inside`), for paths read from untrusted files.
- listing, walking, removal, streamed sha256, and one-line errors for storage failures.
"""

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from pipeline.errors import PipelineError
from pipeline.io.local import LocalFolder, find_local_files
from pipeline.io.objects import ObjectFolder, find_object_files

LOCAL_PROTOCOLS = ("file", "local")


def is_remote(uri: str | Path) -> bool:
    """True for `proto://...` URIs other than file://; a plain path is local."""
    text = str(uri)
    if "://" not in text:
        return False
    return text.split("://", 1)[0].lower() not in LOCAL_PROTOCOLS


def absolute(location: str | Path) -> str:
    """A local path made absolute (a worker may run in another directory; a run's config.toml
    records where its data came from); a URI is absolute already."""
    return str(location) if is_remote(location) else str(Path(location).resolve())


def find_files(uri: str) -> tuple[object, list] | None:
    """(root, sorted files) of a file, folder (recursively) or glob, local or remote; the files
    are Paths, or ObjectFiles with the same few methods. None when nothing is there."""
    return find_object_files(uri) if is_remote(uri) else find_local_files(uri)


class OutsideFolder(PipelineError):
    """A relative path read from an untrusted file names something outside its folder."""


class Store:
    """A folder on the local disk or on object storage; paths below it are POSIX-relative."""

    def __init__(self, root: str | Path):
        self._folder = ObjectFolder(str(root)) if is_remote(root) else LocalFolder(root)

    @classmethod
    def of(cls, root: "str | Path | Store") -> "Store":
        """`root` itself when it is a Store already, else a Store of it."""
        return root if isinstance(root, Store) else cls(root)

    @property
    def uri(self) -> str:
        return self._folder.uri

    @property
    def root(self) -> Path | str:
        """What names the folder to a user: a Path locally, the URI on object storage."""
        return self._folder.root

    def __str__(self) -> str:
        return self.uri

    def locate(self, rel: str = "") -> Path | str:
        """What names `rel` to a user (errors, reports): a Path locally, else its URI."""
        return self._folder.locate(rel)

    def local_path(self, rel: str = "") -> Path | None:
        """`rel` as a path this process can open, hard-link or rename, or None on object storage:
        a capability question for work that needs a real folder (a training run)."""
        return self._folder.local_path(rel)

    def inside(self, rel: str) -> str:
        """`rel` normalised, or OutsideFolder when it could name anything outside this folder: a
        URL, an absolute path, `..`, a backslash, or (locally) a link that resolves elsewhere."""
        if not isinstance(rel, str) or not rel or "://" in rel or "\\" in rel \
                or PurePosixPath(rel).is_absolute() or ".." in PurePosixPath(rel).parts \
                or not self._folder.check_resolved(rel):
            raise OutsideFolder(f"path {rel!r} escapes the folder {self.root}; refusing it")
        return PurePosixPath(rel).as_posix()

    # -- reads ---------------------------------------------------------------------------------

    def exists(self, rel: str = "") -> bool:
        return self._folder.exists(rel)

    def isdir(self, rel: str = "") -> bool:
        return self._folder.isdir(rel)

    def isfile(self, rel: str) -> bool:
        return self._folder.isfile(rel)

    def size(self, rel: str) -> int:
        return self._folder.size(rel)

    def read_bytes(self, rel: str) -> bytes:
        return self._folder.read_bytes(rel)

    def read_text(self, rel: str) -> str:
        return self.read_bytes(rel).decode()

    def open(self, rel: str, mode: str = "rb"):
        return self._folder.open(rel, mode)

    def input_file(self, rel: str):
        """What a library that takes a path or a file object (pyarrow) should read: the local
        path (read natively), or a seekable remote file (ranged reads, never the whole object)."""
        return self._folder.input_file(rel)

    def guard(self, rel: str = ""):
        """A context around reads of `rel` through a file object from `open`: remote failures
        become one PipelineError naming the object; local ones (OSError) keep their type."""
        return self._folder.guard(rel)

    def sha256(self, rel: str, chunk: int = 1 << 20) -> str:
        """Streamed: a shard is never held in memory to be hashed."""
        h = hashlib.sha256()
        with self._folder.guard(rel), self.open(rel, "rb") as f:
            while block := f.read(chunk):
                h.update(block)
        return h.hexdigest()

    def listdir(self, rel: str = "") -> list[str]:
        """Names directly below `rel` (files and folders); [] when it does not exist."""
        return self._folder.listdir(rel)

    def walk(self) -> list[str]:
        """Every entry below the root, relative and sorted: files, links (never followed) and
        empty folders (these end in "/"; object storage has none); [] when the root is missing."""
        return self._folder.walk()

    def get_file(self, rel: str, local: str | Path) -> None:
        """Copy `rel` to a local file, never leaving half a file under its name."""
        self._folder.get_file(rel, Path(local))

    def fetch(self, rel: str, dest: Path, sha256: str | None = None) -> Path:
        """`rel` as a real local file, for readers that need one: the file itself on the local
        disk; on object storage a download to `dest`, skipped when dest already holds `sha256`
        (a missing object leaves dest as it is: check what comes back)."""
        return self._folder.fetch(rel, Path(dest), sha256)

    def local_folder(self) -> Path:
        """The folder as a local directory, for loaders that need real files: itself on the local
        disk, else a cached copy of its top-level files, refreshed when an object changes."""
        return self._folder.local_folder()

    # -- writes --------------------------------------------------------------------------------

    def makedirs(self, rel: str = "") -> None:
        self._folder.makedirs(rel)

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Atomic: local tmp → fsync → rename → fsync dir; remote one PUT (one whole object)."""
        self._folder.write_bytes(rel, data)

    def write_json(self, rel: str, obj) -> None:
        self.write_bytes(rel, json.dumps(obj, indent=2, sort_keys=True).encode())

    def put_file(self, local: str | Path, rel: str) -> None:
        """Copy a finished local file in as `rel`, atomically (remote: one upload)."""
        self._folder.put_file(local, rel)

    @contextlib.contextmanager
    def writing(self, rel: str) -> Iterator[Path]:
        """Yield a local temporary path to write `rel` to; when the block ends without an error
        the file is committed whole (renamed into place, or uploaded), else removed."""
        with self._folder.writing(rel) as tmp:
            yield tmp

    def create_new(self, rel: str, data: bytes) -> bool:
        """Create `rel` only if it does not exist; False if it does. Exclusive on the local disk,
        check-then-write (advisory) on object storage, which has no exclusive create."""
        return self._folder.create_new(rel, data)

    def remove(self, rel: str) -> None:
        """Delete a file or a whole folder below the root; missing is fine."""
        self._folder.remove(rel)


def set_endpoint_url(url: str | None) -> None:
    """`--endpoint-url`: the S3 endpoint for this process and the workers it starts."""
    if url:
        os.environ["AWS_ENDPOINT_URL"] = url
