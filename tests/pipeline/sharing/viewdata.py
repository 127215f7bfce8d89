"""What the viewer tests share: datasets labeled by the bundled (trained) teacher, so the teacher's
probabilities are spread out as real ones are, and the dataset's own answer for a token, computed
here from the Parquet through the reference reader, independently of pipeline/sharing/view*.py."""

import html.parser
import math
from pathlib import Path

import pytest

from pipeline.softlabels.reader import SoftLabelDataset
from tests.conftest import REPO, run_cli

TEACHER = REPO / "data/teacher"


def label_bbc(out: Path) -> Path:
    """Plain text, top-k 8, format 1.2 (sorted ids): ~4 s on one CPU."""
    run_cli("label", "--corpus", "builtin:bbc-news", "--teacher", TEACHER, "--out", out,
            "--limit-docs", "12", "--top-k", "8", "--seq-len", "64", "--shard-rows", "8",
            "--batch-size", "8", "--quiet", "--device", "cpu", "--validation-fraction", "0.25")
    return out


def label_chat(out: Path) -> Path:
    """Chat, format 1.3: a loss mask (the headline only) and packed samples (segment ids)."""
    run_cli("label", "--corpus", "builtin:bbc-headlines", "--teacher", TEACHER,
            "--chat-template", REPO / "data/chat/headline.jinja", "--out", out,
            "--limit-docs", "12", "--top-k", "4", "--seq-len", "128", "--shard-rows", "4",
            "--batch-size", "4", "--quiet", "--device", "cpu", "--validation-fraction", "0.25")
    return out


@pytest.fixture(scope="module")
def bbc(tmp_path_factory) -> Path:
    return label_bbc(tmp_path_factory.mktemp("bbc") / "bbc")


@pytest.fixture(scope="module")
def chat(tmp_path_factory) -> Path:
    return label_chat(tmp_path_factory.mktemp("chat") / "chat")


def dataset_row(dataset: Path | str, shard_rel: str, row: int) -> dict:
    """Row `row` of a shard, decoded by the reference reader (tensors of one row)."""
    ds = SoftLabelDataset(dataset)
    shard = next(s for shards in ds.shards.values() for s in shards if s.rel == shard_rel)
    batch = ds.decode(ds.read_table(shard))
    return {k: v[row] for k, v in batch.items()}


def teacher_says(row: dict, t: int) -> tuple[str, float, list[tuple[int, float]]]:
    """("p", p) when token t is among position t − 1's stored entries, else ("tail", tail mass);
    with the position's stored entries (id, p) in rank order."""
    keep = row["label_mask"][t - 1].tolist() if "label_mask" in row else None
    entries = [(int(i), math.exp(float(lp))) for j, (i, lp) in enumerate(
        zip(row["topk_ids"][t - 1], row["topk_logprobs"][t - 1])) if keep is None or keep[j]]
    token = int(row["input_ids"][t])
    p = next((q for i, q in entries if i == token), None)
    return ("tail", float(row["tail_mass"][t - 1]), entries) if p is None else ("p", p, entries)


class Spans(html.parser.HTMLParser):
    """The token spans of a page: id → (attributes, text) as a browser would parse them."""

    def __init__(self, page: str):
        super().__init__(convert_charrefs=True)
        self.spans: dict[str, tuple[dict, str]] = {}
        self.rows: list[dict] = []
        self.tags: list[tuple[str, dict]] = []
        self._open: str | None = None
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append((tag, a))
        if tag == "span" and "tok" in a.get("class", "").split():
            self._open = a["id"]
            self.spans[a["id"]] = (a, "")
        elif tag == "div" and "row" in a.get("class", "").split():
            self.rows.append(a)

    def handle_data(self, data):
        if self._open:
            attrs, text = self.spans[self._open]
            self.spans[self._open] = (attrs, text + data)

    def handle_endtag(self, tag):
        if tag == "span":
            self._open = None
