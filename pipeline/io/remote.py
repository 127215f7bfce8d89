"""Remote objects seen through local eyes: cached copies of remote model folders, and remote
corpus files with the few Path methods the corpus readers use.

Loaders of weights (safetensors, transformers) need real files, so a model folder on object
storage is copied once into the cache and refreshed only when an object changes. Corpora are
never copied: their files are streamed through `RemoteFile.open`.
"""

import hashlib
import json
from pathlib import Path, PurePosixPath

from pipeline.errors import PipelineError
from pipeline.io.storage import Store, cache_dir, filesystem, remote_errors


def local_copy(uri: str) -> Path:
    """A local copy of a remote folder's top-level files, for loaders that need real files
    (torch, safetensors, transformers). Files are re-downloaded only when their size or ETag
    changed; the copy lives under cache_dir()/remote/<sha256 of the URI>."""
    store = Store(uri)
    dest = cache_dir() / "remote" / hashlib.sha256(store.uri.encode()).hexdigest()[:32]
    dest.mkdir(parents=True, exist_ok=True)
    with remote_errors(store.uri):
        if not store.fs.isdir(store.base):
            raise PipelineError(f"{uri} does not exist (no objects under that prefix)")
        listing = {PurePosixPath(i["name"]).name: i
                   for i in store.fs.ls(store.base, detail=True) if i.get("type") == "file"}
    for stale in dest.iterdir():  # gone from the folder: gone from the copy
        name = stale.name[1:-len(".source")] if stale.name.endswith(".source") else stale.name
        if name not in listing:
            stale.unlink()
    for name, info in sorted(listing.items()):
        stamp = json.dumps([info.get("size"), str(info.get("ETag") or info.get("etag") or
                                                  info.get("mtime") or "")])
        marker = dest / f".{name}.source"
        if (dest / name).is_file() and marker.is_file() and marker.read_text() == stamp:
            continue
        store.get_file(name, dest / name)
        marker.write_text(stamp)
    return dest


class RemoteFile:
    """A file on object storage with the few Path methods the corpus readers use (suffix, name,
    open, read_bytes, relative_to), so local and remote corpora share one code path."""

    def __init__(self, fs, path: str, protocol: str):
        self.fs, self.path, self.protocol = fs, path.rstrip("/"), protocol
        self._pure = PurePosixPath(self.path)

    @property
    def suffix(self) -> str:
        return self._pure.suffix

    @property
    def name(self) -> str:
        return self._pure.name

    @property
    def parent(self) -> "RemoteFile":
        return RemoteFile(self.fs, str(self._pure.parent), self.protocol)

    def open(self, mode: str = "rb"):
        with remote_errors(str(self)):
            return self.fs.open(self.path, mode)

    def read_bytes(self) -> bytes:
        with remote_errors(str(self)):
            return self.fs.cat_file(self.path)

    def is_relative_to(self, other: "RemoteFile") -> bool:
        return self._pure.is_relative_to(other._pure)

    def relative_to(self, other: "RemoteFile") -> PurePosixPath:
        return self._pure.relative_to(other._pure)

    def __str__(self) -> str:
        return f"{self.protocol}://{self.path}"

    def __lt__(self, other: "RemoteFile") -> bool:
        return self.path < other.path


def remote_files(uri: str) -> tuple[RemoteFile, list[RemoteFile]]:
    """(root, files) of a remote corpus URI: a file, a prefix (recursively) or a glob; ([], ...)
    when nothing matches."""
    fs, path = filesystem(uri)
    protocol = uri.split("://", 1)[0]
    with remote_errors(uri):
        if any(ch in path for ch in "*?["):
            files = sorted(p for p in fs.glob(path) if fs.isfile(p))
            root = path.split("*")[0].split("?")[0].split("[")[0].rsplit("/", 1)[0]
        elif fs.isdir(path):
            files, root = sorted(fs.find(path)), path
        elif fs.isfile(path):
            files, root = [path], path.rsplit("/", 1)[0]
        else:
            files, root = [], path
    return RemoteFile(fs, root, protocol), [RemoteFile(fs, f, protocol) for f in files]
