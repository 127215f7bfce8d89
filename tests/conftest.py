"""Shared fixtures: a tiny tokenizer, a tiny random-init teacher and a tiny corpus, built once per
session in a temp dir (no downloads, seconds of CPU)."""

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.models import build_model
from pipeline.models.checkpoint import save_model_dir
from pipeline.models.tokenizer import train_bpe_tokenizer
from pipeline.threads import pin_threads

REPO = Path(__file__).resolve().parents[1]
THREAD_VARS = ("SOFTLABELS_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_DYNAMIC",
               "MKL_DYNAMIC")


def pytest_configure(config):
    """The suite runs as the tool does (pipeline/threads.py): one fixed thread count in this
    process, exported to the processes it starts, so in-process and CLI results compare."""
    pin_threads()
    if "MUTANT_UNDER_TEST" in os.environ:  # under mutmut (tests/mutation_order.py)
        from tests.mutation_order import warm_up

        warm_up()


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(config, items):
    """Tests that run a teacher are marked `teacher` (`-m "not teacher"`: the suite of unit
    tests and hand-built datasets, what `make mutation` runs). Under `make mutation`, each
    mutant's tests run cheapest first (tests/mutation_order.py)."""
    from tests.mutation_order import fastest_first, mutant_under_test

    for item in items:
        if "tiny_teacher" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.teacher)
    if mutant_under_test():
        fastest_first(items, config.rootpath)


def pytest_collection_finish(session):
    from tests.mutation_order import freeze_fork_server

    freeze_fork_server(session.config)


def tool_default_env(**extra) -> dict:
    """This environment without any thread setting: a CLI run with it uses the tool's own
    default, which is what a test of that default must run."""
    return {**{k: v for k, v in os.environ.items() if k not in THREAD_VARS}, **extra}
WORDS = ("the market rose as shares in the bank fell while the minister said the game was won "
         "by the team after a late goal and the film won an award for music technology phone "
         "users online search engine election vote party leader").split()


def make_docs(n: int, seed: int = 0, words_per_doc: tuple[int, int] = (40, 120)) -> list[dict]:
    rng = random.Random(seed)
    return [{"id": f"doc-{i}", "text": " ".join(rng.choice(WORDS)
                                                for _ in range(rng.randint(*words_per_doc)))}
            for i in range(n)]


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    """A .jsonl corpus of 120 short synthetic documents."""
    path = tmp_path_factory.mktemp("corpus") / "docs.jsonl"
    path.write_text("".join(json.dumps(d) + "\n" for d in make_docs(120)))
    return path


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory, tiny_corpus) -> Path:
    out = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    texts = [json.loads(line)["text"] for line in tiny_corpus.read_text().splitlines()]
    train_bpe_tokenizer(texts, 320, out)
    return out


def make_teacher(tokenizer: Path, out: Path, family: str = "gpt", seed: int = 0, **params) -> Path:
    import torch

    torch.manual_seed(seed)
    from pipeline.models.tokenizer import load_tokenizer

    vocab = load_tokenizer(tokenizer).vocab_size
    defaults = {"gpt": dict(n_layer=1, n_head=2, d_model=32, context=64),
                "gru": dict(n_layer=1, d_model=32)}[family]
    model = build_model(family, {"vocab_size": vocab, **defaults, **params})
    return save_model_dir(model, tokenizer, out)


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory, tiny_tokenizer) -> Path:
    return make_teacher(tiny_tokenizer, tmp_path_factory.mktemp("teacher"))


def run_cli(*args, check: bool = True, **kw) -> subprocess.CompletedProcess:
    """Run the real `pipeline` console entry point in a subprocess."""
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", *map(str, args)],
                          capture_output=True, text=True, cwd=REPO, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"pipeline {args} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


@pytest.fixture
def cli(capsys, monkeypatch):
    """Run `pipeline ARGS` in this process through the console entry point; returns
    (exit code, stdout, stderr)."""
    from pipeline.cli import main

    def run(*args):
        monkeypatch.setattr(sys, "argv", ["pipeline", *map(str, args)])
        capsys.readouterr()
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run
