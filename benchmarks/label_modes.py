"""Label modes measured: what each mode × encoding costs (bytes) and loses (audit KL), and what a
small student learns from each (validation CE and ECE).

    .venv/bin/python benchmarks/label_modes.py [--quick] [--teacher DIR] [--docs N] [--steps N]

Why a script and not a test: the numbers are measurements on real text (BBC News) with the demo
teacher (data/teacher/ when it exists, else a random-init teacher of the same shape, which the
table says), not pass/fail facts. Every dataset goes through the real `pipeline label`, `audit`
and `train` code paths. The table is written into BENCHMARKS.md between the markers
<!-- modes:start --> and <!-- modes:end --> (other sections are left alone) and, as JSON, to
OUT/label_modes.json.
"""

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.device import resolve_device  # noqa: E402
from pipeline.evaluation.metrics import MetricSums  # noqa: E402
from pipeline.models.checkpoint import load_model_dir  # noqa: E402
from pipeline.softlabels import schema as S  # noqa: E402
from pipeline.softlabels.reader import SoftLabelDataset  # noqa: E402
from stages.audit import AuditConfig  # noqa: E402
from stages.audit import run as audit  # noqa: E402
from stages.label import LabelConfig  # noqa: E402
from stages.label import run as label  # noqa: E402
from stages.train import TrainConfig  # noqa: E402
from stages.train import run as train  # noqa: E402

START, END = "<!-- modes:start -->", "<!-- modes:end -->"
MODES = {  # name → LabelConfig options; topp's max_k is high so p, not the cap, sets the size
    "topk k=8": dict(mode="topk", top_k=8),
    "topk k=32": dict(mode="topk", top_k=32),
    "topp p=0.9": dict(mode="topp", top_p=0.9, max_k=256),
    "topp p=0.99": dict(mode="topp", top_p=0.99, max_k=256),
    "sampled N=16": dict(mode="sampled", samples=16),
    "sampled N=64": dict(mode="sampled", samples=64),
}
ENCODINGS = ("fp32", "fp16", "u8")
LABEL_COLUMNS = (S.COL_TOPK_IDS, S.COL_TOPK_LOGPROBS, S.COL_TAIL, S.COL_COUNTS,
                 S.COL_SAMPLE_COUNTS, S.COL_LOG_NORM, S.COL_ID_DELTAS, S.COL_LABEL_LOGPROBS,
                 S.COL_LABEL_SAMPLE_COUNTS)  # 1.0/1.1 and 1.2 names
STUDENT = """name = "{name}"
[model]
family = "gpt"
n_layer = 2
n_head = 2
d_model = 64
[optimizer]
lr = 3e-3
[schedule]
warmup_steps = {warmup}
[train]
batch_size = 8
seed = 0
eval_every = {steps}
eval_batches = 2
checkpoint_every = {steps}
log_every = 10
[loss]
kind = "{kind}"
alpha = {alpha}
"""
# (student, dataset mode, loss): the same student on each mode; a hard-label and a biased
# renormalised top-k run for reference
STUDENTS = [("ce only", "topk k=32", "ce"), ("topk k=8", "topk k=8", "kl_tail"),
            ("topk k=32", "topk k=32", "kl_tail"), ("topk k=32 renorm", "topk k=32", "kl_renorm"),
            ("topp p=0.9", "topp p=0.9", "kl_tail"), ("topp p=0.99", "topp p=0.99", "kl_tail"),
            ("sampled N=16", "sampled N=16", "sampled"), ("sampled N=64", "sampled N=64",
                                                          "sampled")]


def teacher_dir(arg: str | None, work: Path) -> tuple[Path, str]:
    """The demo teacher if it is there; else a random-init GPT of the demo teacher's shape."""
    path = Path(arg) if arg else REPO / "data/teacher"
    if (path / "model.safetensors").is_file():
        shown = path.relative_to(REPO) if path.is_relative_to(REPO) else path
        return path, f"demo teacher `{shown}`"
    if arg:
        raise SystemExit(f"--teacher {arg}: no model.safetensors there")
    from pipeline.labeling.corpus import CorpusSpec, read_texts
    from pipeline.models import build_model
    from pipeline.models.checkpoint import save_model_dir
    from pipeline.models.tokenizer import train_bpe_tokenizer

    out = work / "random-teacher"
    if not (out / "model.safetensors").is_file():
        tok = work / "tokenizer.json"
        train_bpe_tokenizer(read_texts(CorpusSpec("builtin:bbc-news"), 1000), 4096, tok)
        torch.manual_seed(0)
        model = build_model("gpt", {"vocab_size": 4096, "n_layer": 2, "n_head": 2,
                                    "d_model": 128, "context": 128})
        save_model_dir(model, tok, out)
    return out, "random-init teacher (demo shape: GPT 2x128, vocab 4096; data/teacher/ missing)"


