"""The card of a published dataset: README.md with Hugging Face YAML front matter.

The Hub (and `datasets.load_dataset(FOLDER)` with no arguments) reads the front matter's
`configs` to find the data. It lists each split's shard files explicitly, as the manifest does:
a glob would also pick up files no version references (a shard `gc` has not removed yet, a
stray upload), and the manifest, not the folder, is the dataset. The body is the labeler's card
(pipeline/softlabels/card.py) plus what a receiving team needs to use the data without this
tool: the columns, how to decode them, provenance and the licence terms.
"""

import json

from pipeline.io.uris import redact
from pipeline.softlabels.card import imported_note, render_card

TAGS = ["knowledge-distillation", "soft-labels", "teacher-logprobs", "softlabel-pipeline"]
SIZES = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
         (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"),
         (1_000_000_000, "100M<n<1B")]
UNKNOWN = "unknown"


def size_category(rows: int) -> str:
    return next((name for limit, name in SIZES if rows < limit), "n>1B")


def front_matter(m: dict) -> str:
    """YAML (strings written as JSON, which YAML reads as is) for the Hub and `datasets`."""
    lic = (m.get("license") or {}).get("dataset") or UNKNOWN
    lines = ["---", f"license: {json.dumps(lic)}", "tags:", *[f"- {t}" for t in TAGS],
             "size_categories:", f"- {size_category(m['summary']['rows'])}",
             "configs:", "- config_name: default", "  data_files:"]
    for split, shards in m["splits"].items():
        if shards:
            lines += [f"  - split: {split}", "    path:",
                      *[f"    - {json.dumps(s['path'])}" for s in shards]]
    return "\n".join(lines + ["---"])  # the card heading follows on the next line


def render_published_card(m: dict) -> str:
    """The whole README.md of a published dataset (front matter first, the Hub requires it)."""
    return "\n".join([front_matter(m), render_card(m), columns(m), decoding(m),
                      provenance(m), licenses(m), audit(m)]).rstrip() + "\n"


def columns(m: dict) -> str:
    labels = m["labels"]
    sorted_ids = labels.get("id_encoding") == "sorted_delta"
    rows = [("input_ids", "the tokens of one packed row (`seq_len` of them)"),
            ("doc_ids", "ids of the source documents whose tokens appear in the row")]
    if labels["mode"] != "none":
        ids, lps = (("label_id_deltas", "label_logprobs") if sorted_ids
                    else ("topk_ids", "topk_logprobs"))
        order = ("ascending id order, ids delta-coded (first id, then gaps)" if sorted_ids
                 else "rank order, most probable first")
        rows += [(ids, f"per position, the stored next-token ids, {order}"),
                 (lps, f"their teacher log-probabilities (natural log, temperature 1, "
                       f"`{labels['logprob_encoding']}`)"),
                 ("tail_mass", "per position, the teacher probability outside the stored ids"
                               + (" (derived: 1 − Σ stored)" if derived_tail(m) else ""))]
        if labels["mode"] != "topk" or labels.get("loss_mask"):
            rows.append(("label_counts", "entries stored at each position"))
    if labels.get("loss_mask"):
        rows.append(("loss_mask", "true where the position is trained on"))
    if labels.get("segments"):
        rows.append(("segment_ids", "the sample each position belongs to (0 = padding)"))
    table = "\n".join(f"| `{c}` | {what} |" for c, what in rows)
    return f"## Columns\n\n| column | meaning |\n|---|---|\n{table}\n"


def derived_tail(m: dict) -> bool:
    return (m.get("labels") or {}).get("tail_mass_source") == "derived"


