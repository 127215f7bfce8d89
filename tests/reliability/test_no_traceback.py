"""No input makes the CLI print a traceback: one line on stderr (or success), for every value.

The property, checked by hypothesis through the console entry point `pipeline.cli.main(argv)`
in this process: whatever option values, corpus cells or student-file keys a user gives, the
command exits 0 (done), 1 (refused or failed) or 2 (bad command line or file), and a failure is
exactly one line on stderr starting with `error:` — never a traceback (an exception escaping
`main` fails the test with its traceback). The values are drawn from each option's declared type
(pipeline/config/stages.py), so a new option is covered without editing this file.

Values that are valid but merely large (a 10^9-wide model, a million-row benchmark batch) are
left out: they do not crash the parser, they exhaust memory, which no range check can foresee.
"""

import contextlib
import io
import itertools
import json
import typing
from dataclasses import fields

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tomli_w
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from pipeline.cli import main
from pipeline.config.fields import base_types, flag_of
from pipeline.config.stages import (
    AuditConfig,
    BigramConfig,
    EvaluateConfig,
    LabelConfig,
    TrainConfig,
)
from tests.conftest import make_docs
from tests.reliability.conftest import write_student

SETTINGS = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck))
_runs = itertools.count()

JUNK = st.sampled_from(["", "x", "1e5", "nan", "-", "--quiet"])
INTS = st.one_of(st.integers(-3, 40), st.sampled_from([2**31, 2**63, -(2**63), 10**30]))
FLOATS = st.one_of(st.floats(), st.sampled_from([0.0, -0.0, 1.0, 0.5, 1e-320, 1e300]))
CHOICES = {"mode": ["topk", "topp", "sampled", "topq"], "logprob_encoding": ["fp16", "u8", "fp8"],
           "device": ["cpu", "auto", "cuda", "cuda:1", "meta", "mps"],
           "text_column": ["text", "id", "nope"], "id_column": ["id", "text", "nope"]}
# Valid values that would only cost time (clusters, worker processes, 65k draws per position).
BOUNDS = {"workers": st.sampled_from([-1, 0]), "samples": st.integers(-2, 16),
          "num_workers": st.sampled_from([-1, 0]), "max_steps": st.sampled_from([-1, 0, 1, 2]),
          "epochs": st.sampled_from([-1, 0, 1, 2**62])}
# Sizes that only cost time or memory when valid: timed batches, repeats, rows.
OTHER_BOUNDS = {**BOUNDS, "batch_size": st.integers(-2, 64), "bench_repeats": st.integers(-2, 8),
                "bench_warmup": st.integers(-2, 8), "rows": st.integers(-2, 64)}
SKIP = {"corpus", "out", "teacher", "tokenizer", "quiet", "scheduler", "labels", "students",
        "runs"}


def run(*argv) -> tuple[int, str]:
    """`pipeline ARGV` in process: (exit code, stderr). Any other exception propagates."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            main([str(a) for a in argv])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return code, err.getvalue()


def assert_one_line(code: int, err: str, argv) -> None:
    event(f"exit {code}: {err.split(':')[1].strip()[:30] if code else 'done'}")
    assert code in (0, 1, 2), (code, err, argv)
    if code:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (argv, err)
    assert "Traceback" not in err, err


def option_values(cls, bounds: dict) -> st.SearchStrategy:
    """A few of `cls`'s options with values of their type, wrong types and junk."""
    hints = typing.get_type_hints(cls)
    strategies = {}
    for f in fields(cls):
        if f.name in SKIP:
            continue
        kind = base_types(hints[f.name])[0]
        typed = bounds[f.name] if f.name in bounds else (
            st.sampled_from(CHOICES[f.name]) if f.name in CHOICES else
            {int: INTS, float: FLOATS, bool: st.just(True), str: st.text(max_size=6)}[kind])
        strategies[f] = st.one_of(typed, JUNK) if kind is not bool else typed
    return st.lists(st.sampled_from(list(strategies)), unique=True, max_size=4).flatmap(
        lambda fs: st.tuples(*[strategies[f] for f in fs]).map(lambda vs: list(zip(fs, vs))))


