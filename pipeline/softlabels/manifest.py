"""manifest.json: the dataset's index and commit point, written last and atomically.

A dataset without a manifest is not a dataset (a labeler was interrupted); readers never look at
shards the manifest does not list, and never at paths outside the dataset directory.
"""

import contextlib
import gc
import json
import re

from pipeline.errors import PipelineError
from pipeline.io.storage import OutsideFolder, Store
from pipeline.softlabels.layout import MANIFEST, PLAN, SHARDS_DIR, version_relpath
from pipeline.softlabels.schema import FORMAT_MAJOR


def shard_rel(store: Store, rel: str) -> str:
    """A manifest's shard path, refused when it leaves the dataset (another folder, bucket or
    URL): the storage layer's one "stays inside this folder" rule, worded for the manifest."""
    try:
        return store.inside(rel)
    except OutsideFolder:
        raise PipelineError(f"manifest shard path {rel!r} escapes the dataset directory "
                            f"{store.root}; refusing an untrusted manifest") from None


@contextlib.contextmanager
def paused_gc():
    """The cyclic garbage collector paused: a 10^5-shard manifest is ~10^6 new containers, and
    the collector's passes over them would double the time to load it (none is cyclic)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


_CANONICAL = re.compile(rf"{SHARDS_DIR}/[A-Za-z0-9_-]+/part-\d{{5}}\.parquet")


def listed_rel(store: Store, rel) -> str:
    """`shard_rel` without touching the file system for the names the labeler writes (already
    normal, and inside): at 10^5 shards resolving every path costs seconds. Links are checked
    by `shard_rel` when a shard is opened, before any of it is read."""
    if isinstance(rel, str) and _CANONICAL.fullmatch(rel):
        return rel
    return shard_rel(store, rel)


def load_manifest(root, version: int | None = None) -> dict:
    """The manifest of a dataset folder or URI (`root` may be a pipeline.io.storage.Store):
    the latest version, or with `version` that committed version (format 1.4)."""
    store = Store.of(root)
    manifest = _load_latest(store)
    return manifest if version is None else _load_version(store, manifest, version)


def committed_version(manifest: dict) -> int | None:
    """The version number manifest.json commits (None: a dataset without versions)."""
    number = (manifest.get("version") or {}).get("number")
    return number if isinstance(number, int) and not isinstance(number, bool) else None


def _load_version(store: Store, latest: dict, version: int) -> dict:
    """Version N as committed: only numbers up to the one manifest.json commits are read (a
    higher one is a run that did not finish)."""
    current = committed_version(latest)
    if current is None:
        raise PipelineError(f"dataset {store.uri} has no versions (it was labeled without "
                            "--incremental); leave --version out")
    if not 1 <= version <= current:
        raise PipelineError(f"dataset {store.uri} has versions 1 to {current}, not {version}; "
                            "see `pipeline inspect DATASET --versions`")
    rel = version_relpath(version)
    if not store.isfile(rel):
        raise PipelineError(f"version {version} of {store.uri} was removed (`pipeline gc`); "
                            "see `pipeline inspect DATASET --versions`")
    return _read_manifest(store, rel)


def _load_latest(store: Store) -> dict:
    if not store.isdir():  # a typo, not an unfinished dataset
        what = "is a file, not a folder" if store.exists() else "does not exist"
        raise PipelineError(f"dataset {store.uri} {what}: pass the --out folder of a "
                            "`pipeline label` run")
    if not store.isfile(MANIFEST):
        hint = (" (a labeling run did not finish: rerun `pipeline label` to complete it)"
                if store.exists(PLAN) else "")
        raise PipelineError(f"{store.uri} is not a soft-label dataset: no {MANIFEST}{hint}")
    return _read_manifest(store, MANIFEST)


def _read_manifest(store: Store, rel: str) -> dict:
    """One manifest file (the latest or a version's), parsed and shape-checked."""
    path = store.locate(rel)
    try:
        with paused_gc():
            manifest = json.loads(store.read_bytes(rel))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PipelineError(f"{path} is not valid JSON ({exc}); the dataset is corrupt") from exc
    check_manifest_shape(manifest, path)
    return manifest


def check_manifest_shape(manifest, path) -> None:
    if not isinstance(manifest, dict):
        raise PipelineError(f"{path}: manifest must be a JSON object")
    version = str(manifest.get("format_version", ""))
    try:
        major = int(version.split(".")[0])
    except ValueError:
        raise PipelineError(f"{path}: format_version {version!r} is missing or malformed") from None
    if major != FORMAT_MAJOR:
        raise PipelineError(f"{path}: format_version {version} is not supported (this reader "
                            f"reads major version {FORMAT_MAJOR}); upgrade softlabel-pipeline")
    for key in ("labels", "tokenizer", "splits"):
        if not isinstance(manifest.get(key), dict):
            raise PipelineError(f"{path}: manifest field {key!r} is missing or not an object")
    for split, shards in manifest["splits"].items():
        if not isinstance(shards, list):
            raise PipelineError(f"{path}: splits.{split} must be a list of shards")
        for s in shards:
            if not isinstance(s, dict) or not {"path", "rows", "sha256", "bytes"} <= set(s):
                raise PipelineError(f"{path}: a shard entry of split {split!r} lacks "
                                    "path/rows/sha256/bytes")
