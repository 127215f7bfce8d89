"""Where datasets, corpora, models and reports live: the local disk or object storage (fsspec).

Every path the CLI takes may be a local path or an fsspec URI (`s3://bucket/prefix`,
`gs://...`, `memory://...`). `Store(root)` is one such directory with the few operations the
stages need (read/write bytes and JSON, exists, size, listing, streaming sha256, removal);
pipeline/io/remote.py makes local copies of remote model folders and reads remote corpus files.

Why these semantics:
- **Local paths behave exactly as before**: a write is `tmp → fsync → rename → fsync dir`, so a
  reader sees the old file or the new one, never half of one.
- **Object storage has no rename**, but a PUT is atomic: an object appears whole or not at all
  (a multipart upload appears when it completes). So remote writes are always whole objects: a
  shard is written to a local temp file and uploaded (`put_file`), JSON is one `pipe`. The
  manifest stays the commit point: it is written last, as one object.
- S3-compatible stores are configured through the standard AWS environment (credentials,
  `AWS_DEFAULT_REGION`, `AWS_ENDPOINT_URL` / `AWS_ENDPOINT_URL_S3`); `pipeline --endpoint-url URL`
  sets `AWS_ENDPOINT_URL` for the command (and so for its dask/DataLoader workers).
- Listings are never cached (`use_listings_cache=False`): a labeler must see the objects it just
  wrote, and a rerun the objects a killed run left.
"""

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path, PurePosixPath

from pipeline.errors import PipelineError
from pipeline.io import atomic

LOCAL_PROTOCOLS = ("file", "local")
CACHE_ENV = "SOFTLABELS_CACHE"


def is_remote(uri: str | Path) -> bool:
    """True for `proto://...` URIs other than file://; a plain path is local."""
    text = str(uri)
    if "://" not in text:
        return False
    return text.split("://", 1)[0].lower() not in LOCAL_PROTOCOLS


def local_path(uri: str | Path) -> Path:
    text = str(uri)
    return Path(text.split("://", 1)[1]) if text.startswith("file://") else Path(text)


def set_endpoint_url(url: str | None) -> None:
    """`--endpoint-url`: the S3 endpoint for this process and the workers it starts."""
    if url:
        os.environ["AWS_ENDPOINT_URL"] = url


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


def safe_rel(rel: str, root: str) -> str:
    """A relative path that cannot leave `root`: no URL, no absolute path, no `..`."""
    pure = PurePosixPath(rel)
    if not isinstance(rel, str) or not rel or "://" in rel or pure.is_absolute() \
            or ".." in pure.parts or "\\" in rel:
        raise PipelineError(f"manifest shard path {rel!r} escapes the dataset directory {root}; "
                            "refusing an untrusted manifest")
    return pure.as_posix()