def label_bytes(ds: SoftLabelDataset) -> float:
    """Compressed bytes of the label columns per position (Parquet column-chunk sizes)."""
    total, positions = 0, 0
    for shards in ds.shards.values():
        for shard in shards:
            meta = pq.ParquetFile(shard.path).metadata
            for g in range(meta.num_row_groups):
                rg = meta.row_group(g)
                for c in range(rg.num_columns):
                    col = rg.column(c)
                    if col.path_in_schema.split(".")[0] in LABEL_COLUMNS:
                        total += col.total_compressed_size
            positions += shard.rows * ds.seq_len
    return total / max(positions, 1)


def label_and_audit(args, teacher: Path, work: Path) -> list[dict]:
    rows = []
    for name, opts in MODES.items():
        for enc in ENCODINGS:
            out = work / "labels" / f"{name.replace(' ', '-')}-{enc}"
            start = time.perf_counter()
            m = label(LabelConfig(corpus="builtin:bbc-news", out=str(out), teacher=str(teacher),
                                  seq_len=128, batch_size=16, shard_rows=256,
                                  validation_fraction=0.1, limit_docs=args.docs,
                                  logprob_encoding=enc, device=args.device, quiet=True,
                                  overwrite=True, **opts))
            seconds = time.perf_counter() - start
            a = audit(AuditConfig(labels=str(out), teacher=str(teacher), rows=args.audit_rows,
                                  device=args.device))
            rows.append({"mode": name, "encoding": enc, "dir": str(out),
                         "bytes_per_position": m["summary"]["bytes_per_position"],
                         "label_bytes_per_position": label_bytes(SoftLabelDataset(out)),
                         "entries_per_position": a["entries_per_position"],
                         "coverage": a["coverage"], "kl_mean": a["kl_mean"],
                         "label_seconds": seconds})
            print(f"{name:>13} {enc}: {rows[-1]['bytes_per_position']:7.1f} B/pos, "
                  f"KL {a['kl_mean']:.5f}, coverage {a['coverage']:.3f}", flush=True)
    return rows


@torch.inference_mode()
def score(run_dir: Path, ds: SoftLabelDataset, device) -> dict:
    """Validation CE/ECE (and top-32 tail KL) of a trained student (pipeline.evaluation.metrics)."""
    model = load_model_dir(run_dir, device).model.eval()
    sums = MetricSums()
    for shard in ds.split_shards("validation"):
        table = ds.read_table(shard)
        for lo in range(0, table.num_rows, 16):
            batch = {k: v.to(device) for k, v in ds.decode(table.slice(lo, 16)).items()}
            sums.add(model(batch["input_ids"]).float(), batch)
    return sums.result()


