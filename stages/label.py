"""`pipeline label`: run the teacher once over a corpus and write a soft-label dataset.

Recipe: plan (tokenize + pack, fingerprint; the packed shards are parked in a temporary folder,
so the corpus is read once; pipeline/labeling/planning.py) → refuse a different plan in the same
folder →
label every shard not already complete (teacher forward on the main thread, Parquet encoding on a
writer thread so the two overlap) → manifest last. Rerunning a finished job does nothing;
rerunning an interrupted one finishes it. With `--workers N` / `--scheduler ADDR` the shards run
as dask tasks instead (pipeline/labeling/shards.py); planning, resume and the manifest stay here, so
both paths produce the same dataset.

`--out` and `--corpus` may be object-storage URIs: every write goes through the storage layer
(pipeline/io/storage.py), so shards and records are whole objects there and the manifest is still
written last. `--teacher` may be `hf:NAME_OR_PATH`
or a Hugging Face folder (pipeline/models/hf.py).
"""

import contextlib
import json
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from pipeline import interrupt
from pipeline.config.check import check_config
from pipeline.config.paths import check_out_dir
from pipeline.config.stages import DEFAULT_SEQ_LEN, LabelConfig
from pipeline.device import resolve_device
from pipeline.errors import PipelineError
from pipeline.io.cache import temporary_dir
from pipeline.io.hashing import sha256_file
from pipeline.io.locking import DirLock
from pipeline.io.storage import Store
from pipeline.labeling import incremental, samples
from pipeline.labeling import modes as labelmodes
from pipeline.labeling.packing import ShardSpill
from pipeline.labeling.planning import build_manifest, plan_corpus, plan_params, prepare_out
from pipeline.labeling.shards import ShardWork, label_in_process, label_on_cluster
from pipeline.models.checkpoint import load_model_dir
from pipeline.models.hf import HF_PREFIX
from pipeline.models.loader import check_model_exists, local_context, local_weights_sha256
from pipeline.models.tokenizer import load_tokenizer
from pipeline.progress import positions_progress, rate_text
from pipeline.softlabels import layout
from pipeline.softlabels.card import write_card
from pipeline.softlabels.layout import MANIFEST, PLAN
from pipeline.softlabels.writer import check_complete, completed_record


def _check_args(cfg: LabelConfig) -> None:
    """Each value against its rule (pipeline/config/stages.py), then how options combine."""
    check_config(cfg)
    if cfg.top_k > 0 and not cfg.teacher:
        raise PipelineError("--top-k > 0 needs --teacher DIR (or use --top-k 0 --tokenizer FILE "
                            "for a tokenized dataset without soft labels)")
    if cfg.top_k == 0 and not (cfg.tokenizer or cfg.teacher):
        raise PipelineError("--top-k 0 needs --tokenizer FILE (or --teacher DIR for its tokenizer)")
    if cfg.workers and cfg.scheduler:
        raise PipelineError("pass either --workers N or --scheduler ADDR, not both")
    check_out_dir(cfg.out, "--out", "dataset")
    if cfg.teacher:
        check_model_exists(cfg.teacher, "--teacher")
    labelmodes.check_args(cfg)


def _load_teacher(spec: str, device, trust_remote_code: bool = False):
    """A local native model folder directly; hf:..., Hugging Face folders and URIs through
    pipeline.models.hf.load_model_spec (the one loader of teacher specs)."""
    from pipeline.models.loader import is_native_dir, load_model_spec

    if is_native_dir(spec):
        return load_model_dir(spec, device)
    return load_model_spec(spec, device, trust_remote_code)


