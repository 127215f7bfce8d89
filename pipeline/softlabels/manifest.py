"""manifest.json: the dataset's index and commit point, written last and atomically.

A dataset without a manifest is not a dataset (a labeler was interrupted); readers never look at
shards the manifest does not list, and never at paths outside the dataset directory.
"""

import json
from pathlib import Path, PurePosixPath

from pipeline.errors import PipelineError
from pipeline.softlabels.layout import MANIFEST, PLAN
from pipeline.softlabels.schema import FORMAT_MAJOR


def safe_shard_path(root: Path, rel: str) -> Path:
    """Resolve a manifest path, refusing anything that escapes the dataset directory."""
    pure = PurePosixPath(rel)
    if "://" in rel or pure.is_absolute() or ".." in pure.parts or not rel:
        raise PipelineError(f"manifest shard path {rel!r} escapes the dataset directory {root}; "
                            "refusing an untrusted manifest")
    full = (root / pure).resolve()
    if not full.is_relative_to(root.resolve()):
        raise PipelineError(f"manifest shard path {rel!r} resolves outside {root}; refusing")
    return full


def load_manifest(root) -> dict:
    """The manifest of a dataset folder or URI (`root` may be a pipeline.io.storage.Store)."""
    from pipeline.io.storage import Store

    store = root if isinstance(root, Store) else Store(root)
    path = store.uri_of(MANIFEST) if store.remote else store.path(MANIFEST)
    if not store.remote and not store.path().is_dir():  # a typo, not an unfinished dataset
        what = "is a file, not a folder" if store.path().exists() else "does not exist"
        raise PipelineError(f"dataset {store.uri} {what}: pass the --out folder of a "
                            "`pipeline label` run")
    if not store.isfile(MANIFEST):
        hint = (" (a labeling run did not finish: rerun `pipeline label` to complete it)"
                if store.exists(PLAN) else "")
        raise PipelineError(f"{store.uri} is not a soft-label dataset: no {MANIFEST}{hint}")
    try:
        manifest = json.loads(store.read_bytes(MANIFEST))
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
