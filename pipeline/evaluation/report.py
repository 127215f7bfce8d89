"""The leaderboard: one row per model, rendered to the terminal, JSON, Parquet, Markdown and PNG.

Rows are plain dicts (the same keys in results.json and results.parquet), so the terminal table
can be re-rendered from a saved results.json when `pipeline run` skips an up-to-date evaluation.
Order: the teacher first, then students from most to least faithful (tail KL), then by
cross-entropy; on a dataset without soft labels, by cross-entropy alone. When the models do not
all share one tokenizer, per-token KL and CE do not compare, so students are ranked by bits per
byte (`sort_rows`). The figures are drawn by plots.py.
"""

import math
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
from rich import box
from rich.console import Console
from rich.table import Table

from pipeline.errors import PipelineError
from pipeline.evaluation import over_versions
from pipeline.evaluation.plots import close, plot_pareto, plot_training_curves
from pipeline.io.storage import Store

RESULTS_JSON, RESULTS_PARQUET, REPORT_MD = "results.json", "results.parquet", "report.md"
PARETO_PNG, CURVES_PNG = "fidelity_vs_size.png", "training_curves.png"

REPORT_FILES = (RESULTS_PARQUET, PARETO_PNG, CURVES_PNG, over_versions.VERSIONS_PNG, REPORT_MD,
                RESULTS_JSON)  # write order


MARK = "softlabel-pipeline report"  # in every report file, so a rewrite can prove ownership


def check_replaceable(store) -> None:
    """A report folder may be rewritten only where every report-named file in it is ours: each
    carries MARK (a kill before results.json, which is written last, leaves them without it).
    Refuse a folder that is a file, or a report-named file someone else wrote, naming it."""
    if store.exists() and not store.isdir():
        raise PipelineError(f"--out {store} is a file, not a folder; choose a folder for the "
                            "report")
    for name in REPORT_FILES:
        if store.exists(name) and MARK.encode() not in _head(store, name):
            raise PipelineError(f"--out {store} holds {name}, which this tool did not write; "
                                "choose another --out for the report")


def _head(store, name: str) -> bytes:
    """Where MARK sits: the start of a text or PNG file (tEXt chunk), the Parquet footer."""
    with store.open(name) as f:
        if not name.endswith(".parquet"):
            return f.read(4096)
        f.seek(max(store.size(name) - 65536, 0))
        return f.read()


# (key, header, format) — the columns of every table view, in order.
COLUMNS = [
    ("name", "model", "{}"), ("parameters", "params", "{:,}"),
    ("checkpoint_bytes", "MB", "bytes"), ("kl_tail", "KL", "{:.4f}"),
    ("top1_agreement", "agree", "{:.3f}"), ("topk_mass", "top-k mass", "{:.3f}"),
    ("ce", "CE", "{:.3f}"), ("perplexity", "ppl", "{:.1f}"),
    ("bits_per_byte", "bits/B", "{:.3f}"), ("byte_perplexity", "ppl/B", "{:.3f}"),
    ("aligned_share", "aligned", "{:.3f}"), ("top1_accuracy", "acc", "{:.3f}"),
    ("ece", "ECE", "{:.3f}"), ("tokens_per_s", "tok/s", "{:,.0f}"),
    ("latency_ms", "ms/batch", "{:.2f}"), ("speedup", "speed", "{:.2f}×"),
    ("size_ratio", "size", "{:.2f}×"),
]
# The terminal shows the columns a user picks a student by; report.md has them all.
TERMINAL = ("name", "parameters", "kl_tail", "top1_agreement", "ce", "bits_per_byte",
            "top1_accuracy", "ece", "tokens_per_s", "speedup", "size_ratio")


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def fmt(value, spec: str) -> str:
    if _missing(value):
        return "-"
    if spec == "bytes":
        return f"{value / 1e6:.2f}"
    return spec.format(value)


