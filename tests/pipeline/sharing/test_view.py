"""`pipeline view`: token text and escaping, "p ≤ tail", the sampled figures, the page's
self-containment, local and S3 (moto) datasets, and its one-line refusals. Every token the page
shows is checked against the dataset itself, read through the reference reader (viewdata.py).
The page in a real browser: test_view_browser.py."""

import re

import numpy as np
import pytest
from tokenizers import Tokenizer

from pipeline.io.storage import Store
from pipeline.sharing import viewsample
from pipeline.sharing.view import view
from pipeline.sharing.viewpage import CSP, GENERATOR, render_page
from pipeline.sharing.viewsample import choose_split, read_sample
from pipeline.sharing.viewtokens import TokenText, coarse_entropy, show_bytes, visible_text
from pipeline.softlabels.reader import SoftLabelDataset
from tests.pipeline.sharing import viewdata
from tests.pipeline.sharing.viewdata import Spans, dataset_row, teacher_says

bbc, chat = viewdata.bbc, viewdata.chat  # module-scoped fixtures shared with the browser test


# ---- token text ---------------------------------------------------------------------------------

def test_visible_text_and_byte_fragments():
    assert visible_text("a\nb\tc\x00") == "a↵\nb→\tc\\x00"
    assert show_bytes(" caf\xe9".encode()).text == " café"
    assert show_bytes(b"\xe2\x80").text == "⟨e2 80⟩" and show_bytes(b"\xe2\x80").kind == "bytes"
    assert show_bytes(b"<a href='x'>&amp;").text == "<a href='x'>&amp;"  # escaped by the page


def test_token_text_of_a_real_tokenizer(bbc):
    tok = Tokenizer.from_file(str(bbc / "tokenizer.json"))
    text = TokenText(tok)
    eos = tok.token_to_id("<|endoftext|>")
    assert (text(eos).text, text(eos).kind) == ("<|endoftext|>", "special")
    word = tok.encode(" market").ids
    assert len(word) == 1 and text(word[0]).text == " market" == tok.decode(word)
    fragment = tok.token_to_id("â")  # the byte 0xe2 in the byte-level alphabet
    assert text(fragment).text == "⟨e2⟩" and text(fragment).kind == "bytes"
    assert TokenText(None)(17).text == "#17"


def test_hostile_token_text_is_escaped_and_round_trips():
    """Tokens may hold markup, quotes and `</script>`: the page shows them as text, and the
    JSON the popup reads cannot end its script element."""
    hostile = "</script><img src=x onerror=alert(1)>&\"'"
    row = {"shard": "s<x>", "row": 0, "masked": False, "segments": False,
           "tokens": [{"id": 1, "text": hostile, "kind": "text", "state": "p", "p": 0.5,
                       "p_text": "0.5", "tail": 0.1, "tail_text": "0.1",
                       "alts": [{"id": 1, "text": hostile, "kind": "text", "p": 0.5,
                                 "p_text": "0.5"}]}]}
    page = render_page(name="<b>", format="1.2", labels="topk/1", rows=[row], split="v",
                       positions=1, row_groups=1, seed=0, card="", plots=[], masked=False,
                       segmented=False)
    spans = Spans(page)
    assert spans.spans["r0-t0"][1] == hostile
    assert page.count("</script>") == 2  # the JSON blob's and the script's own, no other
    assert not [t for t, a in spans.tags if t == "img"]


# ---- what the page says about each token --------------------------------------------------------

def test_every_shown_token_is_what_the_dataset_says(bbc):
    ds = SoftLabelDataset(bbc)
    text = TokenText(Tokenizer.from_file(str(bbc / "tokenizer.json")))
    sample = read_sample(ds, "validation", 6, 0, text)
    states = set()
    for row in sample.rows:
        want = dataset_row(bbc, row["shard"], row["row"])
        assert [t["id"] for t in row["tokens"]] == want["input_ids"].tolist()
        assert row["tokens"][0]["state"] == "first"
        for t, tok in enumerate(row["tokens"][1:], start=1):
            state, value, entries = teacher_says(want, t)
            states.add(tok["state"])
            assert tok["state"] == state
            assert [a["id"] for a in tok["alts"]] == [i for i, _ in entries]  # rank order
            if state == "p":
                assert tok["p"] == pytest.approx(value, rel=1e-6)
                assert float(tok["p_text"]) == pytest.approx(value, rel=1e-3)
            else:
                assert tok["p_text"] == f"p ≤ tail ({value:.4g})"
    assert states == {"p", "tail"}


