"""What the verbs print when they end: summary lines, what labeling skipped, the stop line.

Summary lines are short label/value lines printed with `say`: word-wrapped at a terminal's width
(so a value is never cut in two on an 80-column terminal; a path longer than the line is the
only thing on its own line) and not wrapped at all in a log, where a broken path defeats grep.
"""

import shlex

from rich.console import Console

from pipeline.interrupt import EXIT_INTERRUPTED, Interrupted
from pipeline.io.uris import redact_text


def say(console: Console, text: str) -> None:
    """Print a summary line; any URI in it loses its credentials (pipeline/io/uris.py)."""
    console.print(redact_text(text), soft_wrap=not console.is_terminal, highlight=False,
                  markup=False)


def dataset_lines(manifest: dict, where: str) -> list[str]:
    """The end of `pipeline label`: the dataset, its size, and what labeling skipped."""
    s = manifest["summary"]
    return [f"dataset: {where}",
            f"  {s['rows']:,} rows, {s['positions']:,} positions, {s['bytes']:,} bytes "
            f"({s['bytes_per_position']:.2f} B/position)",
            *(f"  {key}: {value}" for key, value in corpus_counts(manifest))]


def corpus_counts(manifest: dict) -> list[tuple[str, str]]:
    """The counts a user must see, not only find in the manifest: documents skipped (empty) or
    repaired (non-UTF-8 bytes replaced), tokens dropped at row ends, and a validation split
    that came out empty (evaluate and validation loss need one)."""
    c = manifest.get("corpus", {})
    counts = [("documents", f"{c.get('documents_read', 0):,} read, "
                            f"{c.get('documents_skipped_empty', 0):,} empty skipped, "
                            f"{c.get('non_utf8_documents', 0):,} non-UTF-8 (bytes replaced)"),
              ("tokens dropped", f"{c.get('tokens_dropped', 0):,} (each split's last partial "
                                 "row)")]
    return counts + [("validation", _validation(manifest))]


def _validation(manifest: dict) -> str:
    c = manifest.get("corpus", {})
    fraction = c.get("validation_fraction", 0)
    docs = c.get("by_split", {}).get("validation", 0)
    rows = sum(s["rows"] for s in manifest.get("splits", {}).get("validation", []))
    if not fraction:
        return "none (--validation-fraction 0)"
    if not rows:
        return (f"EMPTY: {docs:,} documents, under one row of tokens; raise "
                "--validation-fraction (evaluate needs validation rows)")
    return f"{rows:,} rows from {docs:,} documents"


def train_lines(name: str, summary: dict, location: str) -> list[str]:
    """One student's result, then where its run folder is (a path may be long)."""
    val = summary.get("val_loss")
    return [f"{name}: {summary['step']} steps, {summary['tokens']:,} tokens, final loss "
            f"{summary['final'].get('loss', float('nan')):.4f}"
            + (f", val_loss {val:.4f}" if val is not None else ""),
            f"  → {location}"]


def interrupted_line(exc: Interrupted, argv: list[str], verbs: set[str]) -> str:
    """The one line a stop prints: which signal, what was kept, and the command that resumes."""
    verb = next((a for a in argv if a in verbs), "")
    args = list(argv)
    if verb == "train" and "--resume" not in args:
        args.append("--resume")
    stage = f" during stage {exc.stage}" if exc.stage else ""
    what = exc.what or f"{exc.stage or verb or 'pipeline'} stopped"
    return (f"interrupted by {exc.signal_name}{stage}: {what}; to resume, run: "
            f"{shlex.join(['pipeline', *args])} (exit {EXIT_INTERRUPTED})")
