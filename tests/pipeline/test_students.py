"""Student TOML files: defaults, resolution against a dataset, and errors that name the key."""

import tomllib
from pathlib import Path

import pytest

from pipeline.config.toml import dumps_toml
from pipeline.errors import ConfigError
from pipeline.training.students import (
    load_student,
    parse_student,
    resolve_for_dataset,
    with_overrides,
)

REPO = Path(__file__).resolve().parents[2]


def _write(tmp_path, text, name="stu.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_name_and_resolution(tmp_path):
    spec = load_student(_write(tmp_path, "[model]\nfamily = 'gpt'\nd_model = 32\nn_head = 4\n"))
    assert spec.name == "stu" and spec.loss.kind == "kl_tail" and spec.train.batch_size == 16
    r = resolve_for_dataset(spec, vocab_size=320, seq_len=48)
    assert r.model == {"family": "gpt", "d_model": 32, "n_head": 4, "vocab_size": 320,
                       "context": 48}
    assert r.train.epochs == 1 and r.train.max_steps is None
    assert r.schedule.min_lr == pytest.approx(r.optimizer.lr / 10)
    named = load_student(_write(tmp_path, 'name = "alice"\n[model]\nfamily = "gru"\n'))
    assert named.name == "alice" and "context" not in resolve_for_dataset(named, 320, 8).model


def test_resolved_file_round_trips(tmp_path):
    spec = resolve_for_dataset(load_student(REPO / "data/students/gpt-tiny.toml"), 320, 32)
    text = dumps_toml(spec.as_dict())
    again = parse_student(tomllib.loads(text), "again.toml")
    assert again.as_dict() == spec.as_dict()


@pytest.mark.parametrize("path", sorted((REPO / "data/students").glob("*.toml")),
                         ids=lambda p: p.name)
def test_bundled_students_are_valid(path):
    resolve_for_dataset(load_student(path), 8192, 32)


@pytest.mark.parametrize("text,match", [
    ("colour = 1\n", r"unknown key 'colour'; valid top-level keys are \['name', 'tokenizer', "
                     r"'model', 'optimizer'"),
    ("[train]\nbatchsize = 8\n", r"\[train\]: unknown key 'batchsize'; valid keys are "
                                 r"\['batch_size', 'max_steps'"),
    ("[model]\nfamily = 'gru'\nn_head = 2\n", r"unknown \[model\] key 'n_head' for family gru; "
                                             r"valid keys are \['family', 'vocab_size', "),
    ("[model]\nfamily = 'lstm'\n", r"family 'lstm' is not a model family; valid are "
                                   r"\['gpt', 'gru', 'hf'\]"),
    ("[loss]\nkind = 'kl_reverse'\n", r"kind 'kl_reverse' is not a loss; valid are "
                                      r"\['kl_tail', 'kl_renorm', 'ce'"),
    ("[train]\nbatch_size = '8'\n", r"key 'batch_size' must be int, got '8'"),
    ("[train]\nbatch_size = 0\n", r"batch_size must be > 0"),
    ("[optimizer]\nlr = true\n", r"key 'lr' must be float"),
    ("[optimizer]\nbetas = [0.9]\n", r"betas must be two numbers"),
    ("[loss]\nalpha = 1.5\n", r"alpha must be in \[0, 1\]"),
    ("[train]\nepochs = 0\n", r"epochs must be >= 1"),
    ("[model\n", r"is not valid TOML"),
])
def test_bad_student_files_name_the_problem(tmp_path, text, match):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError, match=match) as info:
        load_student(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    assert info.value.exit_code == 2


@pytest.mark.parametrize("text,match", [
    ("[optimizer]\nlr = nan\n", r"\[optimizer\]: lr must be a finite number > 0, got nan"),
    ("[optimizer]\nlr = inf\n", r"\[optimizer\]: lr must be a finite number > 0, got inf"),
    ("[optimizer]\neps = -1.0\n", r"eps must be > 0, got -1.0"),
    ("[optimizer]\nbetas = [0.9, nan]\n", r"betas must be two numbers in \[0, 1\)"),
    ("[schedule]\nmin_lr = nan\n", r"min_lr must be a finite number >= 0, got nan"),
    ("[train]\nseed = -1\n", r"\[train\]: seed must be >= 0, got -1"),
    ("[loss]\ntemperature = inf\n", r"temperature must be a finite number in \[0.01, 100\]"),
    ("[model]\ndropout = nan\n", r"\[model\]: dropout must be a finite number in \[0, 1\)"),
    ("[model]\nd_model = 0\n", r"\[model\]: d_model must be >= 1, got 0"),
    ("[model]\nd_model = 30\nn_head = 4\n", r"d_model 30 must be divisible by n_head 4"),
    ("[model]\nfamily = [1]\n", r"family \[1\] is not a model family"),
    ('name = "a\\u0000b"\n', r"must be a non-empty folder name"),
])
def test_values_out_of_range_name_key_value_and_rule(tmp_path, text, match):
    """Checked where the file is parsed: a NaN or infinite learning rate used to be accepted
    (and fail, or silently diverge, later)."""
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError, match=match) as info:
        load_student(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_resolved_file_keeps_any_string(tmp_path):
    """tomli-w writes what a hand-written writer got wrong (newlines, quotes, backslashes)."""
    d = {"name": "x", "model": {"family": "hf", "config": {"model_type": 'a"b\\c\nd é'}}}
    assert tomllib.loads(dumps_toml(d)) == d


def test_dataset_mismatches_are_refused(tmp_path):
    pinned = load_student(_write(tmp_path, "[model]\nvocab_size = 500\n"))
    with pytest.raises(ConfigError, match="vocab_size 500 != dataset vocab size 320"):
        resolve_for_dataset(pinned, 320, 32)
    short = load_student(_write(tmp_path, "[model]\ncontext = 16\n"))
    with pytest.raises(ConfigError, match="context 16 < dataset seq_len 32"):
        resolve_for_dataset(short, 320, 32)
    with pytest.raises(ConfigError, match="student file .* not found"):
        load_student(tmp_path / "missing.toml")


def test_command_line_overrides_replace_both_lengths(tmp_path):
    spec = load_student(_write(tmp_path, "[train]\nepochs = 3\n"))
    assert with_overrides(spec, None, None) is spec
    s = with_overrides(spec, 7, None)
    assert (s.train.max_steps, s.train.epochs) == (7, None)
    with pytest.raises(ConfigError, match="--epochs must be >= 1"):
        with_overrides(spec, None, 0)


def test_learning_rate_schedule_by_hand(tmp_path):
    """README: linear warmup over `warmup_steps`, then cosine from `lr` down to `min_lr`; the
    values below are worked out by hand (lr 1e-3, min_lr 1e-4, 2 warmup steps, 6 steps:
    cosine progress (step − 2) / 4, lr = min_lr + (lr − min_lr)·(1 + cos(π·progress))/2)."""
    from pipeline.training.trainer import lr_at

    spec = resolve_for_dataset(load_student(_write(
        tmp_path, "[optimizer]\nlr = 1e-3\n[schedule]\nwarmup_steps = 2\nmin_lr = 1e-4\n")),
        320, 16)
    want = [5e-4,           # warmup: lr·1/2
            1e-3,           # warmup: lr·2/2
            1e-3,           # progress 0
            8.6819805e-4,   # progress 1/4: 1e-4 + 4.5e-4·(1 + √2/2)
            5.5e-4,         # progress 1/2: halfway between lr and min_lr (not lr/2)
            2.3180195e-4,   # progress 3/4: 1e-4 + 4.5e-4·(1 − √2/2)
            1e-4]           # progress 1: min_lr, never below it
    assert [lr_at(step, 6, spec) for step in range(7)] == pytest.approx(want, rel=1e-7)
    assert lr_at(50, 6, spec) == pytest.approx(1e-4)
