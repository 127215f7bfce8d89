"""Copy a dataset's files between stores, verifying each against the manifest on the way.

`publish` and `pull` both move shards whose sha256 the manifest records; a shard is checked
before it reaches the destination (a corrupt source never lands there under a good name), and a
destination that already holds the right bytes is left alone, so a killed copy resumes where it
stopped without moving anything twice.
"""

import os
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.io.hashing import sha256_file
from pipeline.io.storage import Store


class ShardMismatch(PipelineError):
    """A source file whose bytes are not the ones its manifest names."""


def holds(dest: Store, rel: str, entry: dict) -> bool:
    """True when `dest` already holds `rel` with the entry's size and sha256 (resume)."""
    return (dest.isfile(rel) and dest.size(rel) == entry["bytes"]
            and dest.sha256(rel) == entry["sha256"])


def copy_verified(src: Store, dest: Store, rel: str, entry: dict, scratch: Path) -> bool:
    """Copy `rel` from src to dest after checking its size and sha256 against `entry`; False
    when dest held it already. A mismatch raises ShardMismatch naming the file and leaves dest
    as it was."""
    if holds(dest, rel, entry):
        return False
    local = src.fetch(rel, scratch / rel.replace("/", "__"))
    try:
        if not local.is_file():
            raise ShardMismatch(f"{src.locate(rel)}: listed in the manifest but missing; the "
                                "source dataset is incomplete")
        size, digest = local.stat().st_size, sha256_file(local)
        if size != entry["bytes"] or digest != entry["sha256"]:
            raise ShardMismatch(f"{rel}: sha256 {digest[:12]}… ({size:,} bytes) differs from the "
                                f"manifest's {entry['sha256'][:12]}… ({entry['bytes']:,} bytes); "
                                "the source shard is corrupt, nothing was written for it")
        dest.put_file(local, rel)
    finally:
        if src.local_path(rel) is None and local.is_file():  # a download of ours, not the source
            os.unlink(local)
    return True


PROBE = ".softlabels-write-probe"


def writable(dest: Store, what: str) -> None:
    """Write and remove one small file before anything else, so a read-only or unreachable
    destination is one line before any shard moves (object stores raise their own line; a
    local OSError is turned into one here)."""
    try:
        dest.makedirs()
        dest.write_bytes(PROBE, b"")
        dest.remove(PROBE)
    except OSError as exc:
        raise PipelineError(f"cannot write to {dest.root}: {exc.strerror}; choose a {what} "
                            "you can write to") from None