def argv_of(options) -> list:
    out = []
    for f, value in options:
        out += [flag_of(f)] if value is True else [flag_of(f), value]
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("nt") / "docs.jsonl"
    path.write_text("".join(json.dumps(d) + "\n" for d in make_docs(8, words_per_doc=(8, 30))))
    return path


TEACHERS = st.sampled_from(["teacher"] * 4 + ["gpt2", "/nonexistent/t", "corpus", "", "s3:/t",
                                              "hf:/nonexistent/t"])
OUTS = st.sampled_from(["fresh"] * 5 + ["", "s3:/x", "corpus", "corpus/x"])


def out_path(kind: str, fresh, corpus):
    return {"fresh": fresh, "corpus": corpus, "corpus/x": f"{corpus}/x"}.get(kind, kind)


@given(options=option_values(LabelConfig, BOUNDS), teacher=TEACHERS, out=OUTS)
@SETTINGS
def test_label_options_never_traceback(tmp_path_factory, corpus, tiny_teacher, options,
                                       teacher, out):
    teacher = {"teacher": tiny_teacher, "corpus": corpus}.get(teacher, teacher)
    out = out_path(out, tmp_path_factory.getbasetemp() / f"nt-label-{next(_runs)}", corpus)
    argv = ["label", "--corpus", corpus, "--teacher", teacher, "--out", out, "--quiet",
            "--limit-docs", 6, "--shard-rows", 8, "--device", "cpu", *argv_of(options)]
    assert_one_line(*run(*argv), argv)


CELLS = st.one_of(st.none(), st.booleans(), st.integers(-5, 2**70), st.floats(allow_nan=False),
                  st.text(max_size=12), st.just("\ud800 lone"), st.lists(st.integers(), max_size=2),
                  st.dictionaries(st.text(max_size=3), st.integers(), max_size=1))
RECORDS = st.lists(st.fixed_dictionaries({}, optional={"text": CELLS, "id": CELLS, "x": CELLS}),
                   min_size=1, max_size=6)


def _write_corpus(root, fmt: str, records: list[dict]):
    path = root / f"c.{fmt}"
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    elif fmt == "csv":
        keys = sorted({k for r in records for k in r}) or ["text"]
        path.write_text(",".join(keys) + "\n" + "".join(
            ",".join(json.dumps(r[k]) if k in r else "" for k in keys[:len(r) or 1]) + "\n"
            for r in records), errors="surrogatepass")
    else:  # parquet holds one type per column: each column as strings, or as drawn if it can
        table = {}
        for key in sorted({k for r in records for k in r}):
            column = [r.get(key) for r in records]
            try:
                table[key] = pa.array(column)
            except (pa.ArrowException, OverflowError):
                table[key] = pa.array([None if v is None else repr(v) for v in column])
        pq.write_table(pa.table(table or {"text": pa.array([None])}), path)
    return path


@given(records=RECORDS, fmt=st.sampled_from(["jsonl", "csv", "parquet"]),
       id_column=st.booleans())
@SETTINGS
def test_corpus_cells_never_traceback(tmp_path_factory, tiny_tokenizer, records, fmt,
                                      id_column):
    root = tmp_path_factory.getbasetemp() / f"nt-corpus-{next(_runs)}"
    root.mkdir()
    try:
        path = _write_corpus(root, fmt, records)
    except (pa.ArrowException, UnicodeEncodeError):
        return  # a table pyarrow itself cannot write is no input anyone can give us
    argv = ["label", "--top-k", 0, "--tokenizer", tiny_tokenizer, "--corpus", path, "--out",
            root / "out", "--seq-len", 4, "--quiet", *(["--id-column", "id"] * id_column)]
    assert_one_line(*run(*argv), argv)


