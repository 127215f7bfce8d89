"""`pipeline pull SRC DEST`: download a verified part of a dataset that is itself a dataset.

A team often needs the validation split, or the first shards, of a dataset too large to copy
whole. The part is chosen from the manifest alone (whole shards: a shard is the unit the
manifest checksums), each shard is verified before it lands in DEST, and DEST's manifest lists
only what was pulled and says which dataset it is a subset of. It is written last, as in
`publish`, so a killed pull leaves the verified shards and no manifest, and a rerun resumes; a
shard that fails its checksum stops the pull naming it and keeps what was verified.
`train`/`evaluate` still read remote datasets directly; pull is for taking a part home.
"""

import copy
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.io.cache import temporary_dir
from pipeline.io.storage import Store
from pipeline.io.uris import redact
from pipeline.sharing.copying import ShardMismatch, copy_verified, writable
from pipeline.sharing.hfcard import render_published_card
from pipeline.sharing.publish import check_destination
from pipeline.sharing.scrub import scrub
from pipeline.softlabels.layout import CARD, MANIFEST, TOKENIZER
from pipeline.softlabels.manifest import listed_rel, load_manifest


def parse_range(text: str | None) -> slice:
    """`--shards A:B` (either end may be left out) → a slice of each split's shard list."""
    if text is None:
        return slice(None)
    try:
        a, b = text.split(":")
        return slice(int(a) if a else None, int(b) if b else None)
    except ValueError:
        raise PipelineError(f"--shards {text!r}: give a range START:END of shard numbers, "
                            "e.g. 0:8") from None


def select(m: dict, splits: list[str] | None, shards: str | None,
           max_positions: int | None) -> dict:
    """{split: [shard entries]} to pull: the named splits (default all), each split's shards
    in the range, then, with max_positions, whole shards in order until that many positions."""
    unknown = sorted(set(splits or []) - set(m["splits"]))
    if unknown:
        raise PipelineError(f"--split {unknown[0]}: the dataset has splits "
                            f"{sorted(m['splits'])}")
    chosen = {s: list(m["splits"][s][parse_range(shards)])
              for s in m["splits"] if not splits or s in splits}
    if max_positions is not None:
        for split, entries in chosen.items():
            kept, total = [], 0
            for e in entries:
                if total >= max_positions:
                    break
                kept.append(e)
                total += e.get("positions", 0)
            chosen[split] = kept
    if not any(chosen.values()):
        raise PipelineError("the selection holds no shard (check --split/--shards); nothing "
                            "was pulled")
    return chosen


def subset_manifest(m: dict, chosen: dict, source: str, description: str) -> dict:
    """The source manifest restricted to `chosen`, its sizes recomputed, and a `subset` block
    naming the dataset it came from (by fingerprints: the source location may be private)."""
    out = scrub(copy.deepcopy(m))
    out.pop("version", None)
    out["splits"] = chosen
    entries = [e for es in chosen.values() for e in es]
    rows, positions = sum(e["rows"] for e in entries), sum(e["positions"] for e in entries)
    nbytes, k = sum(e["bytes"] for e in entries), max(m["labels"].get("k", 0), 1)
    out["summary"] = {**out["summary"], "rows": rows, "positions": positions, "bytes": nbytes,
                      "bytes_per_position": nbytes / max(positions, 1),
                      "bytes_per_entry": nbytes / max(positions * k, 1)}
    out["subset"] = {"of_plan_fingerprint": m.get("plan_fingerprint"),
                     "of_corpus_fingerprint": (m.get("corpus") or {}).get("fingerprint"),
                     "of_created_at": m.get("created_at"), "source": redact(source),
                     "of_rows": (m.get("summary") or {}).get("rows"),
                     "description": description}
    return out


def pull(source: str, dest_uri: str, splits: list[str] | None = None,
         shards: str | None = None, max_positions: int | None = None) -> tuple[dict, int]:
    """Pull; returns (DEST's manifest, shards downloaded this run)."""
    src, dest = Store(source), Store(dest_uri)
    m = load_manifest(src)
    chosen = select(m, splits, shards, max_positions)
    description = ", ".join(f"{s}: {len(e)} of {len(m['splits'][s])} shards"
                            for s, e in chosen.items())
    out = subset_manifest(m, chosen, source, description)
    check_destination(dest, out)
    writable(dest, "destination")
    done = 0
    with temporary_dir("softlabels-pull-") as tmp:
        for entries in chosen.values():
            for e in entries:
                try:
                    done += copy_verified(src, dest, listed_rel(src, e["path"]), e, Path(tmp))
                except ShardMismatch as exc:
                    raise PipelineError(f"{exc}; the {done} shards verified before it are kept "
                                        f"in {redact(dest_uri)} (no manifest: not a dataset "
                                        "yet)") from None
        if src.isfile(TOKENIZER):
            copy_verified(src, dest, TOKENIZER, {"bytes": src.size(TOKENIZER),
                                                 "sha256": m["tokenizer"]["sha256"]}, Path(tmp))
    dest.write_bytes(CARD, render_published_card(out).encode())
    dest.write_json(MANIFEST, out)  # the commit point: last
    return out, done
