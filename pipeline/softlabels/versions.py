"""Dataset versions (format 1.4): commit, history and garbage collection.

Why this shape: manifest.json stays a complete manifest of the newest version, so every reader of
format 1.x reads the latest version unchanged (1.4 only adds a `version` block and files under
versions/ that older readers never open). Each version's manifest is also kept whole as
versions/NNNNN.json, next to its document index (pipeline/labeling/repack.py says what the index
holds and why). Commit order: shards and records, the index, the version's manifest, then
manifest.json, last: a kill at any moment leaves the previous version committed (a version file
numbered above manifest.json's is an unfinished run, never read and overwritten by the rerun).

Shards are never rewritten in place: a version adds shards under new numbers and drops old ones
from its list, so every older version still reads byte-identical files until `gc` removes the
shards no kept version lists (the only way tokens of a taken-down document leave the folder).
"""

from pipeline.errors import PipelineError
from pipeline.io.locking import DirLock
from pipeline.io.storage import Store
from pipeline.softlabels import layout
from pipeline.softlabels.layout import MANIFEST, SEEN, index_relpath, version_relpath
from pipeline.softlabels.manifest import committed_version, load_manifest

FORMAT_VERSION = "1.4"


def latest(store: Store) -> dict | None:
    """manifest.json when it is a versioned dataset's; None for an empty folder. A dataset
    labeled without --incremental is refused: it has no document index to compare with."""
    manifest = layout.read_json(store, MANIFEST)
    if manifest is None:
        return None
    if committed_version(manifest) is None:
        raise PipelineError(f"--out {store} holds a dataset labeled without --incremental (no "
                            "document index to compare the corpus with); label into a new --out "
                            "with --incremental, or leave --incremental out")
    return manifest


def read_index(store: Store, number: int) -> dict:
    rel = index_relpath(number)
    index = layout.read_json(store, rel)
    if not isinstance(index, dict) or not {"docs", "rows", "tails"} <= set(index):
        raise PipelineError(f"{store.locate(rel)} is missing or corrupt; the dataset cannot "
                            "take a new version (relabel into a new --out)")
    return index


def check_same_params(store: Store, manifest: dict, params: dict) -> None:
    """One dataset, one teacher, tokenizer, k, mode, encoding and packing: anything else is a
    new dataset, not a version of this one."""
    old = manifest["version"].get("params") or {}
    differ = sorted(k for k in set(old) | set(params) if old.get(k) != params.get(k))
    if differ:
        raise PipelineError(f"--out {store} was labeled with other settings ({', '.join(differ)} "
                            "differ: teacher, tokenizer, labels or packing); a different teacher "
                            "or setting is a new dataset, not a version: label into a new --out")


def commit(store: Store, manifest: dict, index: dict, before_last=None) -> dict:
    """Write version N's index and manifest, then (after `before_last`, e.g. the card) the
    manifest.json that commits it."""
    number = manifest["version"]["number"]
    store.write_json(index_relpath(number), index)
    store.write_json(version_relpath(number), manifest)
    if before_last is not None:
        before_last(manifest)
    store.write_json(MANIFEST, manifest)  # the commit point: always last
    store.remove(SEEN)
    return manifest


def mark_seen(store: Store, number: int, listing_sha256: str) -> None:
    """Remember a listing that held no change, so the next run skips reading it."""
    store.write_json(SEEN, {"version": number, "corpus_listing_sha256": listing_sha256})


def unchanged(store: Store, listing_sha256: str) -> dict | None:
    """The committed manifest when the corpus listing is the one it was made from (or one
    found to hold no change since); else None."""
    manifest = layout.read_json(store, MANIFEST)
    number = committed_version(manifest) if isinstance(manifest, dict) else None
    if number is None:
        return None
    seen = layout.read_json(store, SEEN) or {}
    if listing_sha256 in (manifest["version"].get("corpus_listing_sha256"),
                          seen.get("corpus_listing_sha256") if seen.get("version") == number
                          else None):
        return manifest
    return None


def history(root) -> list[dict]:
    """One row per kept version: when, what changed, size, teacher."""
    store = Store.of(root)
    current = committed_version(load_manifest(store))
    if current is None:
        raise PipelineError(f"dataset {store.uri} has no versions (labeled without "
                            "--incremental)")
    rows = []
    for n in range(1, current + 1):
        m = layout.read_json(store, version_relpath(n))
        if not isinstance(m, dict):
            rows.append({"version": n, "removed_by_gc": True})
            continue
        v, s = m["version"], m["summary"]
        rows.append({"version": n, "created_at": m.get("created_at"), **v.get("changes", {}),
                     "rows": s["rows"], "positions": s["positions"], "bytes": s["bytes"],
                     "teacher": (m.get("teacher") or {}).get("spec")})
    return rows


def _listed(manifest: dict) -> set[str]:
    return {e["path"] for shards in manifest["splits"].values() for e in shards}


def gc(root, keep: int) -> dict:
    """Keep the newest `keep` versions; remove older version files, then every shard file (and
    its record) of ours that no kept version lists. Files we did not write are never touched."""
    store = Store.of(root)
    latest_manifest = load_manifest(store)
    current = committed_version(latest_manifest) or 0
    kept = {n for n in range(max(1, current - keep + 1), current + 1)}
    listed = _listed(latest_manifest)
    removed_versions, removed_shards = [], []
    with DirLock(store):
        for n in kept:
            m = layout.read_json(store, version_relpath(n))
            listed |= _listed(m) if isinstance(m, dict) else set()
        for name in store.listdir(layout.VERSIONS_DIR):
            number = name.split(".")[0]
            if number.isdigit() and int(number) not in kept:
                store.remove(f"{layout.VERSIONS_DIR}/{name}")
                removed_versions.append(name)
        for rel in store.walk():
            if layout.is_shard_path(rel) and rel not in listed:
                store.remove(rel)
                if not rel.endswith(".tmp"):  # a stray write's record is the real shard's
                    store.remove(_record_of(rel))
                removed_shards.append(rel)
    return {"kept_versions": sorted(kept), "removed_version_files": sorted(removed_versions),
            "removed_shards": removed_shards}


def _record_of(shard_rel: str) -> str:
    split, name = shard_rel.split("/")[1:3]
    return f"{layout.PROGRESS_DIR}/{split}/{name.split('.')[0]}.json"
