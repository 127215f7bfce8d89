"""The report's figures: fidelity against size (with its Pareto front) and training curves.

Split from report.py (tables and files) so each module stays one concern; the figures read the
same plain row dicts as the tables.
"""

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: scheduled jobs and CI have no display
import matplotlib.pyplot as plt  # noqa: E402

from pipeline.training.layout import CONFIG, METRICS  # noqa: E402


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))

def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points no other point beats on both size (x) and KL (y), sorted by size."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], points[i][1]))
    front, best = [], math.inf
    for i in order:
        if points[i][1] < best:
            front.append(i)
            best = points[i][1]
    return front


def plot_pareto(rows: list[dict]):
    """Fidelity (tail KL, or CE without soft labels) against parameters, the Pareto front
    drawn."""
    metric = "kl_tail" if any(not _missing(r.get("kl_tail")) for r in rows) else "ce"
    pts = [r for r in rows if not _missing(r.get(metric))]
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    students = [r for r in pts if r.get("role") != "teacher"]
    xy = [(r["parameters"], r[metric]) for r in students]
    ax.scatter([x for x, _ in xy], [y for _, y in xy], color="tab:blue", label="student")
    front = [xy[i] for i in pareto_front(xy)]
    if len(front) > 1:
        ax.plot([x for x, _ in front], [y for _, y in front], color="tab:blue", alpha=0.4,
                label="Pareto front")
    for r in pts:
        ax.annotate(r["name"], (r["parameters"], r[metric]), textcoords="offset points",
                    xytext=(4, 4), fontsize=8)
    for r in (r for r in pts if r.get("role") == "teacher"):
        ax.scatter([r["parameters"]], [r[metric]], marker="*", s=160, color="tab:red",
                   label="teacher")
    ax.set_xscale("log")
    ax.set_xlabel("parameters (log scale)")
    ax.set_ylabel("KL(teacher‖student) over top-k ∪ tail, nats" if metric == "kl_tail"
                  else "cross-entropy, nats")
    ax.set_title("fidelity vs size (lower-left is better)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def read_metrics_jsonl(path: Path) -> list[dict]:
    """Records of a run's metrics.jsonl; a torn last line (killed run) is skipped."""
    records = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


# (metric key for the line, metric key for the dots, panel title): quantities that mean the same
# for every run. Not the total loss: a KD student's is α·KD + (1−α)·CE, a baseline's pure CE, and
# one axis holding both reads as "distillation halves the loss".
CURVE_PANELS = (("ce", "val_ce", "cross-entropy of the next token, nats (train line, validation "
                 "dots)"),
                ("kd", "val_kd", "KD term of the loss (runs that distil), nats"))


def training_curves(rows: list[dict]) -> list[list[tuple[str, str, list, list]]]:
    """Per panel of CURVE_PANELS: (label, metric, steps, values) of every run that logged it."""
    panels: list[list] = [[] for _ in CURVE_PANELS]
    for r in rows:
        if r.get("role") == "teacher" or not r.get("path"):
            continue
        recs = read_metrics_jsonl(Path(r["path"]) / METRICS)
        label = f"{r['name']} ({_loss_kind(Path(r['path']))})"
        for series, keys in zip(panels, CURVE_PANELS):
            for key in keys[:2]:
                pts = [(x["step"], x[key]) for x in recs if "step" in x and key in x]
                if pts:
                    series.append((label, key, [s for s, _ in pts], [v for _, v in pts]))
    return panels


def _loss_kind(run_dir: Path) -> str:
    """The run's [loss] kind from its config.toml (the KD terms of two kinds differ)."""
    import tomllib

    try:
        return tomllib.loads((run_dir / CONFIG).read_text())["loss"]["kind"]
    except (OSError, KeyError, TypeError, tomllib.TOMLDecodeError):
        return "?"


def plot_training_curves(rows: list[dict]):
    """Cross-entropy (train and validation) and, where it exists, the KD term against step for
    every run, each on its own axis; None if no run has metrics."""
    panels = [(title, series) for (_, _, title), series
              in zip(CURVE_PANELS, training_curves(rows)) if series]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.4), squeeze=False)
    for ax, (title, series) in zip(axes[0], panels):
        colors: dict[str, str] = {}  # a run's validation dots take its training line's colour
        for label, key, steps, values in series:
            dots = key.startswith("val_")
            line = ax.plot(steps, values, "o" if dots else "-", markersize=4,
                           color=colors.get(label), label=None if dots else label)[0]
            colors.setdefault(label, line.get_color())
        ax.set_xlabel("step")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def close(fig) -> None:
    """Free a saved figure (pyplot keeps every open one)."""
    plt.close(fig)
