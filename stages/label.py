"""`pipeline label`: run the teacher once over a corpus and write a soft-label dataset.

Recipe: plan (tokenize + pack, fingerprint) → refuse a different plan in the same folder →
label every shard not already complete (teacher forward on the main thread, Parquet encoding on a
writer thread so the two overlap) → manifest last. Rerunning a finished job does nothing;
rerunning an interrupted one finishes it.
"""

import json
import queue
import shutil
import threading
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch

import pipeline
from pipeline.corpus import SPLIT_RULE, CorpusSpec, CorpusStats
from pipeline.device import resolve_device
from pipeline.errors import PipelineError
from pipeline.hashing import sha256_file, sha256_json
from pipeline.labeling import label_tokens
from pipeline.locking import DirLock
from pipeline.models.checkpoint import load_model_dir
from pipeline.packing import iter_shard_inputs
from pipeline.progress import positions_progress, rate_text
from pipeline.softlabels import schema as S
from pipeline.softlabels.card import write_card
from pipeline.softlabels.manifest import MANIFEST, PLAN, PROGRESS_DIR, write_json_atomic
from pipeline.softlabels.writer import ShardLabels, build_table, write_shard
from pipeline.tokenizer import load_tokenizer


@dataclass
class LabelConfig:
    corpus: str
    out: str
    teacher: str | None = None
    tokenizer: str | None = None
    top_k: int = 32
    seq_len: int = 256
    batch_size: int = 16
    shard_rows: int = 512
    row_group_rows: int = 128
    validation_fraction: float = 0.02
    logprob_encoding: str = "fp16"
    device: str = "auto"
    overwrite: bool = False
    limit_docs: int | None = None
    text_column: str = "text"
    id_column: str | None = None
    quiet: bool = False


def _check_args(cfg: LabelConfig) -> None:
    if cfg.top_k < 0:
        raise PipelineError(f"--top-k {cfg.top_k} is negative: use 0 (tokens only) or k >= 1")
    if cfg.top_k > 0 and not cfg.teacher:
        raise PipelineError("--top-k > 0 needs --teacher DIR (or use --top-k 0 --tokenizer FILE "
                            "for a tokenized dataset without soft labels)")
    if cfg.top_k == 0 and not (cfg.tokenizer or cfg.teacher):
        raise PipelineError("--top-k 0 needs --tokenizer FILE (or --teacher DIR for its tokenizer)")
    if not 0.0 <= cfg.validation_fraction < 1.0:
        raise PipelineError(f"--validation-fraction {cfg.validation_fraction} must be in [0, 1)")
    for name in ("seq_len", "batch_size", "shard_rows", "row_group_rows"):
        if getattr(cfg, name) < 1:
            raise PipelineError(f"--{name.replace('_', '-')} must be >= 1")
    if cfg.logprob_encoding not in S.LOGPROB_ENCODINGS:
        raise PipelineError(f"--logprob-encoding {cfg.logprob_encoding!r}: valid are "
                            f"{sorted(S.LOGPROB_ENCODINGS)}")


def _load_inputs(cfg: LabelConfig, device: torch.device):
    teacher = load_model_dir(cfg.teacher, device) if cfg.top_k > 0 else None
    tokenizer = load_tokenizer(cfg.tokenizer) if cfg.tokenizer else None
    if teacher is not None:
        if tokenizer is not None and tokenizer.sha256 != teacher.tokenizer.sha256:
            raise PipelineError(f"--tokenizer {cfg.tokenizer} (vocab {tokenizer.vocab_size}) "
                                f"differs from the teacher's tokenizer.json (vocab "
                                f"{teacher.tokenizer.vocab_size}); drop --tokenizer to use the "
                                "teacher's")
        tokenizer = teacher.tokenizer
        context = teacher.config.get("context")
        if context and cfg.seq_len > context:
            raise PipelineError(f"--seq-len {cfg.seq_len} exceeds the teacher context {context}")
    elif tokenizer is None:
        tokenizer = load_model_dir(cfg.teacher, "cpu").tokenizer
    if cfg.top_k > tokenizer.vocab_size:
        raise PipelineError(f"--top-k {cfg.top_k} exceeds the vocabulary size "
                            f"{tokenizer.vocab_size}")
    return teacher, tokenizer


