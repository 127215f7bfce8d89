"""`pipeline ls URI`: the datasets under a prefix, one line each, from their manifests alone.

A receiving team browses a bucket of datasets before it pulls any; reading a shard for that
would cost the bytes it is trying to avoid, so only `manifest.json` files are opened (found by
one listing of the prefix). Folders below `versions/` and `_progress/` are the labeler's own
and are never taken for datasets.
"""

import json
from pathlib import PurePosixPath

from pipeline.errors import PipelineError
from pipeline.io.storage import Store
from pipeline.io.uris import redact
from pipeline.softlabels.layout import MANIFEST, PROGRESS_DIR, SHARDS_DIR, VERSIONS_DIR

COLUMNS = ("name", "teacher", "tokenizer", "labels", "encoding", "format", "rows",
           "positions", "bytes", "created")
_BOOKKEEPING = {VERSIONS_DIR, PROGRESS_DIR, SHARDS_DIR}


def manifest_paths(store: Store) -> list[str]:
    """Relative paths of every dataset manifest below the store's root."""
    return [rel for rel in store.walk()
            if PurePosixPath(rel).name == MANIFEST
            and not _BOOKKEEPING & set(PurePosixPath(rel).parts[:-1])]


def describe(name: str, m: dict) -> dict:
    """One line of `ls` from one manifest (every field a string or a number)."""
    labels, summary = m.get("labels") or {}, m.get("summary") or {}
    encoding = labels.get("logprob_encoding", "-") + (
        f"/{labels['id_encoding']}" if labels.get("id_encoding") else "")
    return {"name": name, "teacher": redact((m.get("teacher") or {}).get("spec", "none")),
            "tokenizer": (m.get("tokenizer") or {}).get("sha256", "-")[:12],
            "labels": f"{labels.get('mode', '-')}/{labels.get('k', '-')}",
            "encoding": encoding, "format": str(m.get("format_version", "-")),
            "rows": summary.get("rows", 0), "positions": summary.get("positions", 0),
            "bytes": summary.get("bytes", 0), "created": m.get("created_at", "-")}


def list_datasets(uri: str) -> list[dict]:
    """One dict per dataset under `uri` (COLUMNS), sorted by name; a manifest that is not JSON
    is listed with its name and `format` "unreadable" rather than stopping the listing."""
    store = Store(uri)
    if not store.isdir():
        raise PipelineError(f"{redact(uri)}: nothing there (no folder or prefix of that name); "
                            "check the URI")
    found = []
    for rel in manifest_paths(store):
        name = str(PurePosixPath(rel).parent) if "/" in rel else "."
        try:
            m = json.loads(store.read_bytes(rel))
            found.append(describe(name, m if isinstance(m, dict) else {}))
        except (ValueError, UnicodeDecodeError):
            found.append({**dict.fromkeys(COLUMNS, "-"), "name": name, "format": "unreadable"})
    return sorted(found, key=lambda r: r["name"])
