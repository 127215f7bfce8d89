"""`pipeline evaluate`: compare trained students with their teacher on the validation split.

One read pass over the validation shards feeds every model (students and, with `--teacher`, the
teacher), so the stored soft labels are decoded once. Fidelity comes from those stored labels —
the teacher is never re-run for it; the teacher is only run for its own quality and cost row.
Cost is measured by `pipeline.benchmarking`, identically for every model.

The report's results.json carries an inputs fingerprint (dataset manifest, each run's weights
and complete.json, the teacher, the settings) so `pipeline run` can skip an evaluation whose
inputs have not changed.
"""

import json
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch
from rich.console import Console
from rich.markup import escape

from pipeline.benchmarking import BenchSettings, measure_costs
from pipeline.device import autocast, resolve_device
from pipeline.errors import PipelineError
from pipeline.hashing import sha256_file, sha256_json
from pipeline.metrics import MetricSums
from pipeline.models.checkpoint import WEIGHTS, LoadedModel, load_model_dir
from pipeline.progress import positions_progress, rate_text
from pipeline.report import RESULTS_JSON, add_ratios, sort_rows, write_report
from pipeline.softlabels.reader import SoftLabelDataset

SPLIT = "validation"
COMPLETE = "complete.json"
warn = Console(stderr=True)


@dataclass
class EvaluateConfig:
    labels: str
    runs: list[str]
    out: str
    teacher: str | None = None
    device: str = "auto"
    max_rows: int | None = None
    batch_size: int = 8
    bench_warmup: int = 3
    bench_repeats: int = 10
    quiet: bool = False


@dataclass
class _Model:
    name: str
    role: str
    loaded: LoadedModel
    sums: MetricSums = field(default_factory=MetricSums)


def _check_args(cfg: EvaluateConfig) -> None:
    if not cfg.runs and not cfg.teacher:
        raise PipelineError("nothing to evaluate: pass at least one --run RUN_DIR (or --teacher)")
    if cfg.batch_size < 1:
        raise PipelineError(f"--batch-size {cfg.batch_size} must be >= 1")
    if cfg.max_rows is not None and cfg.max_rows < 1:
        raise PipelineError(f"--max-rows {cfg.max_rows} must be >= 1")
    names = [Path(r).name for r in cfg.runs] + ([Path(cfg.teacher).name] if cfg.teacher else [])
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise PipelineError(f"two models share the folder name {dupes[0]!r}: names label the "
                            "rows of the report, so give each run folder a distinct name")


def _dataset(cfg: EvaluateConfig) -> SoftLabelDataset:
    ds = SoftLabelDataset(cfg.labels)
    shards = ds.shards.get(SPLIT, [])
    if not shards or sum(s.rows for s in shards) == 0:
        raise PipelineError(f"{cfg.labels} has no {SPLIT} rows: relabel with "
                            "--validation-fraction > 0 (e.g. 0.02)")
    return ds


def _check_model(m: LoadedModel, ds: SoftLabelDataset, what: str) -> None:
    tok = m.tokenizer
    if tok.sha256 != ds.tokenizer_sha256 or tok.vocab_size != ds.vocab_size:
        raise PipelineError(
            f"{what} {m.path}: tokenizer sha256 {tok.sha256[:12]} (vocab {tok.vocab_size}) "
            f"differs from dataset {ds.root} tokenizer sha256 {ds.tokenizer_sha256[:12]} "
            f"(vocab {ds.vocab_size}); evaluate it on a dataset labeled with its tokenizer")
    context = m.config.get("context")
    if context and context < ds.seq_len:
        raise PipelineError(f"{what} {m.path}: context {context} is shorter than the dataset "
                            f"seq_len {ds.seq_len}; it cannot score these rows")


def _load_models(cfg: EvaluateConfig, ds: SoftLabelDataset, device) -> list[_Model]:
    models = []
    if cfg.teacher:
        teacher = load_model_dir(cfg.teacher, device)
        _check_model(teacher, ds, "--teacher")
        labeled_by = (ds.manifest.get("teacher") or {}).get("sha256")
        if labeled_by and teacher.weights_sha256 != labeled_by:
            raise PipelineError(
                f"--teacher {cfg.teacher} (weights sha256 {teacher.weights_sha256[:12]}) is not "
                f"the teacher that labeled {ds.root} (sha256 {labeled_by[:12]}); pass that "
                "teacher, or pass this model as a --run to measure its fidelity")
        models.append(_Model(Path(cfg.teacher).name, "teacher", teacher))
    for run in cfg.runs:
        m = load_model_dir(run, device)
        _check_model(m, ds, "--run")
        if not (Path(run) / COMPLETE).is_file():
            warn.print(f"[yellow]warning:[/yellow] {escape(run)} has no {COMPLETE} (training "
                       "did not finish); evaluating its last checkpoint", highlight=False,
                       soft_wrap=True)
        models.append(_Model(Path(run).name, "student", m))
    return models