def _plan(cfg, tokenizer, teacher, spec) -> dict:
    corpus = CorpusSpec(cfg.corpus, cfg.text_column, cfg.id_column)
    stats = CorpusStats()
    shards = [{"split": s.split, "index": s.index, "rows": int(s.tokens.shape[0]),
               "input_sha256": s.input_sha256}
              for s in iter_shard_inputs(corpus, tokenizer, cfg.seq_len, cfg.shard_rows,
                                         cfg.validation_fraction, cfg.limit_docs, stats)]
    if stats.documents_read == 0:
        raise PipelineError(f"corpus {cfg.corpus} is empty: no non-empty documents "
                            f"({stats.documents_skipped_empty} empty skipped)")
    if not shards:
        raise PipelineError(f"corpus {cfg.corpus} has fewer than --seq-len {cfg.seq_len} tokens; "
                            "use a smaller --seq-len or a bigger corpus")
    params = {"seq_len": cfg.seq_len, "shard_rows": cfg.shard_rows,
              "validation_fraction": cfg.validation_fraction, "split_rule": SPLIT_RULE,
              "labels": spec.as_dict(), "tokenizer_sha256": tokenizer.sha256,
              "teacher_sha256": teacher.weights_sha256 if teacher else None,
              "corpus": {"uri": cfg.corpus, "text_column": cfg.text_column,
                         "id_column": cfg.id_column, "limit_docs": cfg.limit_docs}}
    plan = {"params": params, "shards": shards, "corpus_stats": stats.as_dict()}
    plan["fingerprint"] = sha256_json({"params": params, "shards": shards})
    return plan


def _prepare_out(out: Path, plan: dict, overwrite: bool) -> None:
    """Refuse to mix two plans in one folder; wipe only with --overwrite."""
    plan_file = out / PLAN
    existing = None
    if plan_file.is_file():
        existing = json.loads(plan_file.read_text()).get("fingerprint")
    foreign = [p.name for p in out.iterdir() if p.name not in (".lock",)] if out.exists() else []
    if existing == plan["fingerprint"]:
        return
    if foreign and not overwrite:
        why = "a different labeling plan" if existing else "files that are not a dataset of ours"
        raise PipelineError(f"--out {out} already holds {why} (corpus, teacher, tokenizer or "
                            "options differ); choose another --out or pass --overwrite")
    for name in foreign:
        target = out / name
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(plan_file, plan)


