"""`pipeline train`: many students from one read pass over a soft-label dataset, no teacher.

Recipe: open and check the dataset → load, resolve and check every student (vocabulary,
tokenizer, labels vs loss) → decide per run folder: skip (finished, same config), resume, or
start → one pass per batch size, each row group verified when first read (in the loader
workers, overlapped with training; no shard is opened before the first step): each decoded
batch is moved to the device once and fed to every student of that batch size.
Students with different batch sizes are grouped, one pass per group, so no student's batches
are split or padded and its result does not depend on who it trained with.

Each student's position in the stream is (epoch, batch) in the reader's canonical order. On
resume the pass starts at the earliest student position; students further ahead skip batches
they already saw, so every student sees exactly the batches of an unbroken run.

`--labels` may be an object-storage URI (shards are streamed from it); `--out` too: a run folder
is written in place (renames, hard links: pipeline/training/layout.py), so where the store has no
local path the students train in local staging folders uploaded at every checkpoint
(pipeline/training/remote.py).
"""

import functools
import json
import os
import shutil
import time
import tomllib
from pathlib import Path

import torch

from pipeline import interrupt
from pipeline.config.check import check_config
from pipeline.config.paths import check_out_dir
from pipeline.config.stages import TrainConfig
from pipeline.config.toml import dumps_toml, read_toml
from pipeline.errors import ConfigError, PipelineError
from pipeline.io.atomic import write_json as write_json_atomic
from pipeline.io.storage import Store, absolute
from pipeline.io.uris import redact
from pipeline.labeling.chat import check_model_template, write_template
from pipeline.labeling.modes import match_loss
from pipeline.models.tokenizer import load_tokenizer
from pipeline.progress import positions_progress, rate_text
from pipeline.softlabels.reader import SoftLabelDataset
from pipeline.softlabels.stream import StreamConfig, StreamReader, check_compatible
from pipeline.training import continued, ddp, xtok
from pipeline.training.layout import COMPLETE, CONFIG, METRICS, STATE
from pipeline.training.students import (
    StudentSpec,
    load_student,
    resolve_for_dataset,
    with_overrides,
)
from pipeline.training.trainer import StudentRun
from pipeline.training.xtok import dataset_tokenizer

VALIDATION = "validation"


def _check_args(cfg: TrainConfig) -> None:
    """Each value against its rule (pipeline/config/stages.py); --out outside the dataset."""
    check_config(cfg)
    if cfg.workers and cfg.scheduler:
        raise PipelineError("pass either --workers N or --scheduler ADDR, not both")
    check_out_dir(cfg.out, "--out", "runs")
    if cfg.new_rows_only and not cfg.continue_from:
        raise PipelineError("--new-rows-only needs --continue-from RUN (the run whose dataset "
                            "version the new rows are counted from)")
    if _inside(cfg.out, cfg.labels):
        raise PipelineError(f"--out {cfg.out} is inside the dataset folder --labels {cfg.labels}; "
                            "choose a runs folder outside it (a dataset holds only what the "
                            "labeler wrote)")


def _inside(child: str, parent: str) -> bool:
    """`child` is `parent` or below it (local paths resolved first; URIs compared as text)."""
    child, parent = absolute(child).rstrip("/"), absolute(parent).rstrip("/")
    return child == parent or child.startswith(parent + "/")


def _load_students(cfg: TrainConfig, ds: SoftLabelDataset) -> list[StudentSpec]:
    if not cfg.students:
        raise ConfigError("no students: pass --student FILE.toml (see data/students/)")
    specs, names = [], {}
    for path in cfg.students:
        spec = _fit_to(ds, load_student(path), cfg)
        if spec.name in names:
            raise ConfigError(f"{path}: student name {spec.name!r} is also used by "
                              f"{names[spec.name]}; set a distinct `name` in one of them")
        names[spec.name] = path
        if xtok.is_cross(spec, ds.tokenizer_sha256, spec.loss.kind):
            xtok.check_student(spec, ds, dataset_tokenizer(ds))
        elif spec.tokenizer:
            check_compatible(ds, tokenizer_sha256=load_tokenizer(spec.tokenizer).sha256,
                             who=f"student {path}")
            check_model_template(ds.manifest, Path(spec.tokenizer).parent, f"student {path}")
        if spec.loss.uses_labels and not ds.spec.has_labels:
            raise ConfigError(f"{path}: [loss] kind {spec.loss.kind!r} needs soft labels but "
                              f"dataset {ds.root} is tokens only (labels mode 'none'); set "
                              "[loss] kind = \"ce\" or label the corpus with a teacher")
        spec = match_loss(spec, ds.spec)  # sampled labels → `sampled` loss; refuse mismatches
        specs.append(spec)
    return specs


