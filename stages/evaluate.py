"""`pipeline evaluate`: compare trained students with their teacher on the validation split.

One read pass over the validation shards feeds every model (students and, with `--teacher`, the
teacher), so the stored soft labels are decoded once. Fidelity comes from those stored labels —
the teacher is never re-run for it; the teacher is only run for its own quality and cost row.
Cost is measured by `pipeline.evaluation.benchmarking`, identically for every model.

The report's results.json carries an inputs fingerprint (dataset manifest, each run's weights
and complete.json, the teacher, the settings) so `pipeline run` can skip an evaluation whose
inputs have not changed.

`--labels`, `--run`, `--teacher` and `--out` may be object-storage URIs (pipeline/io/storage.py:
model folders are copied to a local cache; the report's files are committed one by one through
the store, results.json last); a model may be `hf:NAME_OR_PATH` or a Hugging Face folder.
"""

import json
import time
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.markup import escape
from tokenizers import Tokenizer

from pipeline.config.check import check_config
from pipeline.config.paths import check_out_dir
from pipeline.config.stages import EvaluateConfig
from pipeline.device import resolve_device
from pipeline.errors import PipelineError
from pipeline.evaluation import over_versions
from pipeline.evaluation.benchmarking import BenchSettings, measure_costs
from pipeline.evaluation.cross_tokenizer import add_batch, check_cross_model, fresh_sums, is_cross
from pipeline.evaluation.metrics import MetricSums
from pipeline.evaluation.report import (
    MARK,
    RESULTS_JSON,
    add_ratios,
    check_replaceable,
    sort_rows,
    write_report,
)
from pipeline.io.hashing import sha256_json
from pipeline.io.storage import Store
from pipeline.labeling.chat import check_model_template
from pipeline.models.hf import HF_PREFIX
from pipeline.models.loaded import WEIGHTS, LoadedModel
from pipeline.models.loader import check_model_exists, is_hf_spec, load_model_spec
from pipeline.models.tokenbytes import byte_lengths, family_problem, token_bytes
from pipeline.models.tokenizer import LoadedTokenizer, load_tokenizer
from pipeline.progress import positions_progress, rate_text
from pipeline.softlabels.reader import SoftLabelDataset
from pipeline.training.layout import COMPLETE
from pipeline.training.xtok import dataset_tokenizer

SPLIT = "validation"
warn = Console(stderr=True)


@dataclass
class _Model:
    name: str
    role: str
    loaded: LoadedModel
    sums: MetricSums


def _check_args(cfg: EvaluateConfig) -> None:
    if not cfg.runs and not cfg.teacher:
        raise PipelineError("nothing to evaluate: pass at least one --run RUN_DIR (or --teacher)")
    check_config(cfg)
    check_out_dir(cfg.out, "--out", "report")
    names = [model_name(r) for r in cfg.runs] + ([model_name(cfg.teacher)] if cfg.teacher
                                                  else [])
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise PipelineError(f"two models share the folder name {dupes[0]!r}: names label the "
                            "rows of the report, so give each run folder a distinct name")
    if cfg.teacher:
        check_model_exists(cfg.teacher, "--teacher")
    for run in cfg.runs:
        check_model_exists(run, "--run")


def model_name(spec: str) -> str:
    """The report row's name: the folder name (of a path, URI or hf:NAME)."""
    spec = str(spec)
    return Path(spec[len(HF_PREFIX):] if is_hf_spec(spec) else spec.rstrip("/")).name


def _dataset(cfg: EvaluateConfig) -> SoftLabelDataset:
    ds = SoftLabelDataset(cfg.labels, cfg.version)
    shards = ds.shards.get(SPLIT, [])
    if not shards or sum(s.rows for s in shards) == 0:
        raise PipelineError(f"{cfg.labels} has no {SPLIT} rows: relabel with "
                            "--validation-fraction > 0 (e.g. 0.02)")
    return ds


def byte_table(ds: SoftLabelDataset, tok: Tokenizer) -> torch.Tensor | None:
    """[V] bytes of each dataset token (bits per byte), None for a tokenizer family whose ids do
    not spell their bytes (pipeline/models/tokenbytes.py)."""
    if family_problem(tok):
        return None
    table = byte_lengths(token_bytes(tok, "dataset tokenizer"))
    return torch.from_numpy(np.pad(table, (0, max(0, ds.vocab_size - len(table)))))