def short(value, spec: str) -> str:
    """Terminal form: 1.2M / 25.1k / 385k for counts, so the table fits 80 columns."""
    if _missing(value) or spec not in ("{:,}", "{:,.0f}"):
        return fmt(value, spec)
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= div:
            v = value / div
            return f"{v:.0f}{unit}" if abs(v) >= 100 else f"{v:.1f}{unit}"
    return f"{value:.0f}"


def mixed_tokenizers(rows: list[dict]) -> bool:
    """True when the rows' models do not all read one tokenizer (rows record its sha256)."""
    return len({r.get("tokenizer") for r in rows}) > 1


def sort_rows(rows: list[dict]) -> list[dict]:
    """Teacher first; then by tail KL and CE, or by bits per byte when tokenizers are mixed."""
    by_bytes = mixed_tokenizers(rows)

    def key(r):
        first = r.get("bits_per_byte") if by_bytes else r.get("kl_tail")
        ce = r.get("ce")
        return (r.get("role") != "teacher", _missing(first), 0.0 if _missing(first) else first,
                math.inf if _missing(ce) else ce, r["name"])
    return sorted(rows, key=key)


def add_ratios(rows: list[dict]) -> None:
    """speedup = model tokens/s ÷ teacher tokens/s; size = model params ÷ teacher params."""
    teacher = next((r for r in rows if r.get("role") == "teacher"), None)
    for r in rows:
        r["speedup"] = r["size_ratio"] = None
        if teacher:
            r["speedup"] = r["tokens_per_s"] / teacher["tokens_per_s"]
            r["size_ratio"] = r["parameters"] / teacher["parameters"]


def rich_table(rows: list[dict], title: str) -> Table:
    present = [c for c in COLUMNS if c[0] in TERMINAL
               and any(not _missing(r.get(c[0])) for r in rows)]
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1),
                  collapse_padding=True)
    table.add_column("#", justify="right")
    for key, header, _ in present:
        table.add_column(header, justify="left" if key == "name" else "right",
                         no_wrap=key == "name")
    for i, r in enumerate(rows):
        rank = "T" if r.get("role") == "teacher" else str(i + (0 if rows[0].get("role") ==
                                                              "teacher" else 1))
        table.add_row(rank, *(short(r.get(k), f) for k, _, f in present))
    return table


def print_leaderboard(results: dict, report_dir: Path | str,
                      console: Console | None = None) -> None:
    console = console or Console()
    if not console.is_terminal:
        # Logs of scheduled jobs are not terminals: rich would squeeze the table to 80 columns
        # and cut every number; a log line can be as wide as the table needs.
        console.width = max(console.width, 140)
    d = results["dataset"]
    order = ", mixed tokenizers: ranked by bits per byte" if mixed_tokenizers(
        results["rows"]) else ""
    console.print(rich_table(results["rows"], f"leaderboard ({d['split']}, "
                             f"{d['positions']:,} positions{order})"))
    console.print(f"dataset: {d['path']}", highlight=False, soft_wrap=True)
    report = f"{str(report_dir).rstrip('/')}/{REPORT_MD}"  # a folder or a URI
    console.print(f"report:  {report}", highlight=False, soft_wrap=True)


def markdown_table(rows: list[dict]) -> str:
    present = [c for c in COLUMNS if any(not _missing(r.get(c[0])) for r in rows)]
    lines = ["| " + " | ".join(h for _, h, _ in present) + " |",
             "|" + "|".join("---" if k == "name" else "--:" for k, _, _ in present) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(fmt(r.get(k), f) for k, _, f in present) + " |")
    return "\n".join(lines)


def write_parquet(rows: list[dict], path: Path) -> None:
    flat = [{k: v for k, v in r.items() if not isinstance(v, (dict, list))} for r in rows]
    table = pl.DataFrame(flat, infer_schema_length=None).to_arrow()
    pq.write_table(table.replace_schema_metadata({"created_by": MARK}), path)