def _completed(out: Path, shard: dict) -> dict | None:
    """The shard's completion record if the file on disk still matches it, else None."""
    rec_path = out / PROGRESS_DIR / shard["split"] / f"part-{shard['index']:05d}.json"
    try:
        rec = json.loads(rec_path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    path = out / rec.get("path", "")
    ok = (rec.get("input_sha256") == shard["input_sha256"] and path.is_file()
          and path.stat().st_size == rec.get("bytes") and sha256_file(path) == rec.get("sha256"))
    return rec if ok else None


class _BackgroundWriter:
    """Encodes and writes shards on a thread so Parquet work overlaps the next teacher forward."""

    def __init__(self, write_fn):
        self._q: queue.Queue = queue.Queue(maxsize=2)
        self._write, self._error, self.records = write_fn, None, []
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while (item := self._q.get()) is not None:
            if self._error is None:
                try:
                    self.records.append(self._write(*item))
                except BaseException as exc:  # re-raised on the main thread
                    self._error = exc

    def submit(self, *item) -> None:
        if self._error:
            raise self._error
        self._q.put(item)

    def close(self) -> list[dict]:
        self._q.put(None)
        self._thread.join()
        if self._error:
            raise self._error
        return self.records


def _manifest(cfg, plan, spec, tokenizer, teacher, records) -> dict:
    splits: dict[str, list] = {}
    for rec in sorted(records, key=lambda r: r["path"]):
        split = rec["path"].split("/")[1]
        splits.setdefault(split, []).append(
            {k: rec[k] for k in ("path", "rows", "positions", "bytes", "sha256")})
    positions = sum(r["positions"] for r in records)
    nbytes = sum(r["bytes"] for r in records)
    mass = (sum(r["topk_mass_sum"] for r in records) / positions) if spec.has_labels else None
    stats = plan["corpus_stats"]
    return {
        "format_version": S.FORMAT_VERSION,
        "tool": {"name": "softlabel-pipeline", "version": pipeline.__version__},
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "plan_fingerprint": plan["fingerprint"],
        "teacher": teacher.describe() if teacher else None,
        "tokenizer": tokenizer.describe(),
        "corpus": {"uri": cfg.corpus, "fingerprint": sha256_json(
            [s["input_sha256"] for s in plan["shards"]]),
                   "validation_fraction": cfg.validation_fraction, "split_rule": SPLIT_RULE,
                   **{k: stats[k] for k in ("documents_read", "documents_skipped_empty",
                                            "non_utf8_documents", "tokens_dropped", "by_split")}},
        "labels": spec.as_dict(), "seq_len": cfg.seq_len, "splits": splits,
        "summary": {"rows": sum(r["rows"] for r in records), "positions": positions,
                    "bytes": nbytes, "mean_topk_mass": mass,
                    "bytes_per_position": nbytes / max(positions, 1),
                    "bytes_per_entry": nbytes / max(positions * max(spec.k, 1), 1)},
    }


def run(cfg: LabelConfig) -> dict:
    """Label (or resume labeling) a dataset; return its manifest."""
    _check_args(cfg)
    device = resolve_device(cfg.device)
    teacher, tokenizer = _load_inputs(cfg, device)
    spec = S.LabelSpec("topk" if cfg.top_k else "none", cfg.top_k, tokenizer.vocab_size,
                       S.id_type_for_vocab(tokenizer.vocab_size), cfg.logprob_encoding)
    out = Path(cfg.out)
    with DirLock(out):
        plan = _plan(cfg, tokenizer, teacher, spec)
        _prepare_out(out, plan, cfg.overwrite)
        manifest_path = out / MANIFEST
        records = {}
        for shard in plan["shards"]:
            if rec := _completed(out, shard):
                records[(shard["split"], shard["index"])] = rec
        if manifest_path.is_file() and len(records) == len(plan["shards"]):
            return json.loads(manifest_path.read_text())
        manifest_path.unlink(missing_ok=True)
        new = _label_missing(cfg, plan, spec, tokenizer, teacher, device, set(records))
        all_records = list(records.values()) + new
        shutil.copyfile(tokenizer.path, out / "tokenizer.json")
        manifest = _manifest(cfg, plan, spec, tokenizer, teacher, all_records)
        write_card(out, manifest)
        write_json_atomic(manifest_path, manifest)  # the commit point: always last
        return manifest


def _label_missing(cfg, plan, spec, tokenizer, teacher, device, done: set) -> list[dict]:
    out = Path(cfg.out)
    kv = {"format_version": S.FORMAT_VERSION, "mode": spec.mode, "k": spec.k,
          "vocab_size": spec.vocab_size, "id_type": spec.id_type,
          "logprob_encoding": spec.logprob_encoding, "seq_len": cfg.seq_len,
          "tokenizer_sha256": tokenizer.sha256,
          "teacher_sha256": teacher.weights_sha256 if teacher else "",
          "plan_fingerprint": plan["fingerprint"]}

    def write(shard_input, labels):
        table = build_table(spec, shard_input.tokens, shard_input.doc_ids, labels)
        return write_shard(out, shard_input.split, shard_input.index, table, kv,
                           cfg.row_group_rows, shard_input.input_sha256)

    todo = [s for s in plan["shards"] if (s["split"], s["index"]) not in done]
    total = sum(s["rows"] for s in todo) * cfg.seq_len
    writer = _BackgroundWriter(write)
    corpus = CorpusSpec(cfg.corpus, cfg.text_column, cfg.id_column)
    with positions_progress(disable=cfg.quiet) as progress:
        task = progress.add_task("labeling", total=total, rate="")
        start = time.perf_counter()

        def advance(n):
            progress.advance(task, n)
            done_n = progress.tasks[task].completed
            progress.update(task, rate=rate_text(done_n, time.perf_counter() - start))

        try:
            for shard_input in iter_shard_inputs(corpus, tokenizer, cfg.seq_len, cfg.shard_rows,
                                                 cfg.validation_fraction, cfg.limit_docs):
                if (shard_input.split, shard_input.index) in done:
                    continue
                labels = None
                if teacher is not None:
                    name = f"{shard_input.split}/part-{shard_input.index:05d}"
                    labels = ShardLabels(*label_tokens(teacher.model, shard_input.tokens, spec.k,
                                                       cfg.batch_size, device, name, advance))
                else:
                    advance(shard_input.tokens.size)
                writer.submit(shard_input, labels)
        finally:
            records = writer.close()
    return records


def config_dict(cfg: LabelConfig) -> dict:
    return asdict(cfg)
