"""The dataset folder's layout: every file name the labeler writes, defined once.

```
DATASET/
  plan.json                      what will be labeled (written first)
  _progress/SPLIT/part-NNNNN.json  one completion record per finished shard
  shards/SPLIT/part-NNNNN.parquet  the shards
  tokenizer.json                 copy of the teacher's tokenizer
  README.md                      the dataset card
  manifest.json                  the index and commit point (written last)
  versions/NNNNN.json            format 1.4: the manifest of each committed version
  versions/NNNNN.index.json      its document index (content hashes, row spans, carried tokens)
  versions/seen.json             the latest corpus listing found to hold no change
  .lock                          held while a labeler runs
```
Any of these may also exist as `NAME.tmp` (a write in flight when a process died).

`foreign_files` is what makes `--overwrite` safe: the labeler removes a folder's contents only
when every file in it is positively one of its own (by name, and for the files a user could
also have, by content), and names the first file that is not.
"""

import json
import re

from pipeline.io.atomic import TMP_SUFFIX
from pipeline.io.locking import LOCK

MANIFEST = "manifest.json"
PLAN = "plan.json"
PROGRESS_DIR = "_progress"
SHARDS_DIR = "shards"
TOKENIZER = "tokenizer.json"
CARD = "README.md"
CARD_HEADING = "# Soft-label dataset\n"
VERSIONS_DIR = "versions"
SEEN = f"{VERSIONS_DIR}/seen.json"

_SPLIT = r"[A-Za-z0-9_-]+"
_SHARD = re.compile(rf"{SHARDS_DIR}/{_SPLIT}/part-\d{{5}}\.parquet(\.tmp)?")
_RECORD = re.compile(rf"{PROGRESS_DIR}/{_SPLIT}/part-\d{{5}}\.json(\.tmp)?")
_VERSION = re.compile(rf"{VERSIONS_DIR}/(\d{{5}}(\.index)?|seen)\.json(\.tmp)?")
_DIR = re.compile(rf"({SHARDS_DIR}|{PROGRESS_DIR}|{VERSIONS_DIR})(/{_SPLIT})?/")  # ours, empty


def shard_name(split: str, index: int) -> str:
    """`SPLIT/part-NNNNN`: how a shard is named in files, task keys and messages."""
    return f"{split}/part-{index:05d}"


def shard_relpath(split: str, index: int) -> str:
    return f"{SHARDS_DIR}/{shard_name(split, index)}.parquet"


def record_relpath(split: str, index: int) -> str:
    return f"{PROGRESS_DIR}/{shard_name(split, index)}.json"


def version_relpath(number: int) -> str:
    return f"{VERSIONS_DIR}/{number:05d}.json"


def index_relpath(number: int) -> str:
    return f"{VERSIONS_DIR}/{number:05d}.index.json"


def is_shard_path(rel: str) -> bool:
    """A shard file name the labeler writes (what `pipeline gc` may remove)."""
    return bool(_SHARD.fullmatch(rel))


def read_json(store, rel: str):
    """A JSON file of the folder, or None when it is missing or not JSON (an unreachable
    store raises its one-line error)."""
    if not store.isfile(rel):
        return None
    try:
        return json.loads(store.read_bytes(rel))
    except (ValueError, UnicodeDecodeError):
        return None


def _is_plan(obj) -> bool:
    return isinstance(obj, dict) and {"params", "shards", "fingerprint"} <= set(obj)


def _is_manifest(obj) -> bool:
    return (isinstance(obj, dict) and "format_version" in obj
            and (obj.get("tool") or {}).get("name") == "softlabel-pipeline")


def _tokenizer_hashes(plan, manifest) -> set:
    hashes = set()
    if _is_plan(plan):
        hashes.add((plan.get("params") or {}).get("tokenizer_sha256"))
    if _is_manifest(manifest):
        hashes.add((manifest.get("tokenizer") or {}).get("sha256"))
    return hashes - {None}


def foreign_files(store) -> list[str]:
    """Entries below `store` the labeler cannot prove it wrote (files, links, empty folders
    other than its own; folders end in "/"), sorted; [] for an empty or missing folder or a
    folder that is wholly a dataset of ours."""
    plan, manifest = read_json(store, PLAN), read_json(store, MANIFEST)
    ours = _is_plan(plan) or _is_manifest(manifest)
    return [rel for rel in store.walk() if not _owned(store, rel, ours, plan, manifest)]


def _owned(store, rel: str, ours: bool, plan, manifest) -> bool:
    if rel in (LOCK, PLAN + TMP_SUFFIX, MANIFEST + TMP_SUFFIX) or _DIR.fullmatch(rel) \
            or _SHARD.fullmatch(rel) or _RECORD.fullmatch(rel) or _VERSION.fullmatch(rel):
        return True
    if rel == PLAN:
        return _is_plan(plan)
    if rel == MANIFEST:
        return _is_manifest(manifest)
    if not ours:  # the files below are ours only beside our plan or manifest
        return False
    if rel == TOKENIZER:
        return store.sha256(rel) in _tokenizer_hashes(plan, manifest)
    if rel in (CARD, CARD + TMP_SUFFIX):
        return is_our_card(store.read_bytes(rel))
    return False


def is_our_card(data: bytes) -> bool:
    """A README.md the labeler wrote (the heading first) or `publish`/`pull` wrote (the same
    heading right after the Hugging Face front matter): a published folder relabeled with
    --overwrite must not look foreign because of its own card."""
    heading = CARD_HEADING.encode()
    return data.startswith(heading) or (data.startswith(b"---\n")
                                        and b"\n---\n" + heading in data)


def owned_entries(store) -> list[str]:
    """The top-level names `--overwrite` removes (call only when foreign_files is empty)."""
    return [name for name in store.listdir() if name != LOCK]