def _load_inputs(cfg: LabelConfig, device: torch.device):
    teacher = (_load_teacher(cfg.teacher, device, cfg.trust_remote_code) if cfg.top_k > 0
               else None)
    tokenizer = load_tokenizer(cfg.tokenizer) if cfg.tokenizer else None
    if teacher is not None:
        if tokenizer is not None and tokenizer.sha256 != teacher.tokenizer.sha256:
            raise PipelineError(f"--tokenizer {cfg.tokenizer} (vocab {tokenizer.vocab_size}) "
                                f"differs from the teacher's tokenizer.json (vocab "
                                f"{teacher.tokenizer.vocab_size}); drop --tokenizer to use the "
                                "teacher's")
        tokenizer = teacher.tokenizer
    elif tokenizer is None:
        tokenizer = _load_teacher(cfg.teacher, "cpu", cfg.trust_remote_code).tokenizer
    if cfg.top_k > tokenizer.vocab_size:
        raise PipelineError(f"--top-k {cfg.top_k} exceeds the vocabulary size "
                            f"{tokenizer.vocab_size}")
    return teacher, tokenizer


def resolve_seq_len(cfg: LabelConfig, context: int | None) -> LabelConfig:
    """--seq-len as given (refused beyond the teacher's context), or, when not given, the
    default capped at that context: the defaults must fit the teacher they run with."""
    if cfg.seq_len is None:
        seq_len = min(DEFAULT_SEQ_LEN, context) if context else DEFAULT_SEQ_LEN
        if seq_len < 2:
            raise PipelineError(f"the teacher's context {context} leaves no next-token target; "
                                "use a teacher with a context of at least 2")
        return replace(cfg, seq_len=seq_len)
    if context and cfg.seq_len > context:
        raise PipelineError(f"--seq-len {cfg.seq_len} exceeds the teacher context {context}; "
                            f"use --seq-len {context} or less (or leave it out: the default "
                            "fits the teacher)")
    return cfg


def is_complete(cfg: LabelConfig) -> bool:
    """True when OUT holds a finished dataset made with exactly these settings: the manifest
    commits the plan, and the plan's parameters equal what `run` would record now (label spec,
    tokenizer and teacher hashes, seq_len, shards, split, corpus settings). Cheap: neither the
    corpus nor the teacher model is read, only hashed files. Anything it cannot verify locally
    (a hub teacher, a remote folder) counts as not complete; `run` then resumes, which finds
    every shard done and rewrites nothing. Without --incremental the corpus content itself is
    not compared (a changed file under the same path is not noticed: label a new corpus into a
    new --out); with it, the corpus listing is (pipeline/labeling/changes.py)."""
    if cfg.incremental:
        return _unchanged(cfg) is not None
    store = Store(cfg.out)
    plan, manifest = layout.read_json(store, PLAN), layout.read_json(store, MANIFEST)
    try:
        params = plan["params"]
        committed = manifest["plan_fingerprint"] == plan["fingerprint"]
        vocab_size = params["labels"]["vocab_size"]
    except (TypeError, KeyError):
        return False
    return committed and params == _local_params(cfg, vocab_size)


def _local_params(cfg: LabelConfig, vocab_size: int) -> dict | None:
    """The plan parameters `run` would record, from hashed local files only; None when they
    cannot be known without loading something."""
    try:
        cfg = resolve_seq_len(cfg, local_context(cfg.teacher) if cfg.top_k > 0 else None)
        spec = labelmodes.build_spec(cfg, vocab_size)
    except (TypeError, KeyError, PipelineError):
        return None
    tokenizer_sha = _local_tokenizer_sha256(cfg)
    teacher_sha = local_weights_sha256(cfg.teacher) if cfg.top_k > 0 else None
    if tokenizer_sha is None or (cfg.top_k > 0 and teacher_sha is None):
        return None  # not verifiable without loading: `run` resumes instead
    settings = samples.local_settings(cfg, _local_tokenizer_path(cfg))
    if settings is None:
        return None
    return plan_params(cfg, settings.spec(spec), tokenizer_sha, teacher_sha, settings)


