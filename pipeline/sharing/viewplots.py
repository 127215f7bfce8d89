"""The viewer's plots, drawn with matplotlib (Agg) as inline SVG: nothing the page loads from
elsewhere, and text that stays sharp when zoomed. Each function returns one `<svg>` element, or
None when the dataset has nothing to plot (a tokens-only dataset has no top-k mass)."""

import io

import matplotlib

matplotlib.use("Agg")  # no display: the page is written, never shown here
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
import numpy as np  # noqa: E402

from pipeline.sharing.viewsample import Sample  # noqa: E402

SIZE = (4.6, 2.8)  # inches; the page lays the plots out two a row
COLOR = "#2563eb"


def _svg(fig) -> str:
    """The figure as an `<svg>` element (the XML prologue and doctype dropped: it is inlined);
    text stays text (fonttype none: the browser's font), a tenth of the size of glyph paths."""
    buf = io.StringIO()
    with matplotlib.rc_context({"svg.hashsalt": "softlabel-view", "svg.fonttype": "none"}):
        fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]


def _axes(title: str, xlabel: str, ylabel: str):
    fig, ax = plt.subplots(figsize=SIZE)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel, fontsize=9)
    ax.set_ylabel(ylabel, fontsize=9)
    ax.tick_params(labelsize=8)
    ax.spines[["top", "right"]].set_visible(False)
    return fig, ax


def histogram(values: list[np.ndarray], title: str, xlabel: str,
              bins: np.ndarray | int = 40) -> str | None:
    data = np.concatenate(values) if values else np.empty(0)
    if data.size == 0:
        return None
    fig, ax = _axes(title, xlabel, "positions")
    ax.hist(data, bins=bins, color=COLOR)
    ax.axvline(float(data.mean()), color="#111827", lw=1, ls="--",
               label=f"mean {data.mean():.3f}")
    ax.legend(fontsize=8, frameon=False)
    return _svg(fig)


def mass_plot(sample: Sample) -> str | None:
    return histogram(sample.mass, "Top-k mass per labeled position", "Σ p of the stored entries",
                     np.linspace(0, 1, 41))


def entropy_plot(sample: Sample) -> str | None:
    return histogram(sample.entropy, "Teacher entropy (stored entries + tail)",
                     "nats (a lower bound: the tail counts as one outcome)")


def bytes_plot(sample: Sample) -> str | None:
    """Stored bytes per position, by column (from the sampled shards' Parquet footers)."""
    if not sample.footer_positions:
        return None
    names = sorted(sample.column_bytes, key=sample.column_bytes.get)
    per = [sample.column_bytes[n] / sample.footer_positions for n in names]
    fig, ax = _axes(f"Bytes per position: {sum(per):.2f} (sampled shards)", "bytes", "")
    ax.barh(names, per, color=COLOR)
    for y, v in enumerate(per):
        ax.text(v, y, f" {v:.2f}", va="center", fontsize=7)
    return _svg(fig)


def splits_plot(manifest: dict) -> str | None:
    """Bytes of each split, with its rows and positions written on the bar (from the manifest)."""
    splits = manifest["splits"]
    if not splits:
        return None
    names = list(splits)
    mib = [sum(s["bytes"] for s in splits[n]) / 2**20 for n in names]
    fig, ax = _axes("Split sizes", "MiB", "")
    ax.barh(names, mib, color=COLOR)
    for y, n in enumerate(names):
        rows = sum(s["rows"] for s in splits[n])
        positions = sum(s.get("positions", 0) for s in splits[n])
        ax.text(mib[y], y, f" {rows:,} rows, {positions:,} positions", va="center", fontsize=7)
    ax.margins(x=0.6)
    return _svg(fig)


def all_plots(sample: Sample, manifest: dict) -> list[str]:
    drawn = (mass_plot(sample), entropy_plot(sample), bytes_plot(sample), splits_plot(manifest))
    return [p for p in drawn if p is not None]
