"""The manifest of an imported dataset (`pipeline import`): the labeler's fields, filled from
what the import knows, plus an `imported` block and, when the file gave no tail mass,
`labels.tail_mass_source = "derived"`.

An import has no corpus and ran no teacher, so those fields say what the user supplied (names,
redacted) and what the files were (their sha256 as the corpus fingerprint), never a guess: no
parameter count, no dtype. The shape of every field is the labeler's, so `validate`, `train`,
`evaluate`, `publish` and the cards read an imported dataset like any other.
"""

from datetime import UTC, datetime

import pipeline
from pipeline.io.hashing import sha256_json
from pipeline.io.uris import redact
from pipeline.softlabels import rowgroups
from pipeline.softlabels.card import DERIVED

SPLIT_RULE = "imported: each file is one split"
UNKNOWN_CORPUS = "unknown (imported; --corpus names it)"


def _splits(records: dict) -> dict:
    """{split: [manifest shard entries]} from the writer's completion records."""
    out = {}
    for split, recs in records.items():
        out[split] = [{**{k: r[k] for k in ("path", "rows", "positions", "bytes", "sha256")},
                       **{k: r[k] for k in rowgroups.KEYS if k in r}} for r in recs]
    return out


def _summary(spec, records: list[dict]) -> dict:
    positions = sum(r["positions"] for r in records)
    nbytes = sum(r["bytes"] for r in records)
    labeled = sum(r.get("trained_positions", r["positions"]) for r in records)
    return {"rows": sum(r["rows"] for r in records), "positions": positions, "bytes": nbytes,
            "mean_topk_mass": sum(r["topk_mass_sum"] for r in records) / max(labeled, 1),
            "bytes_per_position": nbytes / max(positions, 1),
            "bytes_per_entry": nbytes / max(positions * spec.k, 1)}


def _fraction(rows: dict, split: str) -> float:
    """The share of rows in `split` (what `inspect` shows as the validation fraction)."""
    return round(rows.get(split, 0) / max(sum(rows.values()), 1), 6)


def imported_manifest(shape, spec, tokenizer, who, sources: dict, records: dict,
                      fingerprint: str) -> dict:
    """The manifest (see the module docstring); `who` is importing.Provenance."""
    flat = [r for recs in records.values() for r in recs]
    derived = not shape.has_tail
    labels = {**spec.as_dict(), **({"tail_mass_source": DERIVED} if derived else {})}
    source = {split: redact(src) for split, src in sources.items()}
    return {
        "format_version": spec.format_version,
        "tool": {"name": "softlabel-pipeline", "version": pipeline.__version__},
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "plan_fingerprint": fingerprint,
        "teacher": {"spec": redact(who.teacher), "family": "imported",
                    "sha256": who.teacher_sha256},
        "tokenizer": tokenizer.describe(),
        "corpus": {"uri": redact(who.corpus or UNKNOWN_CORPUS),
                   "fingerprint": sha256_json(shape.sha256),
                   "validation_fraction": _fraction(shape.rows, "validation"),
                   "split_rule": SPLIT_RULE,
                   "documents_read": sum(shape.rows.values()), "documents_skipped_empty": 0,
                   "non_utf8_documents": 0, "tokens_dropped": 0, "by_split": dict(shape.rows)},
        "labels": labels, "seq_len": shape.seq_len, "splits": _splits(records),
        "summary": _summary(spec, flat),
        "imported": {"format": "jsonl", "sources": source, "sha256": dict(shape.sha256),
                     "rows": dict(shape.rows),
                     "tail_mass": DERIVED if derived else "stored"},
    }