def _unchanged(cfg: LabelConfig) -> dict | None:
    """--incremental: the committed version when the corpus listing and every setting are the
    ones it was made with (no corpus byte read, no teacher loaded)."""
    manifest = incremental.unchanged(Store(cfg.out), cfg)
    if manifest is None:
        return None
    params = manifest["version"].get("params") or {}
    vocab = (params.get("labels") or {}).get("vocab_size")
    return manifest if vocab and params == _local_params(cfg, vocab) else None


def _local_tokenizer_path(cfg: LabelConfig) -> Path | None:
    """The tokenizer.json labeling would use, when it is a local file."""
    path = Path(cfg.tokenizer) if cfg.tokenizer else None
    if path is None and cfg.teacher:  # None for a teacher on object storage
        path = Store(cfg.teacher.removeprefix(HF_PREFIX)).local_path(layout.TOKENIZER)
    return path if path is not None and path.is_file() else None


def _local_tokenizer_sha256(cfg: LabelConfig) -> str | None:
    path = _local_tokenizer_path(cfg)
    return sha256_file(path) if path is not None else None


def run(cfg: LabelConfig) -> dict:
    """Label (or resume labeling) a dataset; return its manifest."""
    _check_args(cfg)
    if cfg.incremental and (committed := _unchanged(cfg)) is not None:
        return committed  # nothing new: the corpus was not read, the teacher not loaded
    distributed = bool(cfg.workers or cfg.scheduler)
    # On a cluster the client only plans and describes the teacher; workers pick their own device.
    device = torch.device("cpu") if distributed else resolve_device(cfg.device)
    teacher, tokenizer = _load_inputs(cfg, device)
    cfg = resolve_seq_len(cfg, teacher.config.get("context") if teacher else None)
    settings = samples.resolve(cfg, tokenizer)
    spec = settings.spec(labelmodes.build_spec(cfg, tokenizer.vocab_size))
    store = Store(cfg.out)
    if store.exists() and not store.isdir():
        raise PipelineError(f"--out {store} is a file, not a folder; choose a folder for the "
                            "dataset")
    with _client(cfg) as client, DirLock(store), temporary_dir("softlabels-plan-") as tmp:
        spill = ShardSpill(Path(tmp))
        if cfg.incremental:
            return _run_version(cfg, store, (teacher, tokenizer, spec, settings), device, spill,
                                client)
        plan = plan_corpus(cfg, tokenizer, teacher, spec, spill, settings)
        prepare_out(store, plan, cfg.overwrite)
        records = {}
        for shard in plan["shards"]:
            if rec := completed_record(store, shard):
                records[(shard["split"], shard["index"])] = rec
        if store.isfile(MANIFEST) and len(records) == len(plan["shards"]):
            return json.loads(store.read_bytes(MANIFEST))
        store.remove(MANIFEST)
        work = _shard_work(cfg, plan, spec, tokenizer, teacher)
        try:
            new = _label_missing(cfg, plan, work, teacher, device, spill, set(records), client)
        except interrupt.Interrupted as exc:
            raise interrupt.Interrupted(exc.signum, _stopped(store, plan)) from None
        all_records = list(records.values()) + new
        check_complete(plan["shards"], all_records)
        store.put_file(tokenizer.path, layout.TOKENIZER)
        manifest = build_manifest(cfg, plan, spec, tokenizer, teacher, all_records, settings)
        write_card(store, manifest)
        store.write_json(MANIFEST, manifest)  # the commit point: always last
        return manifest


