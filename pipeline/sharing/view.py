"""`pipeline view DS --out view.html`: one static, self-contained HTML page to look inside a
dataset (local or a URI): its card, plots of a sample (top-k mass, teacher entropy, bytes per
position, split sizes) and a text browser where each token is shaded by the teacher's
probability of it, with the stored top-k on hover.

The page needs no server and loads nothing (viewpage.py: inline CSS/JS/SVG and a CSP that
forbids loads). Memory is bounded by a sample of row groups (viewsample.py). The page is
written whole (the storage layer's atomic write), and an existing file at --out is replaced
only when this tool wrote it (its generator mark): never destroy what the tool did not write.
"""

from pathlib import Path

from tokenizers import Tokenizer

from pipeline.errors import PipelineError
from pipeline.io.hashing import sha256_bytes
from pipeline.io.storage import Store, is_remote
from pipeline.io.uris import redact
from pipeline.sharing.viewpage import GENERATOR, card_html, render_page
from pipeline.sharing.viewplots import all_plots
from pipeline.sharing.viewsample import Sample, choose_split, read_sample
from pipeline.sharing.viewtokens import TokenText
from pipeline.softlabels.card import render_card
from pipeline.softlabels.layout import TOKENIZER
from pipeline.softlabels.reader import SoftLabelDataset

MARK = f'<meta name="generator" content="{GENERATOR}">'.encode()
MARK_WITHIN = 4096  # bytes of an existing file searched for the mark


def view(dataset: str, out: str, rows: int = 20, split: str | None = None,
         seed: int = 0) -> tuple[Sample, int]:
    """Write the page for DATASET to OUT; returns the sample shown and the page's bytes."""
    ds = SoftLabelDataset(dataset)
    parent, name = _out_location(dataset, out)  # refused before any shard is read
    split = choose_split(ds, split)
    sample = read_sample(ds, split, rows, seed, TokenText(dataset_tokenizer(ds)))
    page = render_page(name=redact(str(dataset)).rstrip("/").rsplit("/", 1)[-1],
                       format=ds.manifest["format_version"], labels=_labels(ds.manifest),
                       rows=sample.rows, split=split, positions=sample.positions,
                       row_groups=sample.row_groups, seed=seed,
                       card=card_html(_card_markdown(ds.manifest)),
                       plots=all_plots(sample, ds.manifest),
                       masked=bool(ds.spec.loss_mask), segmented=bool(ds.spec.segments))
    data = page.encode()
    parent.write_bytes(name, data)
    return sample, len(data)


def _labels(m: dict) -> str:
    labels = m["labels"]
    return "none (tokens only)" if labels["mode"] == "none" else \
        f"{labels['mode']}/{labels['k']} {labels['logprob_encoding']}"


def _card_markdown(m: dict) -> str:
    """The card the labeler writes (softlabels/card.py), from the manifest, without the heading
    the page already has."""
    try:
        return render_card(m).split("\n", 1)[1]
    except (KeyError, TypeError, ValueError, AttributeError):  # a manifest of an older tool
        return "The manifest lacks fields the card needs; see `pipeline inspect`."


def dataset_tokenizer(ds: SoftLabelDataset) -> Tokenizer | None:
    """The dataset's tokenizer.json, checked against the manifest's sha256; None when the
    dataset has none (the page then shows token ids)."""
    if not ds.store.isfile(TOKENIZER):
        return None
    data = ds.store.read_bytes(TOKENIZER)
    where = ds.store.locate(TOKENIZER)
    if sha256_bytes(data) != ds.tokenizer_sha256:
        raise PipelineError(f"{where}: sha256 differs from the manifest's tokenizer.sha256 (the "
                            "file changed or is corrupt); re-download the dataset")
    try:
        return Tokenizer.from_str(data.decode())
    except Exception as exc:  # tokenizers raises a bare Exception on bad JSON
        raise PipelineError(f"{where} is not a valid tokenizers JSON ({exc}); re-download "
                            "the dataset") from exc


def _out_location(dataset: str, out: str) -> tuple[Store, str]:
    """(folder store, file name) of --out, refused before any work when the page could not be
    written there or would replace a file this tool did not write."""
    text = str(out).rstrip("/")
    folder, _, name = text.rpartition("/")
    if not name or name in (".", ".."):
        raise PipelineError(f"--out {redact(out)}: name a file, e.g. view.html")
    parent = Store(folder or ".")
    if not is_remote(text):
        _check_local_out(Path(dataset), Path(text))
    if parent.isdir(name):
        raise PipelineError(f"--out {redact(out)} is a folder; name a file, e.g. "
                            f"{redact(text)}/view.html")
    if parent.isfile(name) and MARK not in parent.read_bytes(name)[:MARK_WITHIN]:
        raise PipelineError(f"--out {redact(out)} exists and is not a page `pipeline view` "
                            "wrote; refusing to replace it: choose another path or move it")
    return parent, name


def _check_local_out(dataset: Path, out: Path) -> None:
    folder = out.parent
    if not folder.is_dir():
        what = "is a file" if folder.exists() else "does not exist"
        raise PipelineError(f"--out {out}: the folder {folder} {what}; create the folder or "
                            "pick another path")
    if not is_remote(str(dataset)) and out.resolve().is_relative_to(dataset.resolve()):
        raise PipelineError(f"--out {out} lies inside the dataset {dataset}: a dataset holds "
                            "only what the labeler wrote; write the page elsewhere")
