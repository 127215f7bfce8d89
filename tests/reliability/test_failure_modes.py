"""The README's "Failure modes" table as data: each row is run here or names the test that does.

Each case gives the bad input, the one line the user sees (`<name>` and `...` stand for the
parts that vary), the exit code and what is kept; `test_failure_mode` sets the case up, runs the
real CLI entry point and checks all four. `test_readme_table_matches` keeps README.md equal to
this table. After changing a case, rewrite the README's table with

    .venv/bin/python -m tests.reliability.test_failure_modes --write
"""

import json
import os
import re
import shutil
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from pipeline.softlabels.layout import shard_relpath
from tests.conftest import REPO, make_teacher
from tests.reliability.conftest import (
    copy_dataset,
    edit_manifest,
    label_argv,
    label_here,
    rewrite_shard,
    write_student,
)

# ---- what a case can use ----------------------------------------------------------------------


@dataclass
class Env:
    tmp: Path
    corpus: Path
    teacher: Path
    dataset: Path  # small labeled dataset (top-k 4, seq_len 16)
    fixtures: dict  # lazily built, module-scoped: tokens-only dataset, trained run, ...
    cli: Callable
    monkeypatch: pytest.MonkeyPatch
    saved: dict = field(default_factory=dict)

    @property
    def out(self) -> Path:
        return self.tmp / "out"

    def __getattr__(self, name):
        return self.fixtures[name]()


def label_args(env: Env, **opts) -> list:
    o = {"corpus": env.corpus, "teacher": env.teacher, "out": env.out, "top_k": 4,
         "seq_len": 16, "shard_rows": 16, "batch_size": 8, "limit_docs": 16, "device": "cpu",
         "validation_fraction": 0.2,
         **opts}
    return ["label", *[a for k, v in o.items() for a in (f"--{k.replace('_', '-')}", v)],
            "--quiet"]


def train_args(env: Env, student, labels=None, *extra) -> list:
    return ["train", "--labels", labels or env.dataset, "--student", student, "--out",
            env.tmp / "runs", "--device", "cpu", "--quiet", *extra]


def files(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()} if root.exists() else {}


def write(env: Env, name: str, text: str) -> Path:
    path = env.tmp / name
    path.write_text(text)
    return path


def teacher_copy(env: Env, edit) -> Path:
    d = env.tmp / "teacher"
    shutil.copytree(env.teacher, d)
    edit(d)
    return d


def pickle_file(path: Path, marker: Path) -> None:
    import torch

    from tests.reliability.test_untrusted_input import _Payload

    torch.save({"tok_emb.weight": _Payload(marker)}, path)


# ---- checks of "what is kept" -----------------------------------------------------------------

def nothing_written(env: Env) -> None:
    assert files(env.out) == {}
    assert not (env.tmp / "runs").exists() or files(env.tmp / "runs") == {}
    assert not (env.tmp / "report").exists() and not (env.tmp / "pwned").exists()


def unchanged(env: Env) -> None:
    assert files(env.saved["root"]) == env.saved["before"]


def remember(env: Env, root: Path) -> None:
    env.saved["root"], env.saved["before"] = root, files(root)


def completed_shards_kept(env: Env) -> None:
    assert not (env.out / "manifest.json").exists()
    recs = [json.loads(p.read_text()) for p in env.out.glob("_progress/*/*.json")]
    assert recs, "no shard completed before the failure"
    from pipeline.io.hashing import sha256_file
    assert all(sha256_file(env.out / r["path"]) == r["sha256"] for r in recs)
    assert not list(env.out.rglob("*.tmp"))


def nothing_kept_by_validate(env: Env) -> None:
    assert files(env.saved["root"]) == env.saved["before"]


def no_complete_run(env: Env) -> None:
    assert not list((env.tmp / "runs").rglob("complete.json"))


# ---- set-ups ----------------------------------------------------------------------------------

def nan_teacher(env: Env) -> Path:
    """The real teacher, made to return NaN logits wherever the input is one token (as a
    numerically unstable teacher would on some inputs; its weights are tied to the output head,
    so poisoning a weight would hit every position). The token first appears in a later shard,
    so earlier shards complete before the labeler refuses."""
    import pyarrow.parquet as pq
    import torch

    import stages.label

    clean = env.tmp / "clean"
    label_here(env.corpus, env.teacher, clean, seq_len=16, limit_docs=16)
    order = json.loads((clean / "plan.json").read_text())["shards"]
    first_seen = {}
    for i, s in enumerate(order):
        rel = shard_relpath(s["split"], s["index"])
        ids = np.unique(pq.read_table(clean / rel, columns=["input_ids"])
                        .column(0).combine_chunks().values.to_numpy())
        for t in ids.tolist():
            first_seen.setdefault(t, i)
    token = max(first_seen, key=first_seen.get)
    assert first_seen[token] >= 1

    class NaNOn(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, ids):
            return self.inner(ids).masked_fill((ids == token)[..., None], float("nan"))

    real = stages.label.load_model_dir

    def load(path, device="cpu"):
        loaded = real(path, device)
        loaded.model = NaNOn(loaded.model)
        return loaded

    env.monkeypatch.setattr(stages.label, "load_model_dir", load)
    return env.teacher


def run_copy(env: Env, complete: bool) -> Path:
    student, trained = env.trained
    runs = env.tmp / "runs"
    shutil.copytree(trained, runs / "s")
    if not complete:
        (runs / "s" / "complete.json").unlink()
    remember(env, runs)
    return student


def job(env: Env, extra: str = "", corpus=None) -> Path:
    student = write_student(env.tmp, max_steps=2, epochs=None)
    return write(env, "job.toml", f'students = ["{student}"]\n[job]\nname = "t"\nout = '
                 f'"{env.tmp / "job"}"\ndevice = "cpu"\n[corpus]\nsource = '
                 f'"{corpus or env.corpus}"\nlimit_docs = 16\n[teacher]\ndir = "{env.teacher}"\n'
                 f'[label]\ntop_k = 4\nseq_len = 16\n{extra}')


def chat_args(env: Env, messages: str, **opts) -> list:
    """A one-conversation corpus labeled with the example's chat template."""
    corpus = write(env, "c.jsonl", '{"messages": [' + messages + ']}\n')
    return label_args(env, corpus=corpus, messages_column="messages",
                      chat_template=REPO / "data/chat/headline.jinja", **opts)


def validate_copy(env: Env, tamper) -> list:
    ds = copy_dataset(env.dataset, env.tmp)
    tamper(ds)
    remember(env, ds)
    return ["validate", ds]