def train_students(args, labels: dict[str, Path], work: Path) -> list[dict]:
    rows, device = [], resolve_device(args.device)
    reference = SoftLabelDataset(labels["topk k=32"])  # same tokens for all; top-32 for KL
    for name, mode, kind in STUDENTS:
        slug = name.replace(" ", "-").replace("=", "")
        toml = work / "students" / f"{slug}.toml"
        toml.parent.mkdir(parents=True, exist_ok=True)
        toml.write_text(STUDENT.format(name=slug, steps=args.steps, kind=kind,
                                       alpha=0.0 if kind == "ce" else 1.0,
                                       warmup=max(1, args.steps // 10)))
        start = time.perf_counter()
        runs = train(TrainConfig(labels=str(labels[mode]), students=[str(toml)],
                                 out=str(work / "runs"), max_steps=args.steps,
                                 device=args.device, quiet=True))
        r = score(runs[slug], reference, device)
        rows.append({"student": name, "labels": mode, "loss": kind, "val_ce": r["ce"],
                     "val_ece": r["ece"], "val_kl_top32": r["kl_tail"],
                     "train_seconds": time.perf_counter() - start})
        print(f"{name:>17}: CE {r['ce']:.4f}  ECE {r['ece']:.4f}  KL32 {r['kl_tail']:.4f}",
              flush=True)
    return rows


def markdown(teacher: str, args, label_rows: list[dict], student_rows: list[dict]) -> str:
    lines = [f"### Label modes (`benchmarks/label_modes.py{' --quick' if args.quick else ''}`)",
             "", f"Teacher: {teacher}. Corpus: first {args.docs} BBC News articles, seq_len 128, "
             f"10 % validation; audit on {args.audit_rows} validation rows (KL = full-vocabulary "
             "KL(teacher ‖ implied labels), nats/position; coverage = teacher mass on stored "
             "ids). B/pos = whole shard bytes per position (manifest); label B/pos = compressed "
             "label columns only.", "",
             "| mode | encoding | entries/pos | B/pos | label B/pos | coverage | audit KL |",
             "|---|---|---|---|---|---|---|"]
    for r in label_rows:
        lines.append(f"| {r['mode']} | {r['encoding']} | {r['entries_per_position']:.1f} | "
                     f"{r['bytes_per_position']:.1f} | {r['label_bytes_per_position']:.1f} | "
                     f"{r['coverage']:.4f} | {r['kl_mean']:.5f} |")
    lines += ["", "topp uses max_k = 256 (a position whose top 256 ids hold less than p keeps "
              "256). The audit scores one draw set per position, so it charges `sampled` labels "
              "for their sampling noise; their loss is unbiased over draws, which the student "
              "table below measures.",
              "", f"Same student (GPT 2×64, batch 8, {args.steps} steps, lr 3e-3, α = 1: pure "
              "KD; `ce only` is hard labels) on each mode's fp16 labels; validation CE (nats), "
              "ECE (15 bins) and top-32 tail KL to the teacher.", "",
              "| student | labels | loss | val CE | val ECE | val KL (top-32) |",
              "|---|---|---|---|---|---|"]
    for r in student_rows:
        lines.append(f"| {r['student']} | {r['labels']} fp16 | {r['loss']} | {r['val_ce']:.4f} "
                     f"| {r['val_ece']:.4f} | {r['val_kl_top32']:.4f} |")
    return "\n".join(lines)


def write_benchmarks(text: str, path: Path = REPO / "BENCHMARKS.md") -> None:
    """Replace (or append) the marked section; everything else in the file stays."""
    block = f"{START}\n{text}\n{END}"
    old = path.read_text() if path.is_file() else "# Benchmarks\n"
    if START in old and END in old:
        head, rest = old.split(START, 1)
        new = head + block + rest.split(END, 1)[1]
    else:
        new = old.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(new)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="few documents and steps (smoke run)")
    p.add_argument("--teacher", help="teacher directory (default data/teacher/)")
    p.add_argument("--docs", type=int, help="BBC News articles to label (default 120; quick 20)")
    p.add_argument("--steps", type=int, help="student steps (default 80; quick 8)")
    p.add_argument("--audit-rows", type=int, help="validation rows audited (default 32; quick 4)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=str(REPO / "outputs/bench/label_modes"))
    p.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    p.add_argument("--render", action="store_true", help="only rewrite the BENCHMARKS.md "
                   "section from OUT/label_modes.json (no labeling or training)")
    args = p.parse_args()
    args.docs = args.docs or (20 if args.quick else 120)
    args.steps = args.steps or (8 if args.quick else 80)
    args.audit_rows = args.audit_rows or (4 if args.quick else 32)
    work = Path(args.out)
    if args.render:
        saved = json.loads((work / "label_modes.json").read_text())
        vars(args).update(saved["settings"])
        write_benchmarks(markdown(saved["teacher"], args, saved["labels"], saved["students"]))
        return
    work.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(work / "runs", ignore_errors=True)  # students are retrained every time
    teacher, described = teacher_dir(args.teacher, work)
    label_rows = label_and_audit(args, teacher, work)
    fp16 = {r["mode"]: Path(r["dir"]) for r in label_rows if r["encoding"] == "fp16"}
    student_rows = train_students(args, fp16, work)
    text = markdown(described, args, label_rows, student_rows)
    (work / "label_modes.json").write_text(json.dumps(
        {"teacher": described, "labels": label_rows, "students": student_rows,
         "settings": {k: getattr(args, k) for k in ("quick", "docs", "steps", "audit_rows")}},
        indent=2))
    if not args.no_write:
        write_benchmarks(text)
    print(text)


if __name__ == "__main__":
    main()
