"""`pipeline publish DS DEST`: copy a dataset (or one version of it) to any folder the storage
layer takes, as a Hugging Face dataset repository.

Order matters, as in the labeler: shards first (each verified against the manifest's sha256
before it reaches DEST), then tokenizer.json and the card, and manifest.json **last**, so DEST
is a dataset only once everything it lists is there. A failure at any point (a corrupt shard, a
read-only or unreachable DEST) leaves no manifest, and a rerun resumes, skipping the shards
DEST already holds with the right bytes. DEST never receives `versions/` or the labeler's
bookkeeping: it is one version, whose manifest lists exactly its shards.
"""

import json
from datetime import UTC, datetime
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.io.cache import temporary_dir
from pipeline.io.storage import Store, absolute
from pipeline.sharing.copying import copy_verified, writable
from pipeline.sharing.hfcard import render_published_card
from pipeline.sharing.scrub import scrub
from pipeline.softlabels.layout import CARD, MANIFEST, TOKENIZER, is_our_card, read_json
from pipeline.softlabels.manifest import committed_version, listed_rel, load_manifest

LICENSE_KEYS = ("dataset", "corpus", "teacher")


def shard_set(m: dict) -> dict:
    """{path: sha256} of every shard a manifest lists: what makes two datasets the same."""
    return {e["path"]: e["sha256"] for shards in m["splits"].values() for e in shards}


def check_destination(dest: Store, m: dict) -> None:
    """Refuse a DEST that holds a different dataset or a README.md this tool did not write: a
    publish never overwrites what it cannot prove is its own."""
    there = read_json(dest, MANIFEST)
    if dest.isfile(MANIFEST) and not (isinstance(there, dict) and "splits" in there
                                      and shard_set(there) == shard_set(m)
                                      and there.get("tokenizer", {}).get("sha256")
                                      == m["tokenizer"]["sha256"]):
        raise PipelineError(f"{dest.root} already holds a different dataset (its manifest lists "
                            "other shards); publish to a new folder, nothing was written")
    if dest.isfile(CARD) and not is_our_card(dest.read_bytes(CARD)):
        raise PipelineError(f"{dest.locate(CARD)} exists and was not written by this tool; "
                            "publish to a new folder, nothing was written")


def read_audit(path: str | None) -> dict | None:
    """The JSON `pipeline audit --json` printed, for the card; refused unless it is one."""
    if path is None:
        return None
    try:
        a = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise PipelineError(f"--audit {path}: cannot read it as JSON ({exc}); pass the output "
                            "of `pipeline audit --json`") from None
    if not isinstance(a, dict) or "kl_mean" not in a:
        raise PipelineError(f"--audit {path}: not the output of `pipeline audit --json` "
                            "(no kl_mean)")
    return a


def published_manifest(m: dict, version: int | None, licenses: dict, names: dict,
                       audit: dict | None) -> dict:
    """The manifest DEST gets: scrubbed (pipeline/sharing/scrub.py), one version only, with the
    licence fields, publication record and audit figures the card shows."""
    out = scrub(m, names.get("corpus"), names.get("teacher"))
    number = out.pop("version", {}) and committed_version(m)
    out["license"] = {k: licenses.get(k) for k in LICENSE_KEYS}
    out["published"] = {"published_at": datetime.now(UTC).isoformat(timespec="seconds"),
                        **({"version": version or number} if (version or number) else {})}
    if audit is not None:
        out["audit"] = scrub(audit)
    return out


def publish(source: str, dest_uri: str, version: int | None = None,
            licenses: dict | None = None, names: dict | None = None,
            audit_file: str | None = None) -> tuple[dict, int]:
    """Publish; returns (the published manifest, shards copied this run)."""
    src, dest = Store(source), Store(dest_uri)
    if absolute(source).rstrip("/") == absolute(dest_uri).rstrip("/"):
        raise PipelineError(f"{dest.root} is the source dataset itself; publish to another folder")
    m = load_manifest(src, version)
    audit = read_audit(audit_file)
    check_destination(dest, m)
    writable(dest, "destination")
    copied = 0
    with temporary_dir("softlabels-publish-") as tmp:
        for shards in m["splits"].values():
            for e in shards:
                copied += copy_verified(src, dest, listed_rel(src, e["path"]), e, Path(tmp))
        if src.isfile(TOKENIZER):
            copy_verified(src, dest, TOKENIZER, {"bytes": src.size(TOKENIZER),
                                                 "sha256": m["tokenizer"]["sha256"]}, Path(tmp))
    out = published_manifest(m, version, licenses or {}, names or {}, audit)
    dest.write_bytes(CARD, render_published_card(out).encode())
    dest.write_json(MANIFEST, out)  # the commit point: last
    return out, copied


def unknown_licenses(m: dict) -> list[str]:
    """The licence fields a publisher left unknown (the CLI warns about each)."""
    lic = m.get("license") or {}
    return [k for k in LICENSE_KEYS if not lic.get(k)]