def _save_png(store: Store, name: str, fig) -> None:
    with store.writing(name) as tmp:
        fig.savefig(tmp, format="png", dpi=110, metadata={"Software": MARK})
    close(fig)


def write_report(results: dict, out) -> None:
    """The report files in REPORT_FILES order into a folder, URI or Store, each committed whole
    by the storage layer (renamed into place, or uploaded), results.json last: it is the
    completion record `pipeline run` checks."""
    store = Store.of(out)
    store.makedirs()
    rows = results["rows"]
    with store.writing(RESULTS_PARQUET) as tmp:
        write_parquet(rows, tmp)
    _save_png(store, PARETO_PNG, plot_pareto(rows))
    curves = plot_training_curves(rows)
    if curves is not None:
        _save_png(store, CURVES_PNG, curves)
    versions = over_versions.plot(results.get("over_versions"))
    if versions is not None:
        _save_png(store, over_versions.VERSIONS_PNG, versions)
    text = render_markdown(results, curves is not None) + "\n".join(
        over_versions.markdown(results, versions is not None, fmt))
    store.write_bytes(REPORT_MD, text.encode())
    store.write_json(RESULTS_JSON, results)


# report.md's note when a model reads its own tokenizer (pipeline/evaluation/cross_tokenizer.py)
MIXED_NOTE = (
    "- **Mixed tokenizers**: students are ranked by bits per byte. A model with its own "
    "tokenizer is scored on its re-tokenization of the same validation text, over the same "
    "bytes (from the end of each row's first teacher token). Its KL / agree / top-k mass are "
    "measured only where its token ends on a teacher token boundary (**aligned**: that share of "
    "its positions), with teacher ids mapped to its ids by their bytes; they are approximate "
    "(a teacher token with no student id of the same bytes counts as tail mass, and as a "
    "disagreement when it is the top-1). Its CE, ppl, acc, ECE and tok/s are per its own "
    "token.",)


def render_markdown(results: dict, has_curves: bool) -> str:
    d = results["dataset"]
    bench = results["settings"]["bench"]
    parts = [
        "# Distillation report", "", f"<!-- {MARK} -->", "",
        f"Dataset `{d['path']}` (teacher `{d.get('teacher') or 'none'}`, labels "
        f"{d['labels']}), validation split: {d['rows']:,} rows, {d['positions']:,} positions. "
        f"Created {results['created_at']}.", "",
        markdown_table(results["rows"]), "",
        "- **KL**: mean per-position KL(teacher‖student) over the teacher's top-k ids plus "
        "one tail bucket, nats (exact for that coarsening; the teacher's own is 0).",
        "- **agree**: share of positions where the student's top-1 is the teacher's top-1. "
        "**top-k mass**: student probability on the teacher's top-k ids.",
        "- **CE / ppl / acc**: cross-entropy (nats), perplexity and top-1 accuracy on the true "
        "next token. **ECE**: expected calibration error of the top-1 prediction, 15 bins.",
        "- **bits/B, ppl/B**: the same cross-entropy per byte of text (bits, and e^(nats/byte)): "
        "comparable across tokenizers, where per-token CE is not.",
        *(MIXED_NOTE if mixed_tokenizers(results["rows"]) else ()),
        f"- **tok/s, ms/batch**: median of {bench['repeats']} forwards after {bench['warmup']} "
        f"warm-up, batch {bench['batch_size']}×{bench['seq_len']} on {bench['device']}. "
        "**speed** = tok/s ÷ teacher tok/s; **size** = params ÷ teacher params.", "",
        f"![fidelity vs size]({PARETO_PNG})", ""]
    if has_curves:
        parts += [f"![training curves]({CURVES_PNG})", "",
                  "Training curves: next-token cross-entropy (train line, validation dots) of "
                  "every run, and the KD term of the distilled runs on its own axis; not the "
                  "total loss, which for a KD student mixes KD and CE.", ""]
    return "\n".join(parts)
