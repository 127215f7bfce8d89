"""Figure 2: storage — bytes per stored (position, entry) of the label columns, before and after
format 1.2, and what each encoding loses.

For k = 8, 32, 128 and each log-probability encoding (fp32, fp16, u8), the same teacher labels
are written by the real shard writer twice — in the rank-order layout of 1.0/1.1 ("before") and
in format 1.2 ("after": ids ascending and delta-coded, BYTE_STREAM_SPLIT, zstd level 3,
pipeline/softlabels/sortedids.py) — and read back by the real reader. Bytes come from the Parquet
footer: the label columns (ids, log-probabilities, per-position tail mass) ÷ (positions × k);
`raw_id_bytes_per_entry` is the id column before zstd. Three teachers:
- the demo teacher (4,096 ids), goal ≤ 2.0 B per entry at k = 32 (k = 8 and 128: reported);
- a 151,936-id teacher with realistic distributions built from it (benchmarks/wide_teacher.py:
  each demo id's probability split over a fixed random group of wide ids by a fixed skewed
  rule), goal ≤ 2.5 B per entry at k = 32;
- a random-weight 151,936-id teacher (k = 32 only): near-uniform rows make every top-k a random
  subset, the upper bound of what ids cost; reported, no goal.
The quantisation error is the KL between the exact labels (float32 from the teacher) and the
decoded ones as the `kl_tail` loss sees them (stored mass 1 − r renormalised inside S); entries
are matched by id, since 1.2 returns ties of the stored value in id order. Repetitions are
disjoint slices of rows, so min–max shows how much the figures depend on the text.
"""

import tempfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from benchmarks import wide_teacher as W
from benchmarks.common import Context
from benchmarks.report import Figure
from benchmarks.timing import Stat
from pipeline.labeling.forward import topk_from_logits
from pipeline.softlabels import schema as S
from pipeline.softlabels.reader import decode_batch
from pipeline.softlabels.writer import ShardLabels, build_table, write_shard
from pipeline.training.losses import kl_tail_from_gathered

GOAL_KL = 1e-3
GOALS = {"demo": 2.0, "wide": 2.5, "random": None}  # B per entry at <= GOAL_KL nats, k = GOAL_K
GOAL_K = 32  # k = 8 and 128 are reported beside it, without a goal
ENCODINGS = ("fp32", "fp16", "u8")
LAYOUTS = {"before": None, "after": "sorted_delta"}  # labels.id_encoding


def _label_bytes(path: Path, spec: S.LabelSpec) -> tuple[int, int, dict[str, int]]:
    """(label-column bytes, raw id-column bytes, compressed bytes per column) of a shard."""
    meta = pq.ParquetFile(path).metadata
    cols: dict[str, int] = {}
    raw_ids = 0
    for g in range(meta.num_row_groups):
        for c in range(meta.num_columns):
            col = meta.row_group(g).column(c)
            name = col.path_in_schema.split(".")[0]
            cols[name] = cols.get(name, 0) + col.total_compressed_size
            raw_ids += col.total_uncompressed_size if name == spec.ids_column else 0
    names = (spec.ids_column, spec.logprobs_column, S.COL_TAIL)
    return sum(cols[n] for n in names), raw_ids, {n: cols[n] for n in names}


def _by_id(ids: torch.Tensor, lp: torch.Tensor) -> torch.Tensor:
    """Log-probabilities ordered by their ids (matches entries of two orders of one set)."""
    return lp.gather(-1, torch.argsort(ids, -1))


def quantisation_kl(exact_lp: torch.Tensor, tail: torch.Tensor, decoded: torch.Tensor) -> float:
    """Mean KL(exact ‖ decoded) per position over S ∪ {tail}, as the kl_tail loss sees labels."""
    mass = (1.0 - tail.double()).clamp(min=1e-30).log().float()
    implied = torch.log_softmax(decoded.float(), -1) + mass.unsqueeze(-1)
    return float(kl_tail_from_gathered(implied, exact_lp, tail).double().mean())


def _write(ctx: Context, root: Path, tokens, doc_ids, labels: ShardLabels, vocab: int, k: int,
           enc: str, layout: str | None) -> dict:
    spec = S.LabelSpec("topk", k, vocab, S.id_type_for_vocab(vocab), enc,
                       logprob_u8_min=S.U8_DEFAULT_MIN_LOGPROB if enc == "u8" else None,
                       id_encoding=layout)
    shard = build_table(spec, tokens.astype(np.int32), doc_ids, labels)
    rec = write_shard(root, "train", 0, shard, {"k": k}, ctx.params.row_group_rows, "bench")
    path = root / rec["path"]
    total, raw_ids, cols = _label_bytes(path, spec)
    entries = rec["positions"] * k
    out = {"bytes_per_entry": total / entries, "raw_id_bytes_per_entry": raw_ids / entries,
           **{f"{c}_bytes_per_entry": v / entries
              for c, v in zip(("id", "logprob", "tail"), cols.values())}}
    if layout:
        decoded = decode_batch(pq.read_table(path), spec, ctx.params.seq_len)
        exact_ids, exact_lp, tail = (torch.from_numpy(a) for a in (labels.ids, labels.logprobs,
                                                                   labels.tail))
        out["kl"] = quantisation_kl(_by_id(exact_ids.long(), exact_lp), tail,
                                    _by_id(decoded["topk_ids"], decoded["topk_logprobs"]))
        out["ids_ge_65536"] = int((decoded["topk_ids"] >= 65_536).sum())
    return out