def test_chat_rows_show_the_loss_mask(chat):
    ds = SoftLabelDataset(chat)
    text = TokenText(Tokenizer.from_file(str(chat / "tokenizer.json")))
    sample = read_sample(ds, "train", 4, 0, text)
    assert sample.rows and all(r["masked"] and r["segments"] for r in sample.rows)
    for row in sample.rows:
        want = dataset_row(chat, row["shard"], row["row"])
        mask, segments = want["loss_mask"].tolist(), want["segment_ids"].tolist()
        for t, tok in enumerate(row["tokens"][1:], start=1):
            assert (tok["state"] == "untrained") == (not mask[t - 1])
            assert tok["seg"] == segments[t]
            if mask[t - 1]:
                assert tok["state"] == teacher_says(want, t)[0]
    # only the mask's positions count in the figures
    assert sample.positions == sum(int(dataset_row(chat, s.rel, r)["loss_mask"].sum())
                                   for s in ds.split_shards("train") for r in range(s.rows))


def test_a_tokens_only_dataset_shows_its_text(tmp_path, cli):
    """`label --top-k 0` stores no labels: the page shows the text, unshaded, and no figure of
    the teacher (there is none)."""
    ds = tmp_path / "tokens"
    code, _, err = cli("label", "--corpus", "builtin:bbc-news", "--top-k", "0", "--tokenizer",
                       viewdata.TEACHER / "tokenizer.json", "--out", ds, "--limit-docs", "3",
                       "--seq-len", "64", "--quiet")
    assert code == 0, err
    code, _, err = cli("view", ds, "--out", tmp_path / "v.html", "--rows", "2")
    assert code == 0, err
    page = (tmp_path / "v.html").read_text()
    spans = Spans(page).spans
    assert {a["class"] for a, _ in spans.values()} <= {"tok s-none k-text", "tok s-none k-special"}
    assert page.count("<svg") == 2 and "none (tokens only)" in page  # bytes and split sizes
    tok = Tokenizer.from_file(str(ds / "tokenizer.json"))
    first = dataset_row(ds, *[(r["data-shard"], int(r["data-shard-row"]))
                              for r in Spans(page).rows][0])
    assert "".join(spans[f"r0-t{t}"][1] for t in range(64)) == \
        tok.decode(first["input_ids"].tolist(), skip_special_tokens=False).replace("\n", "↵\n")

def test_coarse_entropy():
    p = np.array([[0.5, 0.25], [0.25, 0.25]])
    tail = np.array([0.25, 0.5])
    want = [-(0.5 * np.log(0.5) + 2 * 0.25 * np.log(0.25)),
            -(2 * 0.25 * np.log(0.25) + 0.5 * np.log(0.5))]
    assert np.allclose(coarse_entropy(p, tail), want)
    assert coarse_entropy(np.full((1, 8), 1 / 8), np.zeros(1))[0] == pytest.approx(np.log(8))


def test_the_sample_is_bounded_and_seeded(bbc, monkeypatch):
    ds = SoftLabelDataset(bbc)
    monkeypatch.setattr(viewsample, "STATS_POSITIONS", 100)
    monkeypatch.setattr(viewsample, "MAX_ROW_GROUPS", 2)
    sample = read_sample(ds, "train", 3, 5, TokenText(None))
    assert sample.positions == 100 and sample.row_groups <= 2 and len(sample.rows) == 3
    again = read_sample(ds, "train", 3, 5, TokenText(None))
    assert [(r["shard"], r["row"]) for r in again.rows] == \
        [(r["shard"], r["row"]) for r in sample.rows]
    assert choose_split(ds, None) == "validation"