class Store:
    """A directory on the local disk or on object storage; paths below it are POSIX-relative."""

    def __init__(self, root: str | Path):
        self.uri = str(root).rstrip("/") if is_remote(root) else str(local_path(root))
        self.remote = is_remote(root)
        self._fs, self._pid = None, None
        if self.remote:
            self.base = filesystem(self.uri)[1].rstrip("/")
        else:
            self.base = local_path(root)

    @property
    def fs(self):
        """The fsspec filesystem, made again in a forked child (DataLoader workers): s3fs
        clients are not fork-safe."""
        if not self.remote:
            return None
        if self._fs is None or self._pid != os.getpid():
            self._fs, self._pid = filesystem(self.uri)[0], os.getpid()
        return self._fs

    def __getstate__(self) -> dict:  # pickled into dask tasks / spawned workers: no client
        return {**self.__dict__, "_fs": None, "_pid": None}

    def __str__(self) -> str:
        return self.uri

    # -- names ---------------------------------------------------------------------------------

    def path(self, rel: str = "") -> Path | str:
        """The full path of `rel`: a Path locally, `bucket/key` on the remote filesystem."""
        if not self.remote:
            return self.base / rel if rel else self.base
        return f"{self.base}/{rel}" if rel else self.base

    def uri_of(self, rel: str = "") -> str:
        return f"{self.uri}/{rel}" if rel else self.uri

    # -- reads ---------------------------------------------------------------------------------

    def exists(self, rel: str = "") -> bool:
        if not self.remote:
            return self.path(rel).exists()
        with remote_errors(self.uri_of(rel)):
            return self.fs.exists(self.path(rel))

    def isdir(self, rel: str = "") -> bool:
        if not self.remote:
            return self.path(rel).is_dir()
        with remote_errors(self.uri_of(rel)):
            return self.fs.isdir(self.path(rel))

    def isfile(self, rel: str) -> bool:
        if not self.remote:
            return self.path(rel).is_file()
        with remote_errors(self.uri_of(rel)):
            return self.fs.isfile(self.path(rel))

    def size(self, rel: str) -> int:
        if not self.remote:
            return self.path(rel).stat().st_size
        with remote_errors(self.uri_of(rel)):
            return int(self.fs.size(self.path(rel)))

    def read_bytes(self, rel: str) -> bytes:
        if not self.remote:
            return self.path(rel).read_bytes()
        with remote_errors(self.uri_of(rel)):
            return self.fs.cat_file(self.path(rel))

    def read_text(self, rel: str) -> str:
        return self.read_bytes(rel).decode()

    def open(self, rel: str, mode: str = "rb"):
        if not self.remote:
            return open(self.path(rel), mode)
        with remote_errors(self.uri_of(rel)):
            return self.fs.open(self.path(rel), mode)

    def sha256(self, rel: str, chunk: int = 1 << 20) -> str:
        """Streamed: a shard is never held in memory to be hashed."""
        h = hashlib.sha256()
        with remote_errors(self.uri_of(rel)), self.open(rel, "rb") as f:
            while block := f.read(chunk):
                h.update(block)
        return h.hexdigest()

    def listdir(self, rel: str = "") -> list[str]:
        """Names directly below `rel` (files and folders); [] when it does not exist."""
        if not self.remote:
            p = self.path(rel)
            return sorted(c.name for c in p.iterdir()) if p.is_dir() else []
        with remote_errors(self.uri_of(rel)):
            if not self.fs.isdir(self.path(rel)):
                return []
            return sorted(PurePosixPath(p.rstrip("/")).name
                          for p in self.fs.ls(self.path(rel), detail=False))

    def walk(self) -> list[str]:
        """Every entry below the root, relative and sorted: files, links (never followed) and
        empty folders (these end in "/"; object storage has none); [] when the root is missing."""
        if self.remote:
            with remote_errors(self.uri):
                if not self.fs.isdir(self.base):
                    return []
                return sorted(PurePosixPath(p).relative_to(self.base).as_posix()
                              for p in self.fs.find(self.base))
        root = self.base
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

    # -- writes --------------------------------------------------------------------------------

    def makedirs(self, rel: str = "") -> None:
        if not self.remote:  # object storage has no folders: keys imply them
            self.path(rel).mkdir(parents=True, exist_ok=True)

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Atomic: local tmp → fsync → rename → fsync dir; remote one PUT (one whole object)."""
        if not self.remote:
            self.path(rel).parent.mkdir(parents=True, exist_ok=True)
            return atomic.write_bytes(self.path(rel), data)
        with remote_errors(self.uri_of(rel)):
            self.fs.pipe_file(self.path(rel), data)

    def write_json(self, rel: str, obj) -> None:
        self.write_bytes(rel, json.dumps(obj, indent=2, sort_keys=True).encode())

    def put_file(self, local: str | Path, rel: str) -> None:
        """Copy a finished local file in as `rel`, atomically (remote: one upload)."""
        if not self.remote:
            dest = self.path(rel)
            if Path(local).resolve() == dest.resolve():
                return
            dest.parent.mkdir(parents=True, exist_ok=True)
            return atomic.copy_file(local, dest)
        with remote_errors(self.uri_of(rel)):
            self.fs.put_file(str(local), self.path(rel))

    def get_file(self, rel: str, local: str | Path) -> None:
        """Download `rel` to a local file (written as .tmp, then renamed)."""
        local = Path(local)
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(local.name + ".tmp")
        if not self.remote:
            shutil.copyfile(self.path(rel), tmp)
        else:
            with remote_errors(self.uri_of(rel)):
                self.fs.get_file(self.path(rel), str(tmp))
        os.replace(tmp, local)

    def remove(self, rel: str) -> None:
        """Delete a file or a whole folder below the root; missing is fine."""
        if not self.remote:
            p = self.path(rel)
            if p.is_dir():
                shutil.rmtree(p)
            else:
                p.unlink(missing_ok=True)
            return
        with remote_errors(self.uri_of(rel)):
            if self.fs.exists(self.path(rel)):
                self.fs.rm(self.path(rel), recursive=True)


def cache_dir() -> Path:
    """Local copies of remote model folders: $SOFTLABELS_CACHE or ~/.cache/softlabel-pipeline."""
    root = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "softlabel-pipeline"
    return Path(root)


def temporary_dir(prefix: str = "softlabels-") -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix=prefix)