def _run_version(cfg, store, loaded, device, spill, client) -> dict:
    """--incremental: label what changed into a new version (pipeline/labeling/incremental.py)."""
    teacher, tokenizer, spec, settings = loaded
    if not settings.legacy:
        raise PipelineError("--incremental covers plain-text corpora packed with --pack concat; "
                            "label chat or packed data into a new --out without --incremental")
    params = plan_params(cfg, spec, tokenizer.sha256,
                         teacher.weights_sha256 if teacher else None, settings)
    step = incremental.prepare(store, cfg, tokenizer, params, spill)
    if step.manifest is not None:
        return step.manifest
    plan = step.plan
    done = {(s["split"], s["index"]): r for s in plan["shards"]
            if (r := completed_record(store, s))}
    work = _shard_work(cfg, plan, spec, tokenizer, teacher)
    try:
        new = _label_missing(cfg, plan, work, teacher, device, spill, set(done), client)
    except interrupt.Interrupted as exc:
        raise interrupt.Interrupted(exc.signum, _stopped(store, plan)) from None
    copies = incremental.copy_shards(store, step, work.kv, cfg.row_group_rows,
                                      completed_record)
    records = incremental.live_records(store, step) + list(done.values()) + new + copies
    manifest = build_manifest(cfg, plan, spec, tokenizer, teacher, records, settings)

    def card(stamped: dict) -> None:
        store.put_file(tokenizer.path, layout.TOKENIZER)
        write_card(store, stamped)

    return incremental.commit(store, step, manifest, card)


def _stopped(store: Store, plan: dict) -> str:
    """What a stop kept: the shards with a completion record (the shard in flight has none)."""
    done = sum(len(store.listdir(f"{layout.PROGRESS_DIR}/{split}"))
               for split in {s["split"] for s in plan["shards"]})
    return (f"label stopped with {done} of {len(plan['shards'])} shards complete (a shard in "
            "flight is discarded, never half-kept)")


def _client(cfg: LabelConfig):
    """A dask client with --workers/--scheduler, else nothing (the in-process path)."""
    if not (cfg.workers or cfg.scheduler):
        return contextlib.nullcontext()
    from pipeline.cluster import open_client

    return open_client(cfg.workers, cfg.scheduler)


def _shard_work(cfg, plan, spec, tokenizer, teacher) -> ShardWork:
    kv = {"format_version": spec.format_version, **spec.extras(), "mode": spec.mode, "k": spec.k,
          "vocab_size": spec.vocab_size, "id_type": spec.id_type,
          "logprob_encoding": spec.logprob_encoding, "seq_len": cfg.seq_len,
          "tokenizer_sha256": tokenizer.sha256,
          "teacher_sha256": teacher.weights_sha256 if teacher else "",
          "plan_fingerprint": plan["fingerprint"]}
    return ShardWork(cfg.out, spec, kv, cfg.batch_size, cfg.row_group_rows,
                     cfg.teacher if teacher else None,
                     teacher.weights_sha256 if teacher else None, cfg.device,
                     cfg.trust_remote_code)


@contextlib.contextmanager
def _progress(total: int, quiet: bool):
    """A positions/s bar; yields `advance(n)` for teacher batches or finished tasks, which is
    also where a SIGINT/SIGTERM stops in-process labeling: between two teacher batches."""
    with positions_progress(disable=quiet, stage="label") as progress:
        task = progress.add_task("label", total=total, rate="", unit="pos")
        start = time.perf_counter()

        def advance(n):
            interrupt.check()
            progress.advance(task, n)
            done_n = progress.tasks[task].completed
            progress.update(task, rate=rate_text(done_n, time.perf_counter() - start))

        yield advance


def _label_missing(cfg, plan, work, teacher, device, spill: ShardSpill, done: set,
                   client=None) -> list[dict]:
    todo = [s for s in plan["shards"] if (s["split"], s["index"]) not in done]
    total = sum(s["rows"] for s in todo) * cfg.seq_len
    inputs = (spill.get(s["split"], s["index"]) for s in todo)  # the planned inputs, exactly
    with _progress(total, cfg.quiet) as advance:
        if client is not None:  # a signal interrupts the wait; the cluster's exit stops workers
            return label_on_cluster(client, work, inputs, advance)
        with interrupt.deferred():  # stop between teacher batches; the writer finishes its queue
            return label_in_process(work, inputs, teacher and teacher.model, device, advance)


def config_dict(cfg: LabelConfig) -> dict:
    return asdict(cfg)