def _check_model(m: LoadedModel, ds: SoftLabelDataset, ds_tok: LoadedTokenizer,
                 what: str) -> None:
    """A model with the dataset's tokenizer scores its rows as they are; one with its own is
    scored on their re-tokenization (pipeline/evaluation/cross_tokenizer.py), if it can be."""
    if is_cross(m, ds.tokenizer_sha256):
        if what == "--teacher":
            raise PipelineError(f"--teacher {m.path}: its tokenizer is not the one that "
                                f"labeled {ds.root}; pass that teacher, or this model as a --run")
        check_cross_model(m, ds, ds_tok.tokenizer, what)
        return
    if m.tokenizer.vocab_size != ds.vocab_size:
        raise PipelineError(f"{what} {m.path}: vocabulary {m.tokenizer.vocab_size} differs from "
                            f"dataset {ds.root}'s {ds.vocab_size} with the same tokenizer; "
                            "evaluate it on a dataset labeled with its model")
    check_model_template(ds.manifest, Path(m.path), f"{what} {m.path}")
    context = m.config.get("context")
    if context and context < ds.seq_len:
        raise PipelineError(f"{what} {m.path}: context {context} is shorter than the dataset "
                            f"seq_len {ds.seq_len}; it cannot score these rows")


def _load_models(cfg: EvaluateConfig, ds: SoftLabelDataset, device) -> list[_Model]:
    models, ds_tok = [], load_tokenizer(dataset_tokenizer(ds))
    table = byte_table(ds, ds_tok.tokenizer)
    if cfg.teacher:
        teacher = load_model_spec(cfg.teacher, device, cfg.trust_remote_code)
        _check_model(teacher, ds, ds_tok, "--teacher")
        labeled_by = (ds.manifest.get("teacher") or {}).get("sha256")
        if labeled_by and teacher.weights_sha256 != labeled_by:
            raise PipelineError(
                f"--teacher {cfg.teacher} (weights sha256 {teacher.weights_sha256[:12]}) is not "
                f"the teacher that labeled {ds.root} (sha256 {labeled_by[:12]}); pass that "
                "teacher, or pass this model as a --run to measure its fidelity")
        models.append(_Model(model_name(cfg.teacher), "teacher", teacher,
                             fresh_sums(teacher, ds_tok, table)))
    for run in cfg.runs:
        m = load_model_spec(run, device, cfg.trust_remote_code)
        _check_model(m, ds, ds_tok, "--run")
        if not is_hf_spec(run) and not (m.path / COMPLETE).is_file():
            warn.print(f"[yellow]warning:[/yellow] {escape(run)} has no {COMPLETE} (training "
                       "did not finish); evaluating its last checkpoint", highlight=False,
                       soft_wrap=True)
        models.append(_Model(model_name(run), "student", m, fresh_sums(m, ds_tok, table)))
    return models


def _score(cfg: EvaluateConfig, ds: SoftLabelDataset, models: list[_Model], device) -> dict:
    """Stream validation rows once; every model scores every batch. Returns rows/positions."""
    shards = ds.split_shards(SPLIT)
    total_rows = sum(s.rows for s in shards)
    if cfg.max_rows:
        total_rows = min(total_rows, cfg.max_rows)
    done = 0
    with positions_progress(disable=cfg.quiet, stage="evaluate") as progress:
        task = progress.add_task("evaluate", total=total_rows * ds.seq_len, rate="", unit="pos")
        start = time.perf_counter()
        for shard in shards:
            ds.verify_checksum(shard)
            for rb in ds.open_shard(shard).iter_batches(batch_size=cfg.batch_size):
                n = min(rb.num_rows, total_rows - done)
                if n <= 0:
                    break
                # slice the decoded tensors, not the Arrow batch: a sliced list column keeps
                # its whole values buffer, which the vectorised decoder reads directly
                batch = {k: v[:n].to(device)
                         for k, v in ds.decode(rb, f"shard {shard.rel}").items()}
                for m in models:  # logits one chunk of positions at a time, never [B, L, V]
                    with torch.inference_mode():
                        add_batch(m.sums, m.loaded, batch, m.role == "teacher", device)
                done += n
                progress.advance(task, n * ds.seq_len)
                progress.update(task, rate=rate_text(done * ds.seq_len,
                                                     time.perf_counter() - start))
            if done >= total_rows:
                break
    return {"rows": done, "positions": done * ds.seq_len}


def inputs_fingerprint(cfg: EvaluateConfig) -> str:
    """What the report depends on: the dataset, each model's weights and completion record, the
    settings and the device. Cheap (hashes files, loads no model)."""
    manifest = SoftLabelDataset(cfg.labels, cfg.version).manifest

    return sha256_json({
        "dataset": {"plan": manifest.get("plan_fingerprint"), "splits": manifest["splits"]},
        "runs": [_model_inputs(r) for r in cfg.runs],
        "teacher": _model_inputs(cfg.teacher) if cfg.teacher else None,
        "settings": _settings(cfg),
        **over_versions.fingerprint(over_versions.added_validation(cfg.labels, cfg.version))})


