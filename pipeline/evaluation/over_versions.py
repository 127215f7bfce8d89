"""A scheduled job's evaluation over dataset versions: the leaderboard over versions and the
validation rows that later versions added.

Why two sets: a job over a growing corpus scores every version's students on one fixed
evaluation set (`--version N`, `[evaluate] version = 1`), so their numbers stay comparable from
night to night; but the validation documents that arrived since are what a team most wants to
see the students on. They are scored separately, never mixed into the fixed set: the rows of
the latest version's validation shards that version N does not list (shards are never rewritten,
so a listed path is the same rows). Those are the new documents' rows, plus the rows a change or
takedown rewrote (a row that held a changed or removed document is labeled again).

The plot's points are the fixed set's numbers: each earlier run's line of OUT/history.jsonl
(pipeline/cli/history.py) and this evaluation's rows, at the dataset version each was trained on.
"""

import json
import math
from dataclasses import replace
from pathlib import Path

from pipeline.softlabels.manifest import committed_version, load_manifest
from pipeline.softlabels.reader import SoftLabelDataset

VERSIONS_PNG = "leaderboard_over_versions.png"
SPLIT = "validation"
NEW_ROW_METRICS = ("kl_tail", "top1_agreement", "ce", "top1_accuracy")


def latest_version(labels: str) -> int | None:
    """The version manifest.json commits (None: a dataset without versions)."""
    return committed_version(load_manifest(labels))


def added_validation(labels: str, version: int | None) -> SoftLabelDataset | None:
    """The latest version with its validation split cut to the shards `version` does not list;
    None when `version` is the latest (or unset) or nothing was added."""
    latest = latest_version(labels)
    if version is None or latest is None or version >= latest:
        return None
    fixed = {e["path"] for e in load_manifest(labels, version)["splits"].get(SPLIT, [])}
    ds = SoftLabelDataset(labels)
    new = [s for s in ds.shards.get(SPLIT, []) if s.rel not in fixed]
    if not new:
        return None
    ds.shards[SPLIT] = [replace(s, index=i) for i, s in enumerate(new)]  # read by position
    return ds


def fingerprint(ds: SoftLabelDataset | None) -> dict:
    """What the added rows add to the report's inputs (nothing when there are none, so reports
    made before versions existed stay up to date)."""
    if ds is None:
        return {}
    return {"added_validation": [[s.rel, s.sha256] for s in ds.shards[SPLIT]]}


def new_rows_summary(since: int, latest: int, scored: dict, rows: list[dict]) -> dict:
    """results.json's `new_validation`: the added rows' size and each model's headline."""
    return {"since_version": since, "latest_version": latest, **scored,
            "models": [{"name": r["name"], "role": r["role"],
                        **{k: r.get(k) for k in NEW_ROW_METRICS}} for r in rows]}


def read_history(path: str | Path | None) -> list[dict]:
    """The lines of a job's history.jsonl; a torn last line (a killed append) is skipped."""
    if not path or not Path(path).is_file():
        return []
    lines = []
    for text in Path(path).read_text().splitlines():
        try:
            lines.append(json.loads(text))
        except json.JSONDecodeError:
            continue
    return [x for x in lines if isinstance(x, dict)]


def _value(row: dict, metric: str) -> float | None:
    v = row.get(metric)
    return v if isinstance(v, (int, float)) and math.isfinite(v) else None


def points(history: list[dict], version: int | None, rows: list[dict]) -> dict | None:
    """{"metric", "points": [{version, name, value}]}: earlier runs' history lines and this
    evaluation (a later line for the same version replaces an earlier one); None without a
    version."""
    if version is None:
        return None
    runs = [(x.get("version"), x.get("leaderboard") or []) for x in history] + [(version, rows)]
    runs = [(v, rs) for v, rs in runs if isinstance(v, int)]
    metric = "kl_tail" if any(_value(r, "kl_tail") is not None for _, rs in runs for r in rs) \
        else "ce"
    latest: dict[tuple[int, str], float] = {}
    for v, rs in runs:
        for r in rs:
            if (value := _value(r, metric)) is not None and r.get("name"):
                latest[(v, r["name"])] = value
    return {"metric": metric, "points": [{"version": v, "name": n, "value": x}
                                         for (v, n), x in sorted(latest.items())]}


def plot(over: dict | None):
    """Each model's fixed-set metric against the dataset version; None below two versions."""
    if not over or len({p["version"] for p in over["points"]}) < 2:
        return None
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for name in sorted({p["name"] for p in over["points"]}):
        pts = [(p["version"], p["value"]) for p in over["points"] if p["name"] == name]
        ax.plot([v for v, _ in pts], [y for _, y in pts], "o-", markersize=4, label=name)
    ax.set_xlabel("dataset version")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel("KL(teacher‖student) over top-k ∪ tail, nats" if over["metric"] == "kl_tail"
                  else "cross-entropy, nats")
    ax.set_title("leaderboard over versions (fixed evaluation set; lower is better)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def markdown(results: dict, has_plot: bool, fmt) -> list[str]:
    """report.md's sections for the added rows and the plot (empty when neither applies)."""
    parts = []
    new = results.get("new_validation")
    if new:
        parts += [f"## Validation rows added after version {new['since_version']}", "",
                  f"Version {new['latest_version']}'s validation rows that version "
                  f"{new['since_version']} (the fixed evaluation set above) does not hold: "
                  f"{new['rows']:,} rows, {new['positions']:,} positions (new documents, and rows "
                  "labeled again because a document in them changed or was removed). Not "
                  "included in the table above.", "",
                  "| model | KL | agree | CE | acc |", "|---|--:|--:|--:|--:|"]
        specs = ("{:.4f}", "{:.3f}", "{:.3f}", "{:.3f}")
        parts += ["| " + " | ".join([m["name"], *(fmt(m.get(k), s) for k, s in zip(
            NEW_ROW_METRICS, specs))]) + " |" for m in new["models"]]
        parts.append("")
    if has_plot:
        parts += [f"![leaderboard over versions]({VERSIONS_PNG})", "",
                  "Leaderboard over versions: each model's score on the fixed evaluation set "
                  "against the dataset version it was trained on, from OUT/history.jsonl and "
                  "this evaluation.", ""]
    return parts
