"""The object-storage half of the storage layer: a prefix behind an fsspec URI (`s3://bucket/p`,
`gs://...`, `memory://...`), used only through pipeline/io/storage.py's `Store`.

Why these semantics:
- **Object storage has no rename**, but a PUT is atomic: an object appears whole or not at all
  (a multipart upload appears when it completes). So every write is one whole object: bytes are
  one `pipe`, and a file written through a local path (`writing`) is written to a local
  temporary file and uploaded when it is complete.
- S3-compatible stores are configured through the standard AWS environment (credentials,
  `AWS_DEFAULT_REGION`, `AWS_ENDPOINT_URL` / `AWS_ENDPOINT_URL_S3`); `pipeline --endpoint-url URL`
  sets `AWS_ENDPOINT_URL` for the command (and so for its dask/DataLoader workers).
- Listings are never cached (`use_listings_cache=False`): a labeler must see the objects it just
  wrote, and a rerun the objects a killed run left.
- Every failure (no bucket, no credentials, endpoint down) is one line naming the object
  (`remote_errors`).
- Loaders of weights (safetensors, transformers) need real files, so a model folder is copied once
  into the cache and refreshed only when an object changes (`local_folder`); corpus files are
  never copied but streamed (`ObjectFile.open`).
"""

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from pipeline.errors import PipelineError
from pipeline.io.cache import cache_dir, temporary_dir
from pipeline.io.hashing import sha256_file


def filesystem(uri: str):
    """(fsspec filesystem, path without protocol) for a remote URI."""
    import fsspec

    protocol = uri.split("://", 1)[0].lower()
    options = {"use_listings_cache": False} if protocol in ("s3", "s3a", "gs", "gcs") else {}
    try:
        fs_and_path = fsspec.core.url_to_fs(uri, **options)
    except (ImportError, ValueError) as exc:
        raise PipelineError(f"{uri}: no filesystem for {protocol}:// ({exc}); install its fsspec "
                            "package (s3fs for s3://, gcsfs for gs://)") from None
    if getattr(fs_and_path[0], "async_impl", False):
        _quiet_io_loop()
    return fs_and_path


def _quiet_io_loop() -> None:
    """When the endpoint drops mid-request, aiohttp leaves a cut write task behind whose
    "Task exception was never retrieved" traceback asyncio prints to stderr, above the one-line
    error the same failure already gives (remote_errors). Log those at debug level instead, on
    fsspec's IO loop only (a forked child gets a new loop, hence on every filesystem())."""
    from fsspec.asyn import get_loop

    get_loop().set_exception_handler(_log_io_loop_exception)


def _log_io_loop_exception(loop, context: dict) -> None:
    logging.getLogger(__name__).debug("fsspec IO loop: %s", context.get("message"),
                                      exc_info=context.get("exception"))


@contextlib.contextmanager
def remote_errors(uri: str):
    """Turn storage failures (no bucket, no credentials, endpoint down) into one line."""
    try:
        yield
    except PipelineError:
        raise
    except FileNotFoundError as exc:
        raise PipelineError(f"{uri}: not found ({exc}); check the bucket and prefix") from None
    except Exception as exc:  # botocore/aiohttp raise many unrelated types
        if type(exc).__name__ in ("KeyboardInterrupt", "SystemExit"):
            raise
        if _unreachable(exc):
            raise PipelineError(f"{uri}: object storage unreachable ({type(exc).__name__}: "
                                f"{exc}); check that the server is up and AWS_ENDPOINT_URL "
                                "(--endpoint-url) points at it, then rerun: completed shards "
                                "and checkpoints are kept") from None
        raise PipelineError(f"{uri}: object storage request failed ({type(exc).__name__}: "
                            f"{exc}); check credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY "
                            "or a profile), AWS_DEFAULT_REGION and AWS_ENDPOINT_URL "
                            "(--endpoint-url)") from None


# botocore (its own ConnectionError: EndpointConnectionError, ConnectTimeoutError, ...),
# aiohttp (ClientConnectionError, ServerDisconnectedError) and the builtins, matched by name so
# that no client library has to be imported to recognise its errors.
UNREACHABLE = {"ConnectionError", "ClientConnectionError", "ServerDisconnectedError",
               "ReadTimeoutError", "TimeoutError"}


def _unreachable(exc: BaseException) -> bool:
    """True when the endpoint did not answer (down, refused, timed out) rather than refused us."""
    return any(cls.__name__ in UNREACHABLE for cls in type(exc).__mro__)


