"""Content hashes used in manifests and plan fingerprints."""

import hashlib
import json
from pathlib import Path


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_json(obj) -> str:
    """Hash of a JSON-serialisable object with sorted keys, so dict order never matters."""
    return sha256_bytes(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode())