def decoding(m: dict) -> str:
    labels = m["labels"]
    if labels["mode"] == "none":
        return "## Decoding\n\nTokens only: no labels are stored.\n"
    k, L = labels["k"], m["seq_len"]
    scale = (f" * ({labels['logprob_u8_min']} / 255)  # u8 codes → log-probabilities"
             if labels["logprob_encoding"] == "u8" else "")
    if labels.get("id_encoding") != "sorted_delta":
        return (f"## Decoding\n\nPosition t of a row holds entries `t*{k}` … `t*{k}+{k - 1}` "
                f"of `topk_ids`/`topk_logprobs`{scale and ' (u8: multiply by lo/255)'}, most "
                "probable first: they describe the teacher's distribution of token t+1.\n")
    counts = ("np.full(L, k)" if labels["mode"] == "topk" and not labels.get("loss_mask")
              else "row['label_counts']")
    return f"""## Decoding (format 1.2: sorted ids)

Each position's entries are stored in **ascending id order**, ids delta-coded: `id_j` is the
sum of the position's deltas up to j. Rank order is log-probability descending, ties by id.
Position t describes the teacher's distribution of token t+1 (the last position predicts the
token after the row).

```python
import numpy as np
from datasets import load_dataset

ds = load_dataset(".").with_format("numpy")          # this folder; splits from the card
row = ds["train"][0]
L, k = {L}, {k}
counts = np.asarray({counts}, dtype=np.int64)        # entries per position
pos = np.repeat(np.arange(L), counts)
start = np.cumsum(counts) - counts
deltas = row["label_id_deltas"].astype(np.int64)
lp = row["label_logprobs"].astype(np.float64){scale}
total = np.cumsum(deltas)
ids = total - (total[start] - deltas[start])[pos]    # absolute ids, per position
order = np.lexsort((ids, -lp, pos))                   # rank order within each position
ids, lp = ids[order], lp[order]                       # position t: ids[start[t]:start[t]+counts[t]]
```
"""


def provenance(m: dict) -> str:
    teacher, corpus, tok = m.get("teacher") or {}, m.get("corpus") or {}, m["tokenizer"]
    pub = m.get("published") or {}
    subset = m.get("subset")
    lines = [f"- corpus: `{redact(corpus.get('uri', '-'))}` · fingerprint "
             f"`{corpus.get('fingerprint', '-')}`",
             f"- teacher: `{redact(teacher.get('spec', '-'))}` · family "
             f"{teacher.get('family', '-')} · sha256 `{teacher.get('sha256', '-')}`",
             f"- tokenizer: `tokenizer.json` in this folder · sha256 `{tok['sha256']}` · "
             f"vocab {tok['vocab_size']}",
             f"- plan fingerprint `{m.get('plan_fingerprint', '-')}`"]
    if pub:
        lines.append(f"- published {pub.get('published_at', '-')}"
                     + (f" from version {pub['version']}" if pub.get("version") else ""))
    if subset:
        lines.append(f"- **a subset** of dataset `{subset.get('of_plan_fingerprint')}` "
                     f"({subset.get('description', '')})")
    if note := imported_note(m):
        lines.append(f"- {note}")
    return "## Provenance\n\n" + "\n".join(lines) + "\n"


def licenses(m: dict) -> str:
    lic = m.get("license") or {}
    fields = [("dataset", "this dataset"), ("corpus", "the corpus"),
              ("teacher", "the teacher model")]
    lines = [f"- {what}: {lic.get(key) or UNKNOWN}" for key, what in fields]
    note = ""
    if any(not lic.get(key) for key, _ in fields):
        note = ("\n**Warning:** a licence is unknown. Many teacher licences restrict training "
                "other models on their outputs; check the teacher's and the corpus's terms "
                "before training on these labels.\n")
    return "## Licenses\n\n" + "\n".join(lines) + "\n" + note


def audit(m: dict) -> str:
    a = m.get("audit")
    if not isinstance(a, dict):
        return ""
    keys = ("positions", "kl_mean", "kl_max", "coverage", "entries_per_position",
            "tail_mass_max_error", "bytes_per_position")
    rows = "\n".join(f"| {k} | {a[k]:.6g} |" if isinstance(a[k], float) else f"| {k} | {a[k]} |"
                     for k in keys if k in a)
    return ("## Audit (`pipeline audit`: the teacher re-run on stored rows)\n\n"
            f"| figure | value |\n|---|---|\n{rows}\n")