def _fit_to(ds: SoftLabelDataset, spec: StudentSpec, cfg: TrainConfig) -> StudentSpec:
    """The student with the run's length overrides and the dataset's vocabulary and length."""
    vocab = (xtok.student_vocab(spec) if xtok.is_cross(spec, ds.tokenizer_sha256, spec.loss.kind)
             else ds.vocab_size)  # a student with its own tokenizer: its own vocabulary
    return resolve_for_dataset(with_overrides(spec, cfg.max_steps, cfg.epochs), vocab,
                               ds.seq_len)


def student_complete(cfg: TrainConfig, spec: StudentSpec, ds: SoftLabelDataset | None = None
                     ) -> bool:
    """True when `run` would skip this student: its run folder has complete.json and the config
    `run` would resolve now (same student, length, dataset), the very test `run` applies.
    `spec` may be a job's inline student, parsed but never written to a file."""
    try:
        ds = ds or open_dataset(cfg)
        spec = match_loss(_fit_to(ds, spec, cfg), ds.spec)
        return _prepare_dir(Path(cfg.out) / spec.name, resolved_config(spec, ds, cfg),
                            resume=True) == "skip"
    except (PipelineError, tomllib.TOMLDecodeError):
        return False  # `run` reports what is wrong


def is_complete(cfg: TrainConfig) -> bool:
    """True when every student of cfg.students is finished with its current config (cheap: the
    manifest and run folders are read, no shard)."""
    try:
        ds = open_dataset(cfg)
        specs = [load_student(path) for path in cfg.students]
    except PipelineError:
        return False
    return bool(specs) and all(student_complete(cfg, spec, ds) for spec in specs)


def resolved_config(spec: StudentSpec, ds: SoftLabelDataset, cfg: TrainConfig) -> dict:
    """What config.toml records: the student with defaults filled, plus what data it saw (the
    dataset's location without the credentials a typed URI may carry: pipeline/io/uris.py)."""
    data = {"labels": redact(absolute(cfg.labels)),
            "dataset_fingerprint": ds.manifest.get("plan_fingerprint", ""),
            "tokenizer_sha256": ds.tokenizer_sha256, "seed": cfg.data_seed,
            "shuffle_rows": cfg.shuffle_rows, "num_workers": cfg.num_workers}
    if version := (ds.manifest.get("version") or {}).get("number"):  # format 1.4
        data["dataset_version"] = version
    if cfg.continue_from:
        data["continued_from"] = {**continued.source(cfg.continue_from, spec.name),
                                  "rows": "new" if cfg.new_rows_only else "all"}
    return tomllib.loads(dumps_toml({**spec.as_dict(), "data": data}))


def _differences(old: dict, new: dict) -> list[str]:
    keys = []
    for section in sorted(set(old) | set(new)):
        a, b = old.get(section), new.get(section)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += [f"{section}.{k}" for k in sorted(set(a) | set(b))
                     if a.get(k) != b.get(k) and k != "labels"]
        elif a != b:
            keys.append(section)
    return keys


def _prepare_dir(run_dir: Path, resolved: dict, resume: bool) -> str:
    """'skip' (finished with this config), 'resume' or 'fresh'; refuse anything else."""
    existing = run_dir / CONFIG
    if not run_dir.exists() or not any(run_dir.iterdir()):
        return "fresh"
    diff = (_differences(read_toml(existing, "run config", "the run folder"), resolved)
            if existing.is_file() else [f"{CONFIG} missing"])
    if (run_dir / COMPLETE).is_file() and not diff:
        return "skip"
    if diff:
        raise PipelineError(f"run folder {run_dir} holds a run with a different config "
                            f"({', '.join(diff[:5])} differ); use another --out or delete it")
    if not resume:
        raise PipelineError(f"run folder {run_dir} holds an unfinished run; pass --resume to "
                            "continue it from its last checkpoint, or delete it")
    return "resume"


def _total_steps(spec: StudentSpec, reader: StreamReader) -> int:
    t = spec.train
    if t.epochs is None:
        return t.max_steps
    steps = 0
    for e in range(t.epochs):  # stop at max_steps: epochs may be huge when steps bound the run
        steps += reader.epoch_length(e)
        if t.max_steps and steps >= t.max_steps:
            return t.max_steps
    return steps


def _validation_batches(ds: SoftLabelDataset, batch_size: int, n: int,
                        device: torch.device, transforms: tuple = ()) -> list[dict]:
    if n == 0 or VALIDATION not in ds.shards or not ds.split_shards(VALIDATION):
        return []
    reader = StreamReader(ds, StreamConfig(VALIDATION, batch_size, seed=0), verify="lazy")
    out = []
    for pos, batch in reader.iter_epoch(0):
        if pos >= n:
            break
        out.append({k: v.to(device) for k, v in xtok.apply_all(transforms, batch).items()})
    return out