def flip_byte(ds: Path, rel: str = "shards/train/part-00000.parquet") -> None:
    data = bytearray((ds / rel).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (ds / rel).write_bytes(bytes(data))


def disk_full(env: Env):
    from tests.reliability.test_disk_full import run_with_file_limit

    proc = run_with_file_limit(label_argv(env.corpus, env.teacher, env.out), 5_000)
    return proc.returncode, proc.stderr


def shard_limit_kept(env: Env) -> None:
    assert not (env.out / "manifest.json").exists() and not list(env.out.rglob("*.tmp"))
    assert not list(env.out.glob("_progress/*/*.json"))  # the partial shard is not complete


def incremental_args(env: Env, **opts) -> list:
    """label_args with --incremental over the tiny corpus's id column (the `versioned` fixture's
    settings)."""
    return [*label_args(env, **{"id_column": "id", **opts}), "--incremental"]


def versioned_copy(env: Env, dst: Path | None = None) -> Path:
    dst = dst or env.out
    shutil.copytree(env.versioned, dst)
    remember(env, dst)
    return dst


def grown_without_index(env: Env) -> list:
    """A versioned dataset of a corpus that then grew, whose document index is gone: the rerun
    has to compare documents and cannot."""
    from stages.label import LabelConfig, run

    lines = env.corpus.read_text().splitlines(keepends=True)
    corpus = write(env, "grown.jsonl", "".join(lines[:16]))
    args = incremental_args(env, corpus=corpus)
    run(LabelConfig(corpus=str(corpus), out=str(env.out), teacher=str(env.teacher), top_k=4,
                    seq_len=16, shard_rows=16, batch_size=8, limit_docs=16, device="cpu",
                    validation_fraction=0.2, id_column="id", incremental=True, quiet=True))
    (env.out / "versions/00001.index.json").unlink()
    corpus.write_text("".join(lines[:8] + lines[20:28]))
    remember(env, env.out)
    return args


# pipeline view's set-ups

def _page(env: Env) -> Path:
    return env.tmp / "view.html"


def _no_page(env: Env) -> None:
    assert not _page(env).exists() and not list(env.tmp.glob("*.tmp"))


def _foreign_page(env: Env) -> Path:
    page = write(env, "view.html", "<p>notes of mine</p>")
    remember(env, env.tmp)
    return page


def _dataset_copy(env: Env) -> Path:
    ds = copy_dataset(env.dataset, env.tmp)
    remember(env, ds)
    return ds


# ---- the table --------------------------------------------------------------------------------

@dataclass
class Case:
    command: str
    bad_input: str
    shows: str  # the stderr line; <name> and ... match anything
    exit: int | str  # a str for rows where the process is killed
    kept: str
    setup: Callable[[Env], list] | None = None  # → CLI args
    check_kept: Callable[[Env], None] | None = None
    runner: Callable[[Env], tuple[int, str]] | None = None  # instead of setup + in-process CLI
    checked_by: str | None = None  # "tests/...py::test_name" that checks this row instead
    slow: bool = False


STORAGE_DOWN = "error: s3://<bucket>/<key>: object storage unreachable (<error>: " \
    "...); check that the server is up and AWS_ENDPOINT_URL (--endpoint-url) points at it, then " \
    "rerun: completed shards and checkpoints are kept"
INTERRUPTS = "tests/reliability/test_interrupts.py::"
SELF_PICKLE = "<dir>/model.safetensors is not a valid safetensors file (...); refusing to load " \
              "it - re-export the weights with safetensors"

CASES = [
    Case("label", "missing `--corpus` path",
         "error: corpus path <path> does not exist: pass a file, directory or glob of "
         ".parquet/.jsonl/.csv/.txt files, or builtin:bbc-news", 1, "nothing written",
         lambda e: label_args(e, corpus=e.tmp / "nope"), nothing_written),
    Case("label", "empty corpus (only empty documents)",
         "error: corpus <path> is empty: no non-empty documents (3 empty skipped)", 1,
         "nothing written",
         lambda e: label_args(e, corpus=write(e, "c.jsonl", '{"text": ""}\n' * 3)),
         nothing_written),
    Case("label", "corpus without the text column",
         "error: <file>: column 'text' not found (columns: ['body']); pass --text-column with "
         "one of them", 1, "nothing written",
         lambda e: label_args(e, corpus=write(e, "c.jsonl", '{"body": "x"}\n')),
         nothing_written),
    Case("label", "a `.jsonl` line that is not JSON",
         "error: <file>:2: not valid JSON (...); each line of a .jsonl corpus must be one JSON "
         "object", 1, "nothing written",
         lambda e: label_args(e, corpus=write(e, "c.jsonl", '{"text": "a b"}\nnot json\n')),
         nothing_written),
    Case("label", "a `.jsonl` corpus whose text is not a string (a number, a list, ...)",
         "error: <file>:2: 'text' is a number (42), not a string; every text cell must be a "
         "string: fix the data or pass --text-column naming a text column", 1, "nothing written",
         lambda e: label_args(e, corpus=write(e, "c.jsonl", '{"text": "a b"}\n{"text": 42}\n')),
         nothing_written),
    Case("label", "a conversation with an unknown role",
         "error: <file>:1: message 0 has unknown role 'wizard' (known: system, user, assistant, "
         "tool); fix the data or map the role", 1, "nothing written",
         lambda e: chat_args(e, '{"role": "wizard", "content": "x"}'), nothing_written),
    Case("label", "an empty assistant turn",
         "error: <file>:1: message 1 is an empty assistant turn; drop the conversation or fill "
         "the turn", 1, "nothing written",
         lambda e: chat_args(e, '{"role": "user", "content": "q"}, '
                                '{"role": "assistant", "content": ""}'), nothing_written),
    Case("label", "a chat template that fails to render (its own `raise_exception`)",
         "error: <file>:1: chat template <path> failed to render (unsupported role tool); fix "
         "the template or the conversation", 1, "nothing written",
         lambda e: chat_args(e, '{"role": "tool", "content": "q"}, '
                                '{"role": "assistant", "content": "a"}'), nothing_written),
    Case("label", "a sample longer than `--seq-len` with `--overlong refuse`",
         "error: <file>:1: sample <name> has <n> tokens, more than --seq-len 16; raise "
         "--seq-len, or pass --overlong truncate (keep the first tokens) or drop", 1,
         "nothing written",
         lambda e: chat_args(e, '{"role": "user", "content": "' + "the market rose " * 20 +
                             '"}, {"role": "assistant", "content": "a"}', overlong="refuse"),
         nothing_written),
    Case("label", "conversations for a tokenizer without a chat template, no `--chat-template`",
         "error: the teacher's tokenizer (<dir>) has no chat template (no chat_template in "
         "tokenizer_config.json, no chat_template.jinja); pass one with --chat-template FILE", 1,
         "nothing written",
         lambda e: label_args(e, corpus=write(e, "c.jsonl", '{"messages": []}\n'),
                              messages_column="messages"), nothing_written),
    Case("label", "an `--id-column` value that is null (or empty, or not a string/integer)",
         "error: <file>:1: id 'id' is null; every document needs its own id with --id-column "
         "(or leave --id-column out: ids are then file:row)", 1, "nothing written",
         lambda e: label_args(e, corpus=write(e, "c.jsonl", '{"text": "a b", "id": null}\n'),
                              id_column="id"), nothing_written),
    Case("label", "an `--id-column` value used twice (ids are never renamed)",
         "error: <file>:2: id '7' is used by an earlier document too; ids from --id-column must "
         "be unique: fix the data, or leave --id-column out (ids are then file:row)", 1,
         "nothing written",
         lambda e: label_args(e, corpus=write(e, "c.jsonl", '{"text": "a b", "id": 7}\n'
                                                            '{"text": "c d", "id": "7"}\n'),
                              id_column="id"), nothing_written),
    Case("label", "`--top-k` larger than the vocabulary",
         "error: --top-k 500 exceeds the vocabulary size 320", 1, "nothing written",
         lambda e: label_args(e, top_k=500), nothing_written),
    Case("label", "negative `--top-k`",
         "error: --top-k -1 is negative: use 0 (tokens only) or k >= 1", 1, "nothing written",
         lambda e: label_args(e, top_k=-1), nothing_written),
    Case("label", "a value out of its range, NaN or infinite (e.g. `--validation-fraction nan`)",
         "error: --validation-fraction nan must be a finite number in [0, 1)", 1,
         "nothing written", lambda e: label_args(e, validation_fraction="nan"), nothing_written),
    Case("label", "a value that is not a number (`--top-k abc`), or an unknown option",
         "error: Invalid value for '--top-k': ..., got 'abc' (see `pipeline label --help`)", 2,
         "nothing written", lambda e: label_args(e, top_k="abc"), nothing_written),
    Case("label", "an option of another mode (`--top-p` without `--mode topp`)",
         "error: --top-p only applies to --mode topp (here --mode topk); drop --top-p or pass "
         "--mode topp", 1, "nothing written", lambda e: label_args(e, top_p=0.5),
         nothing_written),
    Case("label", "`--seq-len 1` (a row needs one next-token target)",
         "error: --seq-len 1 must be >= 2", 1, "nothing written",
         lambda e: label_args(e, seq_len=1), nothing_written),
    Case("label", "`--seq-len` longer than the teacher's context (left out, it defaults to "
         "256 or the teacher's context if shorter)",
         "error: --seq-len 128 exceeds the teacher context 64; use --seq-len 64 or less (or "
         "leave it out: the default fits the teacher)", 1, "nothing written",
         lambda e: label_args(e, seq_len=128), nothing_written),
    Case("label", "`--teacher NAME` that is no folder (a hub name without `hf:`)",
         "error: --teacher gpt2: no such folder; pass a model directory (config.json + "
         "model.safetensors + tokenizer.json) or a Hugging Face folder; if gpt2 is a Hugging "
         "Face hub model, write --teacher hf:gpt2", 1, "nothing written",
         lambda e: label_args(e, teacher="gpt2"), nothing_written),
    Case("label", "teacher folder without `model.safetensors` (only a `model.pt`)",
         "error: model directory <dir> has no model.safetensors: a model directory holds "
         "config.json, model.safetensors and tokenizer.json", 1,
         "nothing written; the `.pt` is never opened",
         lambda e: label_args(e, teacher=teacher_copy(e, lambda d: (
             (d / "model.safetensors").rename(d / "x"), pickle_file(d / "model.pt",
                                                                    e.tmp / "pwned")))),
         nothing_written),
    Case("label", "a pickle renamed to `model.safetensors`", "error: " + SELF_PICKLE, 1,
         "nothing written; nothing unpickled",
         lambda e: label_args(e, teacher=teacher_copy(
             e, lambda d: pickle_file(d / "model.safetensors", e.tmp / "pwned"))),
         nothing_written),
    Case("label", "teacher whose `tokenizer.json` has another vocabulary size",
         "error: <dir>: tokenizer vocab size 300 != model vocab_size 320; the model and "
         "tokenizer.json do not belong together", 1, "nothing written",
         lambda e: label_args(e, teacher=teacher_copy(e, lambda d: shutil.copyfile(
             e.other_tokenizer, d / "tokenizer.json"))), nothing_written),
    Case("label", "`--out` holds a dataset made with other options",
         "error: --out <dir> already holds a different labeling plan (corpus, teacher, "
         "tokenizer or options differ); choose another --out or pass --overwrite", 1,
         "the existing dataset, untouched",
         lambda e: (label_here(e.corpus, e.teacher, e.out, seq_len=16, limit_docs=16),
                    remember(e, e.out), label_args(e, seq_len=8))[-1], unchanged),
    Case("label", "`--out` a folder of other files (e.g. `.`), even with `--overwrite`",
         "error: --out <dir> holds files that are not a dataset of ours (e.g. notes.txt; 1 in "
         "all) and this tool removes only files it wrote; choose a new or empty --out", 1,
         "every file in the folder",
         lambda e: (e.out.mkdir(), (e.out / "notes.txt").write_text("mine"), remember(e, e.out),
                    [*label_args(e), "--overwrite"])[-1], unchanged),
    Case("label", "`--out` a dataset of ours plus a file the tool did not write, with "
         "`--overwrite`",
         "error: --out <dir> holds files that are not a dataset of ours (e.g. shards/train/x.csv; "
         "1 in all) and this tool removes only files it wrote; choose a new or empty --out", 1,
         "the dataset and the other file, untouched",
         lambda e: (label_here(e.corpus, e.teacher, e.out, seq_len=16, limit_docs=16),
                    (e.out / "shards/train/x.csv").write_text("a"), remember(e, e.out),
                    [*label_args(e, seq_len=8), "--overwrite"])[-1], unchanged),
    Case("label", "`--incremental` over a table corpus without stable ids",
         "error: --incremental needs stable document ids, but <file> is a table whose ids would "
         "be file:row (they shift when a row is deleted); pass --id-column COLUMN, or "
         "--content-ids to derive ids from the text", 1, "nothing written",
         lambda e: [*label_args(e), "--incremental"], nothing_written),
    Case("label", "`--incremental` into a dataset labeled with another teacher (tokenizer, "
         "k, mode or packing)",
         "error: --out <dir> was labeled with other settings (<keys> differ: teacher, tokenizer, "
         "labels or packing); a different teacher or setting is a new dataset, not a version: "
         "label into a new --out", 1, "the existing dataset, untouched",
         lambda e: (versioned_copy(e), incremental_args(e, teacher=make_teacher(
             e.dataset / "tokenizer.json", e.tmp / "t2", seed=1)))[-1], unchanged),
    Case("label", "`--incremental` into a dataset labeled without it",
         "error: --out <dir> holds a dataset labeled without --incremental (no document index "
         "to compare the corpus with); label into a new --out with --incremental, or leave "
         "--incremental out", 1, "the existing dataset, untouched",
         lambda e: (shutil.copytree(e.dataset, e.out), remember(e, e.out),
                    incremental_args(e))[-1], unchanged),
    Case("label", "`--incremental` over a grown corpus when the version's document index "
         "(`versions/NNNNN.index.json`) is missing or corrupt",
         "error: <dir>/versions/00001.index.json is missing or corrupt; the dataset cannot take "
         "a new version (relabel into a new --out)", 1, "the existing dataset, untouched",
         grown_without_index, unchanged),
    Case("label", "`--out` an existing file",
         "error: --out <dir> is a file, not a folder; choose a folder for the dataset", 1,
         "the file", lambda e: ((e.tmp / "f").write_text("x"), remember(e, e.tmp),
                                label_args(e, out=e.tmp / "f"))[-1], unchanged),
    Case("label", "`--out` under a file (or in a folder you cannot write)",
         "error: --out <path>: <file> is a file, so the folder cannot be created; choose a "
         "folder for the dataset", 1, "the file",
         lambda e: ((e.tmp / "f").write_text("x"), remember(e, e.tmp),
                    label_args(e, out=e.tmp / "f" / "ds"))[-1], unchanged),
    Case("label", "teacher that produces NaN/inf logits (on some inputs)",
         "error: teacher produced NaN/inf logits for <shard> rows [...]; refusing the batch - "
         "check the teacher weights (or use fp32)", 1,
         "shards completed before it (a rerun resumes); no manifest",
         lambda e: label_args(e, teacher=nan_teacher(e)), completed_shards_kept),
    Case("label", "a second labeler on the same `--out`",
         "error: <dir> is locked by pid <pid> on <host>: another labeler is writing it; wait "
         "for it or remove <dir>/.lock if that process is gone", 1,
         "the running labeler's files and lock",
         lambda e: (e.out.mkdir(), (e.out / ".lock").write_text(json.dumps(
             {"pid": os.getpid(), "host": socket.gethostname()})), remember(e, e.out),
             label_args(e))[-1], unchanged),
    Case("label", "disk full (or file size limit) while writing a shard",
         "error: writing shard shards/train/part-00000.parquet failed: ... (disk full? free "
         "space and rerun; completed shards are kept)", 1,
         "completed shards; no record for the partial one; no manifest; a rerun finishes",
         check_kept=shard_limit_kept, runner=disk_full, slow=True),
    Case("label", "labeler killed (SIGKILL, power loss) at any moment", "(nothing: killed)",
         "killed", "completed shards; a rerun gives the identical dataset",
         checked_by="tests/reliability/test_label_kills.py::"
                    "test_sigkill_at_seeded_moments_then_rerun_equals_uninterrupted"),
    Case("label", "SIGTERM or SIGINT (preemption, a time limit, Ctrl-C)",
         "interrupted by SIGTERM: label stopped with <n> of <n> shards complete (a shard in "
         "flight is discarded, never half-kept); to resume, run: pipeline label ... (exit 75)",
         75, "completed shards (no partial one, no manifest); the rerun gives the identical "
         "dataset",
         checked_by=f"{INTERRUPTS}test_label_signal_keeps_finished_shards_and_rerun_equals_"
                    "uninterrupted"),
    Case("label", "Ctrl-C (SIGINT to the process group) with `--workers N`",
         "interrupted by SIGINT: label stopped with <n> of <n> shards complete (...); to "
         "resume, run: pipeline label ... --workers 2 (exit 75)", 75,
         "completed shards; no worker process left, no worker traceback; the rerun gives the "
         "identical dataset",
         checked_by=f"{INTERRUPTS}test_label_on_dask_workers_stops_cleanly_on_sigint_to_the_"
                    "process_group"),
    Case("label", "object storage server stops mid-run",
         STORAGE_DOWN, 1, "completed shards on the bucket; no manifest; a rerun once the server "
         "is back gives the identical dataset",
         checked_by="tests/reliability/test_storage_outage.py::"
                    "test_labeler_stops_cleanly_when_storage_goes_down_and_rerun_finishes"),
    Case("label", "`--scheduler` that does not answer",
         "error: --scheduler tcp://127.0.0.1:9: the dask scheduler did not answer within 5s "
         "(...); start it with ...", 1, "nothing written",
         lambda e: label_args(e, scheduler="tcp://127.0.0.1:9"), nothing_written),
    Case("label", "`--scheduler` that is no address (`x y`, `tcp://host` without a port)",
         "error: --scheduler x y: not a scheduler address (missing port number in address "
         "'x y'); pass tcp://HOST:PORT or the file of `dask scheduler --scheduler-file`", 1,
         "nothing written", lambda e: label_args(e, scheduler="x y"), nothing_written),
    Case("label", "`--scheduler F.json` that does not exist",
         "error: --scheduler <file>: scheduler file not found; start one with `dask scheduler "
         "--scheduler-file <file>` or pass ...", 1, "nothing written",
         lambda e: label_args(e, scheduler=e.tmp / "sched.json"), nothing_written),
    Case("label", "a dask worker killed mid-label", "(nothing: dask reschedules its shards, "
         "which rewrite the same files)", 0, "an identical dataset",
         checked_by="tests/stages/test_label_dask.py::"
                    "test_worker_sigkilled_mid_run_still_yields_identical_dataset"),
    Case("validate", "a path that does not exist (any verb's `--labels` too)",
         "error: dataset <dir> does not exist: pass the --out folder of a `pipeline label` run",
         1, "—", lambda e: ["validate", e.tmp / "nope"], nothing_written),
    Case("validate", "folder without `manifest.json` (labeling did not finish)",
         "error: <dir> is not a soft-label dataset: no manifest.json (a labeling run did not "
         "finish: rerun `pipeline label` to complete it)", 1, "— (validate only reads)",
         lambda e: validate_copy(e, lambda d: (d / "manifest.json").unlink()),
         nothing_kept_by_validate),
    Case("validate", "corrupt or truncated shard",
         "invalid: shard shards/train/part-00000.parquet: checksum mismatch with manifest.json "
         "(the file changed or is corrupt); re-download or relabel it", 1, "—",
         lambda e: validate_copy(e, flip_byte), nothing_kept_by_validate),
    Case("validate", "shard rewritten with a positive log-probability and its sha256 updated",
         "invalid: shards/train/part-00000.parquet row 1: positive log-probability", 1, "—",
         lambda e: validate_copy(e, lambda d: rewrite_shard(
             d, "shards/train/part-00000.parquet", _bad_logprob(0.5))),
         nothing_kept_by_validate),
    Case("validate", "manifest shard path outside the dataset (`../`, absolute, URL)",
         "error: manifest shard path '../x.parquet' escapes the dataset directory <dir>; "
         "refusing an untrusted manifest", 1, "—",
         lambda e: validate_copy(e, lambda d: edit_manifest(
             d, lambda m: m["splits"]["train"][0].update(path="../x.parquet"))),
         nothing_kept_by_validate),
    Case("validate", "dataset of a newer major format version",
         "error: <dir>/manifest.json: format_version 2.0 is not supported (this reader reads "
         "major version 1); upgrade softlabel-pipeline", 1, "—",
         lambda e: validate_copy(e, lambda d: edit_manifest(
             d, lambda m: m.update(format_version="2.0"))), nothing_kept_by_validate),
    Case("validate", "`--version N` that the dataset does not have (any verb that reads a "
         "dataset)",
         "error: dataset <dir> has versions 1 to 1, not 3; see `pipeline inspect DATASET "
         "--versions`", 1, "—", lambda e: ["validate", e.versioned, "--version", "3"],
         nothing_written),
    Case("validate", "`--version N` whose file `versions/NNNNN.json` is corrupt (or removed "
         "by `pipeline gc`: then it says so)",
         "error: <dir>/versions/00001.json is not valid JSON (...); the dataset is corrupt", 1,
         "— (validate only reads)",
         lambda e: (versioned_copy(e, e.tmp / "ds"),
                    (e.tmp / "ds/versions/00001.json").write_text("{"), remember(e, e.tmp / "ds"),
                    ["validate", e.tmp / "ds", "--version", "1"])[-1], nothing_kept_by_validate),
    Case("train", "unknown key in a student file",
         "error: <file> [train]: unknown key 'batch'; valid keys are [...]", 2,
         "nothing written",
         lambda e: train_args(e, write(e, "s.toml", "[train]\nbatch = 8\n")), nothing_written),
    Case("train", "student key of the wrong type",
         "error: <file> [train]: key 'batch_size' must be int, got 'eight'", 2,
         "nothing written",
         lambda e: train_args(e, write(e, "s.toml", '[train]\nbatch_size = "eight"\n')),
         nothing_written),
    Case("train", "student value out of range, NaN or infinite (e.g. `lr = nan`)",
         "error: <file> [optimizer]: lr must be a finite number > 0, got nan", 2,
         "nothing written",
         lambda e: train_args(e, write(e, "s.toml", "[optimizer]\nlr = nan\n")), nothing_written),
    Case("train", "student file that is not TOML",
         "error: <file> is not valid TOML: ...", 2, "nothing written",
         lambda e: train_args(e, write(e, "s.toml", "[train\n")), nothing_written),
    Case("train", "student file that does not exist",
         "error: student file <file> not found (see data/students/*.toml)", 2,
         "nothing written", lambda e: train_args(e, e.tmp / "none.toml"), nothing_written),
    Case("train", "student `tokenizer` ≠ the dataset's, with a loss that compares ids "
         "(e.g. `kl_tail`)",
         "error: <file>: [loss] kind 'kl_tail' compares token ids, but this student's tokenizer "
         "<path> is not the dataset's; set [loss] kind = \"crosstok\" (or \"ce\")", 2,
         "nothing written",
         lambda e: train_args(e, write(e, "s.toml", f'tokenizer = "{e.other_tokenizer}"\n')),
         nothing_written),
    Case("train", "KD loss on a tokens-only dataset",
         "error: <file>: [loss] kind 'kl_tail' needs soft labels but dataset <dir> is tokens "
         "only (labels mode 'none'); set [loss] kind = \"ce\" or label the corpus with a "
         "teacher", 2, "nothing written",
         lambda e: train_args(e, write_student(e.tmp), e.tokens_only), nothing_written),
    Case("train", "`--out` inside the dataset folder",
         "error: --out <dir> is inside the dataset folder --labels <dir>; choose a runs folder "
         "outside it (a dataset holds only what the labeler wrote)", 1, "the dataset, untouched",
         lambda e: (e.saved.update(ds=copy_dataset(e.dataset, e.tmp)), remember(e, e.saved["ds"]),
                    train_args(e, write_student(e.tmp), e.saved["ds"], "--out",
                               e.saved["ds"] / "runs"))[-1], unchanged),
    Case("train", "unfinished run folder without `--resume`",
         "error: run folder <dir> holds an unfinished run; pass --resume to continue it from "
         "its last checkpoint, or delete it", 1, "the run folder, untouched",
         lambda e: train_args(e, run_copy(e, complete=False)), unchanged),
    Case("train", "finished run folder, other settings",
         "error: run folder <dir> holds a run with a different config (train.max_steps "
         "differ); use another --out or delete it", 1, "the run folder, untouched",
         lambda e: train_args(e, run_copy(e, complete=True), None, "--max-steps", "3"),
         unchanged),
    Case("train", "`--continue-from` a folder that is not a finished run",
         "error: --continue-from <dir> is not a finished run folder (no complete.json or "
         "model.safetensors for student <name>); finish that run first or pass another", 1,
         "nothing written",
         lambda e: train_args(e, write_student(e.tmp), None, "--continue-from", e.tmp / "none"),
         nothing_written),
    Case("train", "`--new-rows-only` when the version has no train shards the source run did "
         "not see",
         "error: dataset <dir> gained no train shards since version 1; nothing new to continue "
         "on", 1, "nothing written",
         lambda e: train_args(e, e.versioned_run[0], e.versioned, "--continue-from",
                              e.versioned_run[1], "--new-rows-only"), nothing_written),
    Case("train", "`--new-rows-only` from a run trained on a dataset without versions",
         "error: --new-rows-only needs a source run trained on a versioned dataset (labeled "
         "with --incremental); continue over all rows instead", 1, "nothing written",
         lambda e: train_args(e, e.trained[0], None, "--continue-from", e.trained[1],
                              "--new-rows-only"), nothing_written),
    Case("train", "shard changed after labeling",
         "error: shard shards/train/part-00001.parquet row group <g>: checksum mismatch with "
         "manifest.json (the file changed or is corrupt); re-download or relabel it", 1,
         "checkpoints so far; no complete.json (row groups are verified as they are first "
         "read, so the run stops before the changed one's rows are used)",
         lambda e: train_args(e, write_student(e.tmp), _tampered(e, flip_byte,
                                                                 "shards/train/part-00001.parquet")),
         no_complete_run),
    Case("train", "shard with a NaN log-probability and its sha256 updated",
         "error: shard shards/train/part-00000.parquet row group <g> row <r>: non-finite "
         "log-probability", 1, "checkpoints so far; no complete.json",
         lambda e: train_args(e, write_student(e.tmp), _tampered(e, lambda d: rewrite_shard(
             d, "shards/train/part-00000.parquet", _bad_logprob(np.nan)))), no_complete_run),
    Case("train", "a pickle in a run's resume state", "error: " + SELF_PICKLE, 1,
         "the run folder, untouched; nothing unpickled",
         lambda e: (e.saved.update(s=run_copy(e, complete=False)), pickle_file(
             _latest(e.tmp / "runs" / "s") / "model.safetensors", e.tmp / "pwned"),
             remember(e, e.tmp / "runs"),
             train_args(e, e.saved["s"], None, "--resume"))[-1], unchanged),
    Case("train", "training killed at any moment", "(nothing: killed)", "killed",
         "the last checkpoint; `--resume` gives bit-identical weights",
         checked_by="tests/reliability/test_train_kills.py::"
                    "test_sigkill_then_resume_gives_identical_weights"),
    Case("train", "SIGTERM or SIGINT (preemption, a time limit, Ctrl-C)",
         "interrupted by SIGTERM: train stopped at a step boundary, checkpoint saved for <name> "
         "at step <n>/<n>; to resume, run: pipeline train ... --resume (exit 75)", 75,
         "a checkpoint of the step in flight, even between `checkpoint_every` steps; "
         "`--resume` gives the unbroken run's weights and metrics",
         checked_by=f"{INTERRUPTS}test_train_signal_checkpoints_the_step_in_flight_and_resume_"
                    "equals_unbroken"),
    Case("train", "a second signal during that stop, or a stop longer than "
         "`SOFTLABELS_STOP_GRACE_S` (25 s)",
         "interrupted: second SIGTERM; exiting now (exit 75): the last checkpoint or shard on "
         "disk stays the valid one and a rerun resumes", 75,
         "the previous checkpoint (the half-written one is ignored); `--resume` gives the "
         "unbroken run's weights",
         checked_by=f"{INTERRUPTS}test_a_second_signal_or_a_slow_stop_exits_at_once_and_resume_"
                    "still_equals_unbroken"),
    Case("train", "SIGTERM to the process group with `--workers N`",
         "interrupted by SIGTERM: train stopped; to resume, run: pipeline train ... --workers 2 "
         "--resume (exit 75)", 75,
         "each student's last checkpoint; no worker process left; `--resume` finishes",
         checked_by=f"{INTERRUPTS}test_train_on_dask_workers_stops_cleanly_on_sigterm_to_the_"
                    "process_group"),
    Case("train", "under torchrun, SIGTERM to one rank (or to all)",
         "interrupted by a signal to another rank: train stopped at a step boundary, checkpoint "
         "saved for <name> at step <n>/<n>; to resume, run: pipeline train ... --resume (exit "
         "75)", "75 (each rank; torchrun: 1)",
         "every rank stopped after the same step, which rank 0 checkpointed; `--resume` gives "
         "the unbroken run's weights",
         checked_by="tests/e2e/test_torchrun.py::"
                    "test_sigterm_to_one_rank_stops_every_rank_at_the_same_step"),
    Case("train", "object storage server stops mid-run (`--out s3://...`)",
         STORAGE_DOWN, 1, "the checkpoints uploaded so far; no complete.json; `--resume` "
         "once the server is back gives bit-identical weights",
         checked_by="tests/reliability/test_storage_outage.py::"
                    "test_training_stops_cleanly_when_storage_goes_down_and_resume_finishes"),
    Case("train", "object storage server stops while shards stream (`--labels s3://...`)",
         STORAGE_DOWN, 1, "the checkpoints so far; no complete.json; `--resume` once the "
         "server is back gives bit-identical weights",
         checked_by="tests/reliability/test_storage_outage.py::"
                    "test_training_from_s3_labels_stops_cleanly_when_storage_goes_down"),
    Case("evaluate", "`--run` with its own tokenizer, one that cannot spell every byte",
         "error: --run <dir> (tokenizer <path>): the tokenizer cannot spell 255 of the 256 bytes "
         "(e.g. <byte>), so some corpus bytes would become unknown tokens; retrain it with "
         "`pipeline tokenizer train` (its initial alphabet has every byte)", 1, "nothing written",
         lambda e: _evaluate(e, make_teacher(_unspelling_tokenizer(e), e.tmp / "other")),
         nothing_written),
    Case("evaluate", "`--teacher` that did not label the dataset",
         "error: --teacher <dir> (weights sha256 <a>) is not the teacher that labeled <dir> "
         "(sha256 <b>); pass that teacher, or pass this model as a --run to measure its "
         "fidelity", 1, "nothing written",
         lambda e: _evaluate(e, e.trained[1], "--teacher", make_teacher(
             e.dataset / "tokenizer.json", e.tmp / "t2", seed=1)), nothing_written),
    Case("evaluate", "`--run` folder whose weights are a pickle", "error: " + SELF_PICKLE, 1,
         "nothing written; nothing unpickled",
         lambda e: _evaluate(e, _pickled_run(e)), nothing_written),
    Case("evaluate", "dataset without validation rows",
         "error: <dir> has no validation rows: relabel with --validation-fraction > 0 (e.g. "
         "0.02)", 1, "nothing written",
         lambda e: _evaluate(e, e.trained[1], labels=e.no_validation), nothing_written),
    Case("evaluate", "`--out` a folder holding a `report.md` (or other report file) the tool "
         "did not write",
         "error: --out <dir> holds report.md, which this tool did not write; choose another "
         "--out for the report", 1, "every file in the folder",
         lambda e: ((e.tmp / "report").mkdir(), (e.tmp / "report/report.md").write_text("mine"),
                    remember(e, e.tmp / "report"), _evaluate(e, e.trained[1]))[-1], unchanged),
    Case("run", "job file that does not exist",
         "error: job file <file> not found (see data/jobs/example.toml)",
         2, "nothing run", lambda e: ["run", e.tmp / "none.toml"], nothing_written),
    Case("run", "job with an unknown key",
         "error: <file>: [label] has unknown key 'topk' (did you mean 'top_k'?); valid keys: "
         "...", 2, "nothing run", lambda e: ["run", job(e, "topk = 4\n")],
         lambda e: nothing_written(e) or _no_job_output(e)),
    Case("run", "job value out of range, or for another mode",
         "error: <file>: [label] top_p only applies to mode = \"topp\" (here mode = "
         "\"topk\"); drop top_p or set mode = \"topp\"", 2, "nothing run",
         lambda e: ["run", job(e, "top_p = 0.5\n")],
         lambda e: nothing_written(e) or _no_job_output(e)),
    Case("run", "job with a missing section",
         "error: <file>: missing section [teacher]; add it (see data/jobs/example.toml)", 2,
         "nothing run",
         lambda e: ["run", write(e, "j.toml", re.sub(r"\[teacher\]\ndir = .*\n", "",
                                                     job(e).read_text()))],
         lambda e: nothing_written(e) or _no_job_output(e)),
    Case("run", "a stage fails",
         "error: stage label failed: corpus path <path> does not exist: pass a file, "
         "directory or glob of .parquet/.jsonl/.csv/.txt files, or builtin:bbc-news", 1,
         "earlier stages' outputs; a rerun resumes",
         lambda e: ["run", job(e, corpus=e.tmp / "nope"), "--quiet"],
         lambda e: _no_job_output(e, "labels/manifest.json")),
    Case("run", "an incremental job killed (SIGKILL) while labeling a new version",
         "(nothing: killed)", "killed",
         "the previous version, committed; history.jsonl as it was; the rerun adds one line for "
         "the new version and gives the dataset of an unbroken run",
         checked_by="tests/reliability/test_run_kills_incremental.py::"
                    "test_sigkill_while_labeling_version_2_then_rerun_equals_unbroken"),
    Case("run", "SIGTERM or SIGINT during a stage",
         "interrupted by SIGTERM during stage train: train stopped at a step boundary, "
         "checkpoint saved for <name> at step <n>/<n>; to resume, run: pipeline run <file> "
         "--quiet (exit 75)", 75,
         "earlier stages' outputs and what the stage kept; the rerun skips what is complete",
         checked_by=f"{INTERRUPTS}test_run_names_the_stage_it_interrupted_and_a_rerun_finishes"),
    # ---- pipeline view (pipeline/sharing/view.py) ----
    Case("view", "a dataset path that does not exist",
         "error: dataset <path> does not exist: pass the --out folder of a `pipeline label` run",
         1, "nothing written", lambda e: ["view", e.tmp / "nope", "--out", _page(e)], _no_page),
    Case("view", "`--split` the dataset does not have",
         "error: --split test: the dataset has splits ['train', 'validation']", 1,
         "nothing written",
         lambda e: ["view", e.dataset, "--out", _page(e), "--split", "test"], _no_page),
    Case("view", "`--out` in a folder that does not exist",
         "error: --out <path>: the folder <path> does not exist; create the folder or pick "
         "another path", 1, "nothing written",
         lambda e: ["view", e.dataset, "--out", e.tmp / "no" / "view.html"],
         lambda e: not (e.tmp / "no").exists() or pytest.fail("folder made")),
    Case("view", "`--out` an existing file that `pipeline view` did not write",
         "error: --out <path> exists and is not a page `pipeline view` wrote; refusing to "
         "replace it: choose another path or move it", 1, "the file, unchanged",
         lambda e: ["view", e.dataset, "--out", _foreign_page(e)], unchanged),
    Case("view", "`--out` inside the dataset folder",
         "error: --out <path> lies inside the dataset <path>: a dataset holds only what the "
         "labeler wrote; write the page elsewhere", 1, "the dataset, unchanged",
         lambda e: ["view", _dataset_copy(e), "--out", e.tmp / "ds" / "view.html"], unchanged),
    # ---- sharing (issue #20): publish, pull, ls, import ----
    Case("publish", "a destination that already holds a different dataset",
         "error: <dir> already holds a different dataset (its manifest lists other shards); "
         "publish to a new folder, nothing was written", 1, "every file at the destination",
         lambda e: ["publish", e.dataset, _other_dataset(e)], unchanged),
    Case("publish", "a destination that cannot be written (read-only, or a path through a file)",
         "error: cannot write to <dir>: <reason>; choose a destination you can write to", 1,
         "nothing written: the probe write comes first, no shard moves, no manifest",
         lambda e: ["publish", e.dataset, write(e, "file", "x") / "pub"],
         lambda e: nothing_written(e) or _no_manifest(e.tmp)),
    Case("publish", "an unreachable object store (`DEST` s3://..., endpoint down)",
         "error: s3://<bucket>/<key>: object storage unreachable (...); check that the server "
         "is up and AWS_ENDPOINT_URL (--endpoint-url) points at it, then rerun: completed shards "
         "and checkpoints are kept", 1, "nothing written: no shard, no manifest",
         checked_by="tests/pipeline/sharing/test_publish.py::"
                    "test_publish_to_unreachable_object_storage_is_one_line"),
    Case("pull", "a source shard that fails its checksum",
         "error: shards/train/part-00001.parquet: sha256 <a> (<n> bytes) differs from the "
         "manifest's <b> (<n> bytes); the source shard is corrupt, nothing was written for it; "
         "the 1 shards verified before it are kept in <dir> (no manifest: not a dataset yet)", 1,
         "the shards verified before it; no manifest (a rerun resumes)",
         lambda e: ["pull", _tampered(e, flip_byte, "shards/train/part-00001.parquet"), e.out],
         lambda e: _verified_shards_kept(e)),
    Case("ls", "a prefix that cannot be read, typed with credentials (`s3://KEY:SECRET@...`)",
         "error: s3://nobucket/labels object storage request failed (...); check credentials "
         "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or a profile), AWS_DEFAULT_REGION and "
         "AWS_ENDPOINT_URL (--endpoint-url)", 1, "nothing; no credential in the line (user info "
         "and query tokens stripped, the secret masked wherever the client quotes it)",
         runner=lambda e: _ls_with_credentials(e), check_kept=nothing_written),
    Case("import", "a row whose ids exceed the vocabulary",
         "error: <file> row 2 column topk_ids: id 999999 at position 0 is outside the vocabulary "
         "[0, 320) of --tokenizer; import with the tokenizer the labels were made with; fix the "
         "file (or its exporter) and import again, nothing was written", 1,
         "nothing written (every row is checked before the first shard)",
         lambda e: _import_args(e, lambda r: r["topk_ids"][0].__setitem__(0, 999_999)),
         nothing_written),
    Case("import", "log-probabilities that are not a distribution (Σ p > 1, or log p > 0)",
         "error: <file> row 2 column topk_logprobs: the probabilities at position 1 sum to "
         "<x> > 1: not a distribution (natural log, temperature 1, one teacher distribution a "
         "position); fix the file (or its exporter) and import again, nothing was written", 1,
         "nothing written",
         lambda e: _import_args(e, lambda r: r["topk_logprobs"].__setitem__(1, [-0.2] * 4)),
         nothing_written),
    # students with their own tokenizer (#21)
    Case("train", "student `tokenizer` that cannot spell every byte (unknown-token fallback)",
         "error: <file> (tokenizer <path>): the tokenizer cannot spell 255 of the 256 bytes (e.g. "
         "<byte>), so some corpus bytes would become unknown tokens; retrain it with `pipeline "
         "tokenizer train` (its initial alphabet has every byte)", 1, "nothing written",
         lambda e: train_args(e, write(e, "s.toml", f'tokenizer = "{_unspelling_tokenizer(e)}"'
                                                    '\n[loss]\nkind = "crosstok"\n')),
         nothing_written),
    Case("train", "student with its own tokenizer, dataset without alignment data (its "
         "tokenizer is not byte-level BPE, so its ids do not spell its bytes)",
         "error: <file>: dataset <dir> (tokenizer.json): aligning two tokenizers needs a "
         "byte-level BPE tokenizer and it has no ByteLevel pre-tokenizer; relabel with a "
         "byte-level BPE tokenizer (`pipeline tokenizer train`), or drop the student's "
         "`tokenizer` to use the dataset's", 1, "nothing written",
         lambda e: train_args(e, write(e, "s.toml", f'tokenizer = "{e.dataset}/tokenizer.json"'
                                                    '\n[loss]\nkind = "ce"\n'),
                              _wordsplit_dataset(e)), nothing_written),
]

SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYzSECRET"


def _other_dataset(env: Env) -> Path:
    """A copy of the dataset whose manifest lists fewer shards: another dataset."""
    other = copy_dataset(env.dataset, env.tmp)
    edit_manifest(other, lambda m: m["splits"].update(train=m["splits"]["train"][:1]))
    remember(env, other)
    return other


def _no_manifest(tmp: Path) -> None:
    assert not list(tmp.rglob("manifest.json"))


def _verified_shards_kept(env: Env) -> None:
    assert not (env.out / "manifest.json").exists()
    assert sorted(files(env.out)) == ["shards/train/part-00000.parquet"]
    assert files(env.out)["shards/train/part-00000.parquet"] == (
        env.dataset / "shards/train/part-00000.parquet").read_bytes()


def _ls_with_credentials(env: Env) -> tuple[int, str]:
    from tests.interop import moto_s3

    with moto_s3("bucket"):
        code, out, err = env.cli("ls", f"s3://AKIA:{SECRET}@nobucket/labels?token={SECRET}")
    assert SECRET not in out + err and "wJalr" not in err and "AKIA" not in err
    return code, err


def _import_args(env: Env, spoil) -> list:
    """`import` of the dataset's own export with its second row spoiled."""
    src = env.tmp / "rows.jsonl"
    code, _, err = env.cli("export", env.dataset, "--to", "jsonl", src)
    assert code == 0, err
    lines = src.read_text().splitlines()
    row = json.loads(lines[1])
    spoil(row)
    src.write_text("\n".join([lines[0], json.dumps(row), *lines[2:]]) + "\n")
    return ["import", src, env.out, "--from", "jsonl", "--tokenizer",
            env.dataset / "tokenizer.json", "--teacher", "t"]



def _unspelling_tokenizer(env: Env) -> Path:
    """A byte-level BPE that knows one byte: any other corpus byte would be an unknown token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    from pipeline.models.tokenizer import EOS_TOKEN

    tok = Tokenizer(models.BPE({"a": 0, EOS_TOKEN: 1}, []))
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.ByteLevel(), decoders.ByteLevel()
    tok.add_special_tokens([EOS_TOKEN])
    (env.tmp / "unspelling").mkdir()
    tok.save(str(env.tmp / "unspelling/tokenizer.json"))
    return env.tmp / "unspelling/tokenizer.json"


def _wordsplit_dataset(env: Env) -> Path:
    """A tokens-only dataset whose tokenizer splits on whitespace (spaces are not in its ids)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    from pipeline.models.tokenizer import EOS_TOKEN

    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator([json.loads(x)["text"] for x in env.corpus.read_text().splitlines()],
                            trainers.BpeTrainer(vocab_size=300, show_progress=False,
                                                special_tokens=[EOS_TOKEN, "[UNK]"]))
    tok.save(str(env.tmp / "wordsplit.json"))
    code, _, err = env.cli("label", "--corpus", env.corpus, "--tokenizer",
                           env.tmp / "wordsplit.json", "--top-k", "0", "--seq-len", "16",
                           "--limit-docs", "16", "--out", env.tmp / "wordsplit", "--quiet")
    assert code == 0, err
    return env.tmp / "wordsplit"


def _bad_logprob(value):
    from pipeline.softlabels.schema import COL_LABEL_LOGPROBS
    from tests.reliability.test_untrusted_input import _set_flat

    return _set_flat(COL_LABEL_LOGPROBS, 70, value)  # row 1 of a 16 x 4 layout (format 1.2)


def _tampered(env: Env, tamper, *args) -> Path:
    ds = copy_dataset(env.dataset, env.tmp)
    tamper(ds, *args)
    return ds


def _latest(run_dir: Path) -> Path:
    return run_dir / "state" / json.loads((run_dir / "state/latest.json").read_text())[
        "checkpoint"]


def _pickled_run(env: Env) -> Path:
    run = env.tmp / "pickled"
    shutil.copytree(env.trained[1], run)
    (run / "model.safetensors").unlink()
    pickle_file(run / "model.safetensors", env.tmp / "pwned")
    return run


def _evaluate(env: Env, run, *extra, labels=None) -> list:
    return ["evaluate", "--labels", labels or env.dataset, "--run", run, "--out",
            env.tmp / "report", "--device", "cpu", "--quiet", *extra]


def _no_job_output(env: Env, path: str = "labels") -> None:
    assert not (env.tmp / "job" / path).exists()


# ---- the tests --------------------------------------------------------------------------------

def pattern(shows: str) -> str:
    parts = re.split(r"(<[^<>\s]+>|\.\.\.)", shows)
    return "".join(".*" if p == "..." else ".+?" if re.fullmatch(r"<[^<>\s]+>", p)
                   else re.escape(p) for p in parts)


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory, tiny_corpus, tiny_tokenizer, tiny_teacher, small_dataset):
    """Inputs several cases share, built on first use."""
    from pipeline.models.tokenizer import train_bpe_tokenizer
    from stages.label import LabelConfig
    from stages.label import run as label
    from stages.train import TrainConfig
    from stages.train import run as train

    tmp = tmp_path_factory.mktemp("modes")
    built: dict = {}

    def once(fn):
        return lambda: built[fn.__name__] if fn.__name__ in built else \
            built.setdefault(fn.__name__, fn())

    def other_tokenizer():
        texts = [f"other words {i} entirely unrelated text" for i in range(40)]
        return train_bpe_tokenizer(texts, 300, tmp / "other.json").path

    def tokens_only():
        label(LabelConfig(corpus=str(tiny_corpus), out=str(tmp / "tok"), top_k=0,
                          tokenizer=str(tiny_tokenizer), seq_len=16, limit_docs=16, quiet=True))
        return tmp / "tok"

    def no_validation():
        label_here(tiny_corpus, tiny_teacher, tmp / "noval", seq_len=16, validation_fraction=0.0)
        return tmp / "noval"

    def trained():
        student = write_student(tmp, max_steps=2, epochs=None)
        runs = train(TrainConfig(labels=str(small_dataset), students=[str(student)],
                                 out=str(tmp / "runs"), device="cpu", quiet=True))
        return student, runs["s"]

    def versioned():
        """Version 1 of an --incremental dataset with label_args's settings (ids: 'id')."""
        label(LabelConfig(corpus=str(tiny_corpus), out=str(tmp / "versioned"),
                          teacher=str(tiny_teacher), top_k=4, seq_len=16, shard_rows=16,
                          batch_size=8, limit_docs=16, validation_fraction=0.2, id_column="id",
                          incremental=True, device="cpu", quiet=True))
        return tmp / "versioned"

    def versioned_run():
        student = write_student(tmp, "v", max_steps=2, epochs=None)
        runs = train(TrainConfig(labels=str(made["versioned"]()),
                                 students=[str(student)], out=str(tmp / "vruns"), device="cpu",
                                 quiet=True))
        return student, runs["v"]

    made = {f.__name__: once(f) for f in (other_tokenizer, tokens_only, no_validation, trained,
                                          versioned, versioned_run)}
    return made