def _score(cfg: EvaluateConfig, ds: SoftLabelDataset, models: list[_Model], device) -> dict:
    """Stream validation rows once; every model scores every batch. Returns rows/positions."""
    shards = ds.split_shards(SPLIT)
    total_rows = sum(s.rows for s in shards)
    if cfg.max_rows:
        total_rows = min(total_rows, cfg.max_rows)
    done = 0
    with positions_progress(disable=cfg.quiet) as progress:
        task = progress.add_task("evaluating", total=total_rows * ds.seq_len, rate="")
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
                for m in models:
                    with torch.inference_mode(), autocast(device):
                        logits = m.loaded.model(batch["input_ids"])
                    m.sums.add(logits, batch, is_teacher=m.role == "teacher")
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
    manifest = SoftLabelDataset(cfg.labels).manifest

    def model_inputs(path):
        p = Path(path)
        complete = p / COMPLETE
        return {"name": p.name, "weights": sha256_file(p / WEIGHTS) if (p / WEIGHTS).is_file()
                else None, "complete": sha256_file(complete) if complete.is_file() else None}

    return sha256_json({
        "dataset": {"plan": manifest.get("plan_fingerprint"), "splits": manifest["splits"]},
        "runs": [model_inputs(r) for r in cfg.runs],
        "teacher": model_inputs(cfg.teacher) if cfg.teacher else None,
        "settings": _settings(cfg)})


def _settings(cfg: EvaluateConfig) -> dict:
    return {"max_rows": cfg.max_rows, "batch_size": cfg.batch_size,
            "device": str(resolve_device(cfg.device)),
            "bench_warmup": cfg.bench_warmup, "bench_repeats": cfg.bench_repeats}


def load_results(out: str | Path) -> dict | None:
    try:
        return json.loads((Path(out) / RESULTS_JSON).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def is_up_to_date(cfg: EvaluateConfig) -> bool:
    """True when OUT/results.json was made from exactly these inputs."""
    results = load_results(cfg.out)
    return bool(results) and results.get("inputs_fingerprint") == inputs_fingerprint(cfg)


def _row(m: _Model, metrics: dict, cost: dict) -> dict:
    row = {"name": m.name, "role": m.role, "family": m.loaded.config.get("family"),
           "path": str(m.loaded.path), **metrics, **cost}
    try:  # training cost, when the run recorded it
        done = json.loads((m.loaded.path / COMPLETE).read_text())
        row.update(train_steps=done.get("step"), train_seconds=done.get("train_seconds"))
    except (OSError, json.JSONDecodeError):
        row.update(train_steps=None, train_seconds=None)
    return row


def run(cfg: EvaluateConfig) -> dict:
    """Evaluate every run (and the teacher), write the report, return results.json's content."""
    _check_args(cfg)
    ds = _dataset(cfg)
    device = resolve_device(cfg.device)
    fingerprint = inputs_fingerprint(cfg)
    models = _load_models(cfg, ds, device)
    scored = _score(cfg, ds, models, device)
    bench = BenchSettings(cfg.batch_size, ds.seq_len, cfg.bench_warmup, cfg.bench_repeats)
    costs = measure_costs([(m.loaded.model, m.loaded.path / WEIGHTS) for m in models],
                          ds.vocab_size, bench, device)
    rows = [_row(m, m.sums.result(), cost) for m, cost in zip(models, costs, strict=True)]
    add_ratios(rows)
    teacher = ds.manifest.get("teacher") or {}
    results = {
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "inputs_fingerprint": fingerprint,
        "dataset": {"path": str(ds.root), "split": SPLIT, "teacher": teacher.get("spec"),
                    "labels": f"{ds.spec.mode} k={ds.spec.k}", **scored},
        "settings": {**_settings(cfg), "bench": {**asdict(bench), "device": str(device)}},
        "rows": sort_rows(rows)}
    write_report(results, Path(cfg.out))
    return results
