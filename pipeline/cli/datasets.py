"""Verbs over a dataset's versions (format 1.4): the history table and `pipeline gc`.

Kept apart from commands.py so each verb module stays small; commands.py registers `gc` on
its app (`register`), so this module never imports it.
"""

import json
import sys

import typer
from rich.table import Table

HISTORY_COLUMNS = ("version", "created_at", "documents_added", "documents_changed",
                   "documents_removed", "documents_relabeled", "rows", "positions", "bytes",
                   "teacher")


def print_versions(dataset: str, as_json: bool, console) -> None:
    """`pipeline inspect DS --versions`: one row per version, oldest first."""
    from pipeline.softlabels.versions import history

    rows = history(dataset)
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=2, sort_keys=True) + "\n")
        return
    t = Table(title=f"versions of {dataset}")
    for name in HISTORY_COLUMNS:
        t.add_column(name.replace("documents_", ""))
    for r in rows:
        if r.get("removed_by_gc"):
            t.add_row(str(r["version"]), "(removed by gc)", *[""] * (len(HISTORY_COLUMNS) - 2))
            continue
        t.add_row(*[f"{r.get(k):,}" if isinstance(r.get(k), int) and k != "version"
                    else str(r.get(k, "-")) for k in HISTORY_COLUMNS])
    console.print(t)


def imported_rows(m: dict) -> list[tuple[str, str]]:
    """`inspect`'s lines for a dataset `pipeline import` made: its sources, and whether its
    tail mass is the source's or derived (1 − Σ stored), which no column shows."""
    imported = m.get("imported")
    if not isinstance(imported, dict):
        return []
    from pipeline.io.uris import redact

    sources = ", ".join(f"{split}: {redact(src)}"
                        for split, src in (imported.get("sources") or {}).items())
    derived = (m.get("labels") or {}).get("tail_mass_source") == "derived"
    return [("imported", f"from {imported.get('format', '-')} ({sources})"),
            ("tail mass", "derived: 1 − Σ stored (the source gave none)" if derived
             else "as stored in the source")]


def register(app: typer.Typer, console) -> None:
    @app.command()
    def gc(dataset: str = typer.Argument(..., help="Dataset directory or URI."),
           keep: int = typer.Option(..., "--keep", min=1, help="Versions to keep, newest first.")
           ) -> None:
        """Remove versions older than the newest N and the shards no kept version lists (only
        files the labeler wrote; takedowns leave the folder this way)."""
        from pipeline.softlabels.versions import gc as collect

        r = collect(dataset, keep)
        console.print(f"kept versions {r['kept_versions']}; removed {len(r['removed_shards'])} "
                      f"shards and {len(r['removed_version_files'])} version files")