def _param(case: Case):
    marks = [pytest.mark.slow] if case.slow else []
    return pytest.param(case, id=f"{case.command}: {case.bad_input}", marks=marks)


@pytest.mark.parametrize("case", [_param(c) for c in CASES if not c.checked_by])
def test_failure_mode(case: Case, cli, monkeypatch, tmp_path, tiny_corpus, tiny_teacher,
                      small_dataset, fixtures):
    env = Env(tmp_path, tiny_corpus, tiny_teacher, small_dataset, fixtures, cli, monkeypatch)
    if case.runner:
        code, err = case.runner(env)
    else:
        code, _, err = cli(*case.setup(env))
    lines = err.strip().splitlines()
    assert code == case.exit, err
    assert len(lines) == 1, err
    assert re.fullmatch(pattern(case.shows), lines[0]), f"\n{lines[0]}\n{case.shows}"
    case.check_kept(env)


@pytest.mark.parametrize("case", [_param(c) for c in CASES if c.checked_by])
def test_failure_mode_checked_elsewhere_exists(case: Case):
    path, name = case.checked_by.split("::")
    assert re.search(rf"^def {name}\(", (REPO / path).read_text(), re.M), case.checked_by


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render_table() -> str:
    rows = ["| command | bad input | what you see (stderr, one line) | exit | what is kept |",
            "|---|---|---|---|---|"]
    for c in CASES:
        shows = c.shows if c.shows.startswith("(") else (
            f"`` {c.shows} ``" if "`" in c.shows else f"`{c.shows}`")
        rows.append(f"| `{c.command}` | {_cell(c.bad_input)} | {_cell(shows)} | {c.exit} | "
                    f"{_cell(c.kept)} |")
    return "\n".join(rows) + "\n"


def readme_table(text: str) -> tuple[int, int]:
    """(start, end) offsets of the table in README.md's "## Failure modes" section."""
    section = text.index("\n## Failure modes\n")
    start = text.index("\n|", section) + 1
    end = start
    while end < len(text) and text.startswith("|", end):
        end = text.index("\n", end) + 1
    return start, end


def test_readme_table_matches():
    text = (REPO / "README.md").read_text()
    start, end = readme_table(text)
    assert text[start:end] == render_table(), (
        "README.md's Failure modes table differs from tests/reliability/test_failure_modes.py; "
        "run: .venv/bin/python -m tests.reliability.test_failure_modes --write")


if __name__ == "__main__":
    if "--write" in sys.argv:
        readme = REPO / "README.md"
        text = readme.read_text()
        start, end = readme_table(text)
        readme.write_text(text[:start] + render_table() + text[end:])
    else:
        sys.stdout.write(render_table())
