"""OUT/history.jsonl of a scheduled job: one line per `pipeline run` that did something.

Why a file of its own: a job over a growing corpus reruns nightly, and its report/ is rewritten
each time; the history keeps, per run, the dataset version, what changed in the corpus, how long
each stage took and the leaderboard's headline numbers, so quality over versions can be read
(or plotted) without keeping every report. Appended with one write of one line (a reader sees a
whole line or none); a run that did nothing (every stage skipped) appends nothing.
"""

import json
from datetime import UTC, datetime
from pathlib import Path

HISTORY = "history.jsonl"
HEADLINE = ("name", "role", "ce", "perplexity", "kl_tail", "top1_agreement", "tokens_per_s",
            "parameters")


def leaderboard_summary(results: dict | None) -> list[dict]:
    """Each leaderboard row cut to its headline metrics (those present)."""
    rows = (results or {}).get("rows") or []
    return [{k: r[k] for k in HEADLINE if k in r} for r in rows]


def append(out: Path, manifest: dict | None, stages: dict, seconds: dict,
           results: dict | None) -> dict | None:
    """Add this run's line to OUT/history.jsonl; None (nothing written) when nothing ran."""
    if all(status == "skipped" for status in stages.values()):
        return None
    version = (manifest or {}).get("version") or {}
    changes = version.get("changes") or {}
    line = {"at": datetime.now(UTC).isoformat(timespec="seconds"),
            "version": version.get("number"),
            "documents": {k.removeprefix("documents_"): changes.get(k) for k in (
                "documents_added", "documents_changed", "documents_removed",
                "documents_relabeled")},
            "stages": {name: {"status": stages[name], "seconds": seconds.get(name)}
                       for name in stages},
            "leaderboard": leaderboard_summary(results)}
    out.mkdir(parents=True, exist_ok=True)
    with open(out / HISTORY, "a", encoding="utf-8") as f:
        f.write(json.dumps(line, sort_keys=True) + "\n")
    return line
