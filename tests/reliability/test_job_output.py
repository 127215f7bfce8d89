"""What a scheduled job's log and an 80-column terminal show (issue 15 §4, §5).

- Without a terminal, progress is plain lines (or JSON lines with --log-format json), never a
  carriage-return bar, and the last line says how the task ended.
- `--help` of every verb is readable at 80 columns: no option name cut short.
- Summary lines never wrap inside a value on an 80-column terminal.
- `label` prints what it skipped (empty and non-UTF-8 documents, tokens dropped, an empty
  validation split), and `inspect` shows the same.
"""

import io
import json
import re

import pytest
import typer
from rich.console import Console

from pipeline.cli import commands
from tests.conftest import make_docs
from tests.reliability.conftest import write_student

VERBS = [("label",), ("train",), ("validate",), ("inspect",), ("audit",), ("bigram",),
         ("evaluate",), ("run",), ("tokenizer", "train"), ()]


def click_command(verb: tuple):
    cmd = typer.main.get_command(commands.app)
    for name in verb:
        cmd = cmd.commands[name]
    return cmd


@pytest.mark.parametrize("verb", VERBS, ids=lambda v: " ".join(v) or "pipeline")
def test_help_is_readable_at_80_columns(cli, monkeypatch, verb):
    monkeypatch.setenv("COLUMNS", "80")
    code, out, _ = cli(*verb, "--help")
    assert code == 0
    assert max(len(line) for line in out.splitlines()) <= 80, out
    assert "…" not in out, out  # rich's help cut option names and help texts short
    for param in click_command(verb).params:
        for name in param.opts:
            assert re.search(rf"(^|[\s,/]){re.escape(name)}([\s,=]|$)", out, re.M), (name, out)


def terminal(monkeypatch) -> io.StringIO:
    """Point the CLI's stdout console at an 80-column terminal."""
    buf = io.StringIO()
    monkeypatch.setattr(commands, "out", Console(file=buf, width=80, force_terminal=True,
                                                 color_system=None))
    return buf


def as_shown(text: str, width: int = 80) -> str:
    """What a terminal of `width` columns shows: every longer line folded at the width."""
    return "\n".join(line[i:i + width] for line in text.splitlines()
                     for i in range(0, max(len(line), 1), width))


def test_summary_lines_never_wrap_inside_a_value(cli, monkeypatch, tmp_path, tiny_corpus,
                                                 tiny_teacher):
    monkeypatch.chdir(tmp_path)
    buf = terminal(monkeypatch)
    student = write_student(tmp_path, "gpt-tiny-kd-distilled-from-the-teacher", max_steps=2,
                            epochs=None)
    out = "outputs/nightly-2026-05-10"
    job = tmp_path / "job.toml"
    job.write_text(f'students = ["{student.name}"]\n[job]\nout = "{out}/job"\n[corpus]\n'
                   f'source = "{tiny_corpus}"\n[teacher]\ndir = "{tiny_teacher}"\n')
    for args in (["label", "--corpus", tiny_corpus, "--teacher", tiny_teacher, "--out",
                  f"{out}/labels", "--top-k", "4", "--seq-len", "16", "--limit-docs", "16",
                  "--validation-fraction", "0.2", "--device", "cpu", "--quiet"],
                 ["inspect", f"{out}/labels"],
                 ["train", "--labels", f"{out}/labels", "--student", student.name, "--out",
                  f"{out}/runs", "--device", "cpu", "--quiet"],
                 ["run", job.name, "--dry-run"]):
        code, _, err = cli(*args)
        assert code == 0, err
    text = buf.getvalue()
    assert "gpt-tiny-kd-distilled-from-the-teacher: 2 steps" in text
    assert as_shown(text).split() == text.split(), text  # no word, number or path cut in two


def test_label_prints_what_it_skipped_and_inspect_shows_it(cli, tmp_path, tiny_teacher):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i, doc in enumerate(make_docs(6, seed=3)):
        (corpus / f"doc-{i}.txt").write_text(doc["text"])
    (corpus / "empty.txt").write_text("")
    (corpus / "latin1.txt").write_bytes("café société élève ".encode("latin-1") * 20)
    code, out, err = cli("label", "--corpus", corpus, "--teacher", tiny_teacher, "--out",
                         tmp_path / "ds", "--top-k", "4", "--seq-len", "16",
                         "--validation-fraction", "0.001", "--device", "cpu", "--quiet")
    assert code == 0, err
    c = json.loads((tmp_path / "ds" / "manifest.json").read_text())["corpus"]
    assert (c["documents_skipped_empty"], c["non_utf8_documents"]) == (1, 1)
    assert c["tokens_dropped"] > 0 and not c["by_split"].get("validation")
    lines = out.splitlines()
    assert f"  documents: {c['documents_read']} read, 1 empty skipped, 1 non-UTF-8 (bytes " \
           "replaced)" in lines, out
    assert f"  tokens dropped: {c['tokens_dropped']} (each split's last partial row)" in lines
    assert "  validation: EMPTY: 0 documents, under one row of tokens; raise " \
           "--validation-fraction (evaluate needs validation rows)" in lines, out

    code, shown, _ = cli("inspect", tmp_path / "ds")
    assert code == 0
    for text in ("1 empty skipped", "1 non-UTF-8", f"{c['tokens_dropped']} (each", "EMPTY"):
        assert text in " ".join(shown.split()), shown


LINE = re.compile(r"^\d\d:\d\d:\d\d (?P<name>[^:]+): (?P<done>[\d,]+)/(?P<total>[\d,]+) "
                  r"(?P<unit>\w+) \(\d+%\)")


def test_progress_off_a_terminal_is_plain_lines(cli, monkeypatch, tmp_path, tiny_corpus,
                                                tiny_teacher):
    monkeypatch.setenv("SOFTLABELS_PROGRESS_INTERVAL", "0.05")
    code, _, err = cli("label", "--corpus", tiny_corpus, "--teacher", tiny_teacher, "--out",
                       tmp_path / "ds", "--top-k", "4", "--seq-len", "16", "--limit-docs",
                       "30", "--device", "cpu")
    assert code == 0, err
    assert "\r" not in err and "━" not in err  # no bar frames in a log
    lines = err.strip().splitlines()
    assert lines and all(LINE.match(line) for line in lines), err
    last = LINE.match(lines[-1])
    assert last["name"] == "label" and last["done"] == last["total"] and last["unit"] == "pos"
    assert re.search(r", [\d,]+ pos/s, done after \d+s$", lines[-1]), lines[-1]


def test_log_format_json_writes_progress_as_json_lines(cli, small_dataset, tmp_path):
    student = write_student(tmp_path, "s", max_steps=6, epochs=None)
    code, _, err = cli("--log-format", "json", "train", "--labels", small_dataset, "--student",
                       student, "--out", tmp_path / "runs", "--device", "cpu")
    assert code == 0, err
    records = [json.loads(line) for line in err.strip().splitlines()]
    last = records[-1]
    assert {r["event"] for r in records} == {"progress"}
    assert (last["stage"], last["task"], last["status"]) == ("train", "s", "done")
    assert last["done"] == last["total"] == 6 and last["unit"] == "steps"
    assert last["loss"] > 0 and last["tokens_per_s"] > 0 and last["rate"] > 0
    assert set(last) >= {"time", "eta_s", "elapsed_s"}
