"""The generated README.md dataset card: what a consuming team needs to trust and load the data."""

from pipeline.io.storage import Store
from pipeline.io.uris import redact
from pipeline.softlabels.layout import CARD, CARD_HEADING, SHARDS_DIR, TOKENIZER


def render_card(m: dict) -> str:
    teacher = m.get("teacher") or {}
    labels, summary, corpus = m["labels"], m["summary"], m["corpus"]
    splits = "\n".join(f"| {s} | {len(sh)} | {sum(x['rows'] for x in sh):,} | "
                       f"{sum(x['positions'] for x in sh):,} | {sum(x['bytes'] for x in sh):,} |"
                       for s, sh in m["splits"].items())
    mass = summary.get("mean_topk_mass")
    return f"""{CARD_HEADING}
Made by softlabel-pipeline {m['tool']['version']} on {m['created_at']}
(format {m['format_version']}, spec: docs/FORMAT.md of softlabel-pipeline).

- **Teacher**: {redact(teacher.get('spec', 'none (tokenized only)'))}
  · sha256 `{teacher.get('sha256', '-')}` · {teacher.get('parameters', '-')} parameters
  · {teacher.get('dtype', '-')}
- **Tokenizer**: `{TOKENIZER}` · sha256 `{m['tokenizer']['sha256']}` · vocab
  {m['tokenizer']['vocab_size']}
- **Corpus**: `{redact(corpus['uri'])}` · {corpus['documents_read']:,} documents read,
  {corpus['documents_skipped_empty']:,} empty skipped, {corpus['non_utf8_documents']:,} with
  non-UTF-8 bytes replaced · validation fraction {corpus['validation_fraction']}
- **Labels**: mode `{labels['mode']}` · k = {labels['k']} · ids `{labels['id_type']}` ·
  log-probs `{labels['logprob_encoding']}` · seq_len {m['seq_len']}{_extras(labels)}
- **Mean top-k mass**: {'-' if mass is None else f'{mass:.4f}'} ·
  **bytes/position**: {summary['bytes_per_position']:.2f}{_imported(m)}

| split | shards | rows | positions | bytes |
|---|---|---|---|---|
{splits}

## Load it

```python
import polars as pl
df = pl.read_parquet("{SHARDS_DIR}/train/*.parquet")   # one row = one packed sequence

import pyarrow.dataset as pads
table = pads.dataset("{SHARDS_DIR}/validation", format="parquet").to_table()
```

{_columns(labels)}
Check integrity with `pipeline validate .`.
"""


DERIVED = "derived"  # labels.tail_mass_source of an import that gave no tail mass


def imported_note(m: dict) -> str | None:
    """What `inspect` and the cards say of a dataset `pipeline import` made, else None: where
    it came from, and whether its tail mass is the source's or derived (1 − Σ stored)."""
    imported = m.get("imported")
    if not isinstance(imported, dict):
        return None
    tail = ("derived as 1 − Σ stored probabilities (the source gave none)"
            if (m.get("labels") or {}).get("tail_mass_source") == DERIVED
            else "as the source stored it")
    sources = imported.get("sources") or {}
    files = ", ".join(f"{split}: {redact(src)}" for split, src in sources.items()) or "-"
    return f"imported from {imported.get('format', '-')} ({files}); tail mass {tail}"


def _imported(m: dict) -> str:
    note = imported_note(m)
    return f"\n- **Imported**: {note}" if note else ""


def _columns(labels: dict) -> str:
    """Which columns hold the labels, and in what order (1.2 stores ids ascending)."""
    if labels.get("id_encoding") == "sorted_delta":
        return ("Position t's `label_id_deltas`/`label_logprobs` (flattened) describe the "
                "teacher's\ndistribution of token t+1, in **ascending id order** with ids "
                "delta-coded (format\n1.2): decode them to rank order with the helper in "
                "docs/FORMAT.md (\"Loading with\nother tools\"); `tail_mass` is the probability "
                "outside the stored ids.")
    return ("Position t's `topk_ids`/`topk_logprobs` (flattened, k per position) describe the "
            "teacher's\ndistribution of token t+1; `tail_mass` is the probability outside the "
            "stored ids.")


def _extras(labels: dict) -> str:
    """Format 1.1 mode/encoding parameters (top_p, samples, ...), if any."""
    from pipeline.softlabels.schema import OPTIONAL_FIELDS

    extra = [f"{k} = {labels[k]}" for k in OPTIONAL_FIELDS if k in labels]
    return (" · " + " · ".join(extra)) if extra else ""


def write_card(root, manifest: dict) -> None:
    """README.md next to the manifest; `root` is a folder, a URI or a pipeline.io.storage.Store."""
    Store.of(root).write_bytes(CARD, render_card(manifest).encode())