class _Validation:
    """The validation batches, read at the first evaluation rather than before step 1: start-up
    opens no shard (README "Start-up")."""

    def __init__(self, load):
        self._load, self._batches = load, None

    def __getitem__(self, key):
        if self._batches is None:
            self._batches = self._load()
        return self._batches[key]


def _open_runs(todo, reader, ds, cfg, device, on_checkpoint=None) -> list[StudentRun]:
    runs = []
    tokenizer = dataset_tokenizer(ds)
    for spec, run_dir, resolved, action in todo:
        own = xtok.is_cross(spec, ds.tokenizer_sha256, spec.loss.kind)  # its tokenizer.json
        run = ddp.student_run(spec, run_dir, device, Path(spec.tokenizer) if own else tokenizer,
                              _total_steps(spec, reader))
        run.after_save = on_checkpoint  # --out on object storage: upload (training/remote.py)
        resumed = action == "resume" and run.load_checkpoint() is not None
        if not resumed and ddp.is_main():  # fresh, or killed before its first checkpoint
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / METRICS).unlink(missing_ok=True)  # left by a run killed
            shutil.rmtree(run_dir / STATE, ignore_errors=True)  # before its first checkpoint
            (run_dir / CONFIG).write_text(dumps_toml(resolved))
            write_template(ds.manifest, run_dir)  # 1.3 chat data: the student's template
            if cfg.continue_from:  # before the first checkpoint: a resume never reloads it
                continued.start_from(run.model, cfg.continue_from, spec.name)
            run.save_checkpoint(_stream_settings(reader.cfg))
        runs.append(run)
    return runs


def _stream_settings(sc: StreamConfig) -> dict:
    return {"seed": sc.seed, "batch_size": sc.batch_size, "shuffle_rows": sc.shuffle_rows,
            "consumers": sc.consumers}


def _after_step(run: StudentRun, val: "_Validation", settings: dict, pass_rate: float) -> bool:
    """Log, evaluate, checkpoint and complete as the student file says; True if it saved."""
    t = run.spec.train
    evaluate = run.step % t.eval_every == 0 or run.done
    if run.step % t.log_every == 0 or evaluate:
        record = run.metrics_record()
        if evaluate:
            record.update(run.evaluate([run.view(b) for b in val[:t.eval_batches]]))
        run.append_metrics(record)
    saved = run.step % t.checkpoint_every == 0 or run.done
    if saved:
        run.save_checkpoint(settings)
    if run.done:
        _complete(run, pass_rate)
    return saved


def _stop(runs: list[StudentRun], settings: dict, saved: dict) -> None:
    """SIGINT/SIGTERM (on any rank): checkpoint every unfinished student at the step it has
    reached (unless it just did), so a resume loses nothing, then raise Interrupted."""
    left = [r for r in runs if not r.done]
    for r in left:
        if saved.get(id(r)) != r.step:
            r.save_checkpoint(settings)
    ddp.barrier()  # torchrun: rank 0 has written before any rank exits (its exit kills the rest)
    where = ", ".join(f"{r.spec.name} at step {r.step}/{r.total_steps}" for r in left)
    raise interrupt.Interrupted(interrupt.requested(),
                                f"train stopped at a step boundary, checkpoint saved for {where}")


def _complete(run: StudentRun, pass_rate: float | None) -> None:
    """complete.json, written last: the orchestrator skips a student that has it."""
    if ddp.is_main():  # under torchrun only rank 0 writes
        run.publish_latest_weights()  # a resumed run may have been killed before the links
        write_json_atomic(run.dir / COMPLETE, {**run.summary(),
                                               "pass_tokens_per_s": pass_rate})
        if run.after_save is not None:
            run.after_save(run.dir)