STUDENT_KEYS = {"model": {"family": st.sampled_from(["gpt", "gru", "lstm", 3]),
                          "n_layer": INTS.filter(lambda v: v < 4),
                          "n_head": st.sampled_from([-1, 0, 1, 3, 4, 2.0]),
                          "d_model": st.sampled_from([-8, 0, 1, 8, 12, 16, "16"]),
                          "context": st.sampled_from([-1, 0, 8, 16, 64]),
                          "dropout": FLOATS, "vocab_size": st.sampled_from([0, 320, 321])},
                "optimizer": {"lr": FLOATS, "weight_decay": FLOATS, "eps": FLOATS,
                              "grad_clip": FLOATS,
                              "betas": st.lists(FLOATS, max_size=3) | st.just("x")},
                "schedule": {"warmup_steps": INTS, "min_lr": FLOATS},
                "train": {"batch_size": st.sampled_from([-1, 0, 1, 4, 10**6, 1.5]),
                          "seed": INTS, "eval_every": INTS, "eval_batches": INTS.filter(
                              lambda v: v < 4), "checkpoint_every": INTS, "log_every": INTS,
                          "max_steps": INTS, "epochs": INTS},
                "loss": {"kind": st.sampled_from(["kl_tail", "ce", "sampled", "kl", 1]),
                         "alpha": FLOATS, "temperature": FLOATS}}
ENTRIES = st.sampled_from([(s, k) for s, keys in STUDENT_KEYS.items() for k in keys]
                          + [("train", "bogus"), ("", "colour")])


@given(entries=st.lists(ENTRIES, unique=True, max_size=3).flatmap(
           lambda es: st.tuples(*[STUDENT_KEYS.get(s, {}).get(k, INTS) for s, k in es]).map(
               lambda vs: list(zip(es, vs)))),
       options=option_values(TrainConfig, BOUNDS), out=OUTS)
@SETTINGS
def test_student_keys_and_train_options_never_traceback(tmp_path_factory, small_dataset,
                                                        corpus, entries, options, out):
    root = tmp_path_factory.getbasetemp() / f"nt-train-{next(_runs)}"
    root.mkdir()
    table = {"model": {"family": "gpt", "n_layer": 1, "n_head": 2, "d_model": 16},
             "train": {"batch_size": 8, "eval_batches": 1, "checkpoint_every": 1}}
    for (section, key), value in entries:
        (table.setdefault(section, {}) if section else table)[key] = value
    (root / "s.toml").write_text(tomli_w.dumps(table))
    argv = ["train", "--labels", small_dataset, "--student", root / "s.toml", "--out",
            out_path(out, root / "runs", corpus), "--device", "cpu", "--quiet", "--max-steps", 1,
            *argv_of(options)]
    assert_one_line(*run(*argv), argv)


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory, small_dataset):
    tmp = tmp_path_factory.mktemp("nt-run")
    argv = ["train", "--labels", small_dataset, "--student", write_student(tmp, max_steps=1,
            epochs=None), "--out", tmp / "runs", "--device", "cpu", "--quiet"]
    assert run(*argv)[0] == 0
    return tmp / "runs" / "s"


VERBS = {"evaluate": EvaluateConfig, "audit": AuditConfig, "bigram": BigramConfig}


@given(verb=st.sampled_from(list(VERBS)), data=st.data())
@SETTINGS
def test_other_verbs_options_never_traceback(tmp_path_factory, small_dataset, tiny_teacher,
                                             run_folder, verb, data):
    options = data.draw(option_values(VERBS[verb], OTHER_BOUNDS))
    out = tmp_path_factory.getbasetemp() / f"nt-{verb}-{next(_runs)}"
    base = {"evaluate": ["--run", run_folder, "--teacher", tiny_teacher, "--out", out,
                         "--quiet", "--device", "cpu"],
            "audit": ["--teacher", tiny_teacher, "--device", "cpu"], "bigram": []}[verb]
    argv = [verb, "--labels", small_dataset, *base, *argv_of(options)]
    assert_one_line(*run(*argv), argv)