def _labels(ctx: Context, tokens: np.ndarray, k: int, teacher: str, extra) -> ShardLabels:
    x = torch.from_numpy(tokens.astype(np.int64)).to(ctx.device)
    with torch.inference_mode():
        if teacher == "random":
            ids, lp, tail = W.random_topk(extra, x, k)
        else:
            logits = ctx.teacher.model(x).float().cpu()
            ids, lp, tail = (topk_from_logits(logits, k) if teacher == "demo"
                             else W.grouped_topk(logits, k, extra))
    return ShardLabels(ids.cpu().to(torch.int32).numpy(), lp.cpu().numpy(), tail.cpu().numpy())


def _teachers(ctx: Context) -> dict:
    """teacher → (vocabulary, what its labels need, the ks it is measured at)."""
    demo_vocab = ctx.teacher.tokenizer.vocab_size
    from pipeline.models import build_model

    torch.manual_seed(0)
    random = build_model("gpt", dict(W.RANDOM_TEACHER_SHAPE)).eval().to(ctx.device)
    ks = ctx.params.storage_ks
    return {"demo": (demo_vocab, None, ks), "wide": (W.WIDE_VOCAB, W.groups(demo_vocab), ks),
            "random": (W.WIDE_VOCAB, random, (32,))}


def measure(ctx: Context) -> list[Figure]:
    p = ctx.params
    ds = ctx.dataset("base", p.base_docs)
    table = ds.read_table(ds.split_shards("train")[0])
    n = p.storage_rows
    if table.num_rows < n * p.reps:
        raise SystemExit(f"figure 2 needs {n * p.reps} rows in the first train shard of "
                         f"{ds.root}; raise base_docs or shard_rows")
    figures = []
    with tempfile.TemporaryDirectory(dir=ctx.work) as tmp:
        for teacher, (vocab, extra, ks) in _teachers(ctx).items():
            for k in ks:
                res = {(e, lay): [] for e in ENCODINGS for lay in LAYOUTS}
                for r in range(p.reps):
                    rows = table.slice(r * n, n)
                    tokens = np.stack(rows.column(S.COL_INPUT_IDS).to_numpy(zero_copy_only=False))
                    labels = _labels(ctx, tokens, k, teacher, extra)
                    docs = rows.column(S.COL_DOC_IDS).to_pylist()
                    for (enc, lay), out in res.items():
                        root = Path(tmp) / f"{teacher}-k{k}-{enc}-{lay}-{r}"
                        out.append(_write(ctx, root, tokens, docs, labels, vocab, k, enc,
                                          LAYOUTS[lay]))
                figures.append(_figure(teacher, vocab, k, res))
    return figures


def _figure(teacher: str, vocab: int, k: int, res: dict) -> Figure:
    def stat(enc, lay, key):
        return Stat([r[key] for r in res[enc, lay]])

    goal = GOALS[teacher] if k == GOAL_K else None  # the issue sets its goals at k = 32
    ok = [e for e in ENCODINGS if stat(e, "after", "kl").max <= GOAL_KL]
    best = min(ok or ENCODINGS, key=lambda e: stat(e, "after", "bytes_per_entry").median)
    entry, before = stat(best, "after", "bytes_per_entry"), stat(best, "before", "bytes_per_entry")
    details = {f"{e} {lay} {key}": stat(e, lay, key).values for e in ENCODINGS for lay in LAYOUTS
               for key in ("bytes_per_entry", "raw_id_bytes_per_entry")}
    details.update({f"{e} kl": stat(e, "after", "kl").values for e in ENCODINGS})
    details.update({f"{best} after {c}_bytes_per_entry": stat(best, "after",
                                                              f"{c}_bytes_per_entry").values
                    for c in ("id", "logprob", "tail")})
    details["ids_ge_65536"] = res[best, "after"][0]["ids_ge_65536"]
    details["subset_bits_per_id"] = round(W.subset_bits_per_id(vocab, k), 2)
    label = {"demo": "demo teacher", "wide": "wide teacher (grouped)",
             "random": "random-weight teacher"}[teacher]
    fid = f"2 (k={k})" if teacher == "demo" else f"2 {teacher} (k={k})"
    name = (f"Storage, {label}, {vocab:,} ids, k = {k}: label B per stored entry, format 1.2, "
            f"smallest encoding within the KL goal: **{best}** (KL ≤ "
            f"{stat(best, 'after', 'kl').max:.1e} nats; before 1.2: {before.median:.2f} B)")
    passed = None if goal is None else entry.median <= goal and bool(ok)
    no_goal = "none (upper bound)" if GOALS[teacher] is None else f"none (goal at k = {GOAL_K})"
    fig = Figure(fid, name, no_goal if goal is None else f"≤ {goal} B at ≤ {GOAL_KL:g} nats",
                 entry, passed, unit=" B", details=details)
    if passed is False or (goal is None and GOALS[teacher] is not None
                           and entry.median > GOALS[teacher]):
        b = {c: stat(best, "after", f"{c}_bytes_per_entry").median for c in ("id", "logprob",
                                                                              "tail")}
        fig.note = (f"At k = {k} the {label} takes {entry.median:.2f} B per entry in 1.2 "
                    f"({before.median:.2f} B before): ids {b['id']:.2f} B (a set of k ids out "
                    f"of {vocab:,} carries {W.subset_bits_per_id(vocab, k):.1f} bits per id), "
                    f"log-probabilities {b['logprob']:.2f} B, exact fp32 tail mass "
                    f"{b['tail']:.2f} B (4 B per position ÷ k, kept exact by the format). "
                    + ("At small k the tail dominates: only a narrower tail or top-p labels "
                       "(fewer entries where the teacher is sure) would reach the k = 32 "
                       "bytes goal here."
                       if b["tail"] > 0.25 else "The ids are within a few percent of what "
                       "they carry; a coarser log-probability grid would be the next lever."))
    return fig