def _model_inputs(spec: str) -> dict:
    """A model's weights and completion record, hashed where they are (local or remote); a hub
    model (hf:NAME) by name, an HF folder by its safetensors files."""
    store = Store(spec[len(HF_PREFIX):] if is_hf_spec(spec) else spec)
    if is_hf_spec(spec) and not store.isdir():
        return {"name": spec, "weights": None, "complete": None}

    def sha(name):
        return store.sha256(name) if store.isfile(name) else None

    weights = sha(WEIGHTS)
    if weights is None:  # a sharded HF folder
        shards = [n for n in store.listdir() if n.endswith(".safetensors")]
        weights = sha256_json([store.sha256(n) for n in shards]) if shards else None
    return {"name": model_name(spec), "weights": weights, "complete": sha(COMPLETE)}


def _settings(cfg: EvaluateConfig) -> dict:
    return {"max_rows": cfg.max_rows, "batch_size": cfg.batch_size,
            "device": str(resolve_device(cfg.device)),
            "bench_warmup": cfg.bench_warmup, "bench_repeats": cfg.bench_repeats}


def load_results(out: str | Path) -> dict | None:
    try:
        return json.loads(Store(out).read_bytes(RESULTS_JSON))
    except (OSError, PipelineError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def is_complete(cfg: EvaluateConfig) -> bool:
    """True when OUT/results.json was made from exactly these inputs."""
    results = load_results(cfg.out)
    return bool(results) and results.get("inputs_fingerprint") == inputs_fingerprint(cfg)


def _row(m: _Model, metrics: dict, cost: dict) -> dict:
    row = {"name": m.name, "role": m.role, "family": m.loaded.config.get("family"),
           "tokenizer": m.loaded.tokenizer.sha256[:12], "path": str(m.loaded.path), **metrics,
           **cost}
    try:  # training cost, when the run recorded it
        done = json.loads((m.loaded.path / COMPLETE).read_text())
        row.update(train_steps=done.get("step"), train_seconds=done.get("train_seconds"))
    except (OSError, json.JSONDecodeError):
        row.update(train_steps=None, train_seconds=None)
    return row


def run(cfg: EvaluateConfig) -> dict:
    """Evaluate every run (and the teacher), write the report, return results.json's content."""
    _check_args(cfg)
    check_replaceable(Store(cfg.out))
    ds = _dataset(cfg)
    device = resolve_device(cfg.device)
    fingerprint = inputs_fingerprint(cfg)
    models = _load_models(cfg, ds, device)
    scored = _score(cfg, ds, models, device)
    bench = BenchSettings(cfg.batch_size, ds.seq_len, cfg.bench_warmup, cfg.bench_repeats)
    costs = measure_costs([(m.loaded.model, m.loaded.weights_bytes) for m in models],
                          min(m.loaded.tokenizer.vocab_size for m in models), bench, device)
    rows = [_row(m, m.sums.result(), cost) for m, cost in zip(models, costs, strict=True)]
    add_ratios(rows)
    rows = sort_rows(rows)
    teacher = ds.manifest.get("teacher") or {}
    results = {
        "created_by": MARK, "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "inputs_fingerprint": fingerprint,
        "dataset": {"path": str(ds.root), "split": SPLIT, "teacher": teacher.get("spec"),
                    "labels": f"{ds.spec.mode} k={ds.spec.k}", **scored},
        "settings": {**_settings(cfg), "bench": {**asdict(bench), "device": str(device)}},
        "rows": rows, **_over_versions(cfg, models, rows, device)}
    write_report(results, Store(cfg.out))  # results.json, the completion record, last
    return results


def _over_versions(cfg: EvaluateConfig, models: list[_Model], rows: list[dict], device) -> dict:
    """With `--version N` below the latest: the validation rows added since, scored apart from
    the fixed set; with `--history`, the leaderboard over versions (over_versions.py)."""
    out = {}
    latest = over_versions.latest_version(cfg.labels)
    added = over_versions.added_validation(cfg.labels, cfg.version)
    if added is not None:
        fresh = [replace(m, sums=m.sums.fresh()) for m in models]
        scored = _score(cfg, added, fresh, device)
        new_rows = sort_rows([{"name": m.name, "role": m.role,
                               "tokenizer": m.loaded.tokenizer.sha256[:12], **m.sums.result()}
                              for m in fresh])
        out["new_validation"] = over_versions.new_rows_summary(cfg.version, latest, scored,
                                                               new_rows)
    if cfg.history:
        out["over_versions"] = over_versions.points(over_versions.read_history(cfg.history),
                                                    latest, rows)
    return out