# ---- the command ----------------------------------------------------------------------------

def test_view_writes_one_self_contained_page(bbc, tmp_path, cli):
    out = tmp_path / "view.html"
    code, stdout, err = cli("view", bbc, "--out", out, "--rows", "5")
    assert code == 0, err
    assert re.fullmatch(r"wrote .*view\.html \(\d+ KiB\): 5 rows of validation, figures from "
                        r"[\d,]+ positions in \d+ row groups\n", stdout)
    page = out.read_text()
    spans = Spans(page)
    assert len(spans.rows) == 5 and len(spans.spans) == 5 * 64
    meta = {a.get("name") or a.get("http-equiv"): a.get("content") for t, a in spans.tags
            if t == "meta"}
    assert meta["generator"] == GENERATOR and meta["Content-Security-Policy"] == CSP
    loads = [(t, a) for t, a in spans.tags if {"src", "href"} & set(a) or t in ("link", "img")]
    assert loads == []  # no resource from anywhere: scripts, styles and plots are inline
    assert page.count("<svg") == 4 and "Mean top-k mass" in page
    assert not list(tmp_path.glob("*.tmp"))
    before = out.read_bytes()  # a page the tool wrote is replaced; the same seed, the same page
    assert cli("view", bbc, "--out", out, "--rows", "5")[0] == 0
    assert out.read_bytes() == before


def test_view_from_and_to_s3(bbc, tmp_path, cli):
    from tests.interop import moto_s3

    local = tmp_path / "local.html"
    view(str(bbc), str(local), rows=4)
    with moto_s3("bucket", SOFTLABELS_CACHE=str(tmp_path / "cache")):
        assert cli("publish", bbc, "s3://bucket/pub")[0] == 0
        code, _, err = cli("view", "s3://bucket/pub", "--out", "s3://bucket/pages/v.html",
                           "--rows", "4")
        assert code == 0, err
        remote = Store("s3://bucket/pages").read_text("v.html")
        code, _, err = cli("view", "s3://bucket/nope", "--out", tmp_path / "x.html")
    assert code == 1 and err.count("\n") == 1
    assert "s3://bucket/nope does not exist" in err
    shown = [{k: a["data-token-id"] for k, (a, _) in Spans(p).spans.items()}
             for p in (local.read_text(), remote)]
    assert shown[0] == shown[1] and len(shown[0]) == 4 * 64  # the same rows, read from S3
    assert not (tmp_path / "x.html").exists()


@pytest.mark.parametrize("case", ["not a dataset", "no such split", "folder missing",
                                  "out is a folder", "a file it did not write", "inside"])
def test_view_refusals_are_one_line_and_write_nothing(case, bbc, tmp_path, cli):
    foreign = tmp_path / "notes.html"
    foreign.write_text("<p>my notes</p>")
    (tmp_path / "empty").mkdir()
    args, says = {
        "not a dataset": ([tmp_path / "empty", "--out", tmp_path / "v.html"],
                          "is not a soft-label dataset"),
        "no such split": ([bbc, "--out", tmp_path / "v.html", "--split", "test"],
                          "--split test: the dataset has splits ['train', 'validation']"),
        "folder missing": ([bbc, "--out", tmp_path / "no/v.html"], "does not exist; create"),
        "out is a folder": ([bbc, "--out", tmp_path], "is a folder; name a file"),
        "a file it did not write": ([bbc, "--out", foreign], "exists and is not a page"),
        "inside": ([bbc, "--out", bbc / "v.html"], "lies inside the dataset"),
    }[case]
    before = sorted(p.name for p in tmp_path.iterdir())
    code, _, err = cli("view", *args)
    assert code == 1 and len(err.strip().splitlines()) == 1 and says in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert foreign.read_text() == "<p>my notes</p>" and not (bbc / "v.html").exists()