class ObjectFolder:
    """A prefix on object storage; `rel` paths below it are POSIX-relative keys."""

    def __init__(self, uri: str):
        self.uri = self.root = str(uri).rstrip("/")
        self.base = filesystem(self.uri)[1].rstrip("/")
        self._fs, self._pid = None, None

    @property
    def fs(self):
        """The fsspec filesystem, made again in a forked child (DataLoader workers): s3fs
        clients are not fork-safe."""
        if self._fs is None or self._pid != os.getpid():
            self._fs, self._pid = filesystem(self.uri)[0], os.getpid()
        return self._fs

    def __getstate__(self) -> dict:  # pickled into dask tasks / spawned workers: no client
        return {**self.__dict__, "_fs": None, "_pid": None}

    def key(self, rel: str = "") -> str:
        """`bucket/key`: the path the fsspec filesystem takes."""
        return f"{self.base}/{rel}" if rel else self.base

    def locate(self, rel: str = "") -> str:
        return f"{self.uri}/{rel}" if rel else self.uri

    def local_path(self, rel: str = "") -> None:
        return None  # no object is a local file

    def guard(self, rel: str = ""):
        return remote_errors(self.locate(rel))

    def check_resolved(self, rel: str) -> bool:
        return True  # no links on object storage: the name is the whole story

    # -- reads ---------------------------------------------------------------------------------

    def _call(self, method: str, rel: str, *args, **kwargs):
        """fs.method(key of rel, ...) with its failures as one line naming the object."""
        with self.guard(rel):
            return getattr(self.fs, method)(self.key(rel), *args, **kwargs)

    def exists(self, rel: str = "") -> bool:
        return self._call("exists", rel)

    def isdir(self, rel: str = "") -> bool:
        return self._call("isdir", rel)

    def isfile(self, rel: str) -> bool:
        return self._call("isfile", rel)

    def size(self, rel: str) -> int:
        return int(self._call("size", rel))

    def read_bytes(self, rel: str) -> bytes:
        return self._call("cat_file", rel)

    def open(self, rel: str, mode: str = "rb"):
        return self._call("open", rel, mode)

    input_file = open  # Parquet reads the footer, then only the row groups asked for

    def listdir(self, rel: str = "") -> list[str]:
        with self.guard(rel):
            if not self.fs.isdir(self.key(rel)):
                return []
            return sorted(PurePosixPath(p.rstrip("/")).name
                          for p in self.fs.ls(self.key(rel), detail=False))

    def walk(self) -> list[str]:
        with self.guard():
            if not self.fs.isdir(self.base):
                return []
            return sorted(PurePosixPath(p).relative_to(self.base).as_posix()
                          for p in self.fs.find(self.base))

    def get_file(self, rel: str, dest: Path) -> None:
        """Download to dest.tmp, then rename: never a half file under dest's name."""
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".tmp")
        self._call("get_file", rel, str(tmp))
        os.replace(tmp, dest)

    def fetch(self, rel: str, dest: Path, sha256: str | None = None) -> Path:
        """Download `rel` to `dest` unless dest already holds `sha256`; a missing object leaves
        dest as it is (the caller checks it)."""
        if dest.is_file() and sha256 and sha256_file(dest) == sha256:
            return dest
        if self.isfile(rel):
            self.get_file(rel, dest)
        return dest

    def local_folder(self) -> Path:
        """A local copy of the folder's top-level files, for loaders that need real files
        (torch, safetensors, transformers). Files are re-downloaded only when their size or ETag
        changed; the copy lives under cache_dir()/remote/<sha256 of the URI>."""
        dest = cache_dir() / "remote" / hashlib.sha256(self.uri.encode()).hexdigest()[:32]
        dest.mkdir(parents=True, exist_ok=True)
        with self.guard():
            if not self.fs.isdir(self.base):
                raise PipelineError(f"{self.uri} does not exist (no objects under that prefix)")
            listing = {PurePosixPath(i["name"]).name: i
                       for i in self.fs.ls(self.base, detail=True) if i.get("type") == "file"}
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
            self.get_file(name, dest / name)
            marker.write_text(stamp)
        return dest

    # -- writes --------------------------------------------------------------------------------

    def makedirs(self, rel: str = "") -> None:
        pass  # object storage has no folders: keys imply them

    def write_bytes(self, rel: str, data: bytes) -> None:
        self._call("pipe_file", rel, data)

    def put_file(self, local: str | Path, rel: str) -> None:
        with self.guard(rel):
            self.fs.put_file(str(local), self.key(rel))

    @contextlib.contextmanager
    def writing(self, rel: str) -> Iterator[Path]:
        with temporary_dir() as tmp_dir:
            local = Path(tmp_dir) / PurePosixPath(rel).name
            yield local
            self.put_file(local, rel)

    def create_new(self, rel: str, data: bytes) -> bool:
        """No exclusive create on object storage: check, then write (advisory)."""
        if self.isfile(rel):
            return False
        self.write_bytes(rel, data)
        return True

    def remove(self, rel: str) -> None:
        with self.guard(rel):
            if self.fs.exists(self.key(rel)):
                self.fs.rm(self.key(rel), recursive=True)


class ObjectFile:
    """One object below an ObjectFolder with the few Path methods the corpus readers use
    (suffix, open, read_bytes, relative_to), so local and remote corpora share one code path."""

    def __init__(self, folder: ObjectFolder, rel: str):
        self.folder, self.rel = folder, rel
        self.suffix = PurePosixPath(rel).suffix

    def open(self, mode: str = "rb"):
        return self.folder.open(self.rel, mode)

    def read_bytes(self) -> bytes:
        return self.folder.read_bytes(self.rel)

    def stamp(self) -> list:
        """[size, ETag (or last-modified)]: what tells a changed object without reading it
        (incremental labeling, pipeline/labeling/changes.py)."""
        info = self.folder._call("info", self.rel)
        tag = next((info[k] for k in ("ETag", "etag", "LastModified", "mtime") if info.get(k)), "")
        return [int(info.get("size") or 0), str(tag)]

    def is_relative_to(self, other) -> bool:
        return other is self.folder

    def relative_to(self, other) -> PurePosixPath:
        return PurePosixPath(self.rel)

    def __str__(self) -> str:
        return self.folder.locate(self.rel)


def find_object_files(uri: str) -> tuple[ObjectFolder, list[ObjectFile]] | None:
    """(root folder, sorted files below it) of a remote object, prefix (recursively) or glob;
    None when nothing matches."""
    fs, path = filesystem(uri)
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
    if not files:
        return None
    folder = ObjectFolder(f"{uri.split('://', 1)[0]}://{root}")
    return folder, [ObjectFile(folder, PurePosixPath(f).relative_to(folder.base).as_posix())
                    for f in files]