def _train_group(ds: SoftLabelDataset, todo: list, cfg: TrainConfig,
                 device: torch.device, on_checkpoint=None) -> None:
    batch_size = todo[0][0].train.batch_size
    sc = ddp.for_rank(StreamConfig("train", batch_size, cfg.data_seed, cfg.shuffle_rows,
                                   cfg.num_workers))  # torchrun: this rank's rows only
    # each row group is verified when first read, in the loader workers (softlabels/rowgroups.py)
    views, transforms = xtok.transforms_for([t[0] for t in todo], ds.tokenizer_sha256,
                                            dataset_tokenizer(ds), ds.seq_len)
    reader = ddp.reader(ds, sc, verify="lazy", pin_memory=device.type == "cuda",
                        transforms=transforms)  # own-tokenizer students' rows, in the workers
    if reader.rows == 0:
        raise PipelineError(f"dataset {ds.root} has no training rows (split 'train' is empty)")
    if ddp.agree_to_stop(interrupt.requested() is not None):  # before this group starts
        raise interrupt.Interrupted(interrupt.requested())
    runs = _open_runs(todo, reader, ds, cfg, device, on_checkpoint)
    saved = {id(r): r.step for r in runs}  # the step of each student's latest checkpoint
    settings = _stream_settings(sc)
    val = _Validation(lambda: _validation_batches(
        ds, batch_size, max(r.spec.train.eval_batches for r in runs), device, transforms))
    for r in runs:
        r.view = functools.partial(xtok.view, key_prefix=views[r.spec.name])
    for r in runs:
        if r.done and not (r.dir / COMPLETE).is_file():  # killed just before complete.json
            _complete(r, None)
    active = [r for r in runs if not r.done]
    epoch, pos = min((r.position for r in active), default=(0, 0))
    with positions_progress(disable=cfg.quiet or not ddp.is_main(), stage="train") as progress:
        tasks = {id(r): progress.add_task(r.spec.name, total=r.total_steps, completed=r.step,
                                          rate="", unit="steps") for r in runs}
        start, seen, lengths = time.perf_counter(), 0, {}
        for e, p, batch in (reader.iter_epochs(epoch, pos) if active else ()):
            if e not in lengths:  # once per epoch: it re-derives the epoch's plan
                lengths[e] = reader.epoch_length(e)
            length = lengths[e]
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            seen += batch["input_ids"].numel()
            rate = seen / max(time.perf_counter() - start, 1e-9)
            for r in active:
                if r.position != (e, p):
                    continue
                r.train_step(r.view(batch))
                r.epoch = e
                r.position = (e, p + 1) if p + 1 < length else (e + 1, 0)
                if _after_step(r, val, settings, rate):
                    saved[id(r)] = r.step
                progress.update(tasks[id(r)], completed=r.step,
                                rate=rate_text(seen, time.perf_counter() - start, "tok"),
                                tokens_per_s=rate, loss=r.last_parts.get("loss"))
            active = [r for r in active if not r.done]
            if not active:
                break
            if ddp.agree_to_stop(interrupt.requested() is not None):  # every rank, every batch
                _stop(runs, settings, saved)


def run(cfg: TrainConfig, on_checkpoint=None) -> dict[str, Path]:
    """Train (or resume, or skip when finished) every student; return {name: run folder}.
    `on_checkpoint(run_dir)` runs after every checkpoint and after complete.json."""
    _check_args(cfg)
    if Store(cfg.out).local_path() is None:  # no renames or links there: train in staging
        from pipeline.training.remote import train_to_remote

        return train_to_remote(cfg, run)
    ds = open_dataset(cfg)
    dataset_tokenizer(ds)
    specs = _load_students(cfg, ds)
    device = ddp.setup(cfg.device)  # torchrun: join the process group, one device per rank
    out = Path(cfg.out)
    todo = []
    for spec in specs:
        resolved = resolved_config(spec, ds, cfg)
        action = _prepare_dir(out / spec.name, resolved, cfg.resume)
        if action != "skip":
            todo.append((spec, out / spec.name, resolved, action))
    if todo and (cfg.workers or cfg.scheduler):  # one dask task per student
        from pipeline.training.cluster import train_on_cluster

        train_on_cluster(cfg, [spec.path for spec, *_ in todo], train_student_task)
    elif todo:
        ddp.barrier()  # torchrun: every rank has read the run folders before rank 0 writes
        with interrupt.deferred():  # a signal stops the loop at the next step boundary
            for size in sorted({t[0].train.batch_size for t in todo}):
                _train_group(ds, [t for t in todo if t[0].train.batch_size == size], cfg,
                             device, on_checkpoint)
        ddp.barrier()  # complete.json exists before any rank returns
    return {spec.name: out / spec.name for spec in specs}


def open_dataset(cfg: TrainConfig) -> SoftLabelDataset:
    """The dataset at --version (default: the latest), with --new-rows-only its train split cut
    to the shards added since the --continue-from run's version (pipeline/training/continued)."""
    ds = SoftLabelDataset(cfg.labels, cfg.version)
    if cfg.new_rows_only:
        continued.keep_new_rows(ds, continued.source(cfg.continue_from)["dataset_version"])
    return ds


def train_student_task(cfg: TrainConfig) -> dict:
    """A dask task: train one student (cfg.students has one file) with the in-process trainer."""
    runs = run(cfg)
    (name, run_dir), = runs.items()
    return {"name": name, "run_dir": str(run_dir), "pid": os.getpid(),
            "summary": summaries(runs)[name]}


def summaries(run_dirs: dict[str, Path]) -> dict[str, dict]:
    """The complete.json of each run folder (for the CLI and the orchestrator)."""
    return {name: json.loads((d / COMPLETE).read_text()) for name, d in run_dirs.items()}
