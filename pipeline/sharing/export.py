"""`pipeline export DS --to jsonl|axolotl-kd OUT`: the labels for trainers that do not read
this format. `axolotl-kd` is pipeline/sharing/axolotl.py; `jsonl` is below.

One line per packed row: `{"input_ids": [L], "topk_ids": [L][n_t], "topk_logprobs": [L][n_t],
"tail_mass": [L]}`, entries in **rank order** (most probable first) as the reference reader
decodes them (format 1.2's sorted ids are undone here, so no consumer has to know them);
`n_t` is k in top-k mode and the stored count elsewhere (0 outside a loss mask). Log-probs are
natural-log, temperature 1, decoded from the stored encoding.
"""

import json

from pipeline.errors import PipelineError
from pipeline.io.storage import Store
from pipeline.sharing.axolotl import write_axolotl
from pipeline.softlabels.reader import SoftLabelDataset

FORMATS = ("jsonl", "axolotl-kd")


def row_records(decoded: dict):
    """JSON-ready dicts from one decoded batch (ragged modes trimmed by their label mask)."""
    ids, lps, tail = decoded["topk_ids"], decoded["topk_logprobs"], decoded["tail_mass"]
    mask = decoded.get("label_mask")
    for r in range(ids.shape[0]):
        keep = (mask[r] if mask is not None else None)
        yield {"input_ids": decoded["input_ids"][r].tolist(),
               "topk_ids": [ids[r, t][keep[t]].tolist() if keep is not None
                            else ids[r, t].tolist() for t in range(ids.shape[1])],
               "topk_logprobs": [[round(x, 6) for x in (lps[r, t][keep[t]] if keep is not None
                                                         else lps[r, t]).tolist()]
                                 for t in range(ids.shape[1])],
               "tail_mass": [round(x, 7) for x in tail[r].tolist()]}


def export(dataset: str, fmt: str, out: str, split: str = "train") -> int:
    """Write `split` of the dataset to OUT (a local path or URI, written whole); returns rows."""
    if fmt not in FORMATS:
        raise PipelineError(f"--to {fmt}: supported formats are {', '.join(FORMATS)}")
    ds = SoftLabelDataset(dataset)
    if ds.manifest["labels"]["mode"] == "none":
        raise PipelineError(f"{dataset} is tokens only (no labels): nothing to export")
    if split not in ds.shards:
        raise PipelineError(f"--split {split}: the dataset has splits {sorted(ds.shards)}")
    parent, _, name = str(out).rstrip("/").rpartition("/")
    if fmt == "axolotl-kd":
        with Store(parent or ".").writing(name) as tmp:
            return write_axolotl(ds, split, tmp)
    rows = 0
    with Store(parent or ".").writing(name) as tmp, open(tmp, "w") as f:
        for shard in ds.split_shards(split):
            for rec in row_records(ds.decode(ds.read_table(shard))):
                f.write(json.dumps(rec, separators=(",", ":")) + "\n")
                rows += 1
    return rows
