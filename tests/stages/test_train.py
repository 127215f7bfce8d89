"""`pipeline train` end to end on tiny real datasets: one pass, resume after SIGKILL, refusals."""

import json
import os

import pytest
import torch
from safetensors.torch import load_file

from pipeline.errors import ConfigError, PipelineError
from pipeline.models.checkpoint import load_model_dir
from stages.label import LabelConfig
from stages.label import run as label
from stages.train import TrainConfig, run
from tests.conftest import run_cli
from tests.holds import hold_env, kill_in_hold

GPT = '[model]\nfamily = "gpt"\nn_layer = 1\nn_head = 2\nd_model = 32\n'
GRU = '[model]\nfamily = "gru"\nd_model = 32\n'


def student(tmp_path, name, model=GPT, loss="", **train) -> str:
    train = {"batch_size": 8, "max_steps": 30, "eval_every": 10, "eval_batches": 2,
             "checkpoint_every": 10, **train}
    body = model + "[schedule]\nwarmup_steps = 3\n[train]\n" + "".join(
        f"{k} = {v}\n" for k, v in train.items() if v is not None) + (
        f"[loss]\n{loss}\n" if loss else "")
    path = tmp_path / f"{name}.toml"
    path.write_text(body)
    return str(path)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models train faster on one thread, and the CPUs here are shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def labeled(tmp_path_factory, tiny_corpus, tiny_teacher):
    out = tmp_path_factory.mktemp("train") / "ds"
    label(LabelConfig(corpus=str(tiny_corpus), out=str(out), teacher=str(tiny_teacher), top_k=4,
                      seq_len=16, shard_rows=32, row_group_rows=8, batch_size=32,
                      validation_fraction=0.1, quiet=True))
    return out


@pytest.fixture(scope="module")
def tokens_only(tmp_path_factory, tiny_corpus, tiny_tokenizer):
    out = tmp_path_factory.mktemp("train") / "tok"
    label(LabelConfig(corpus=str(tiny_corpus), out=str(out), tokenizer=str(tiny_tokenizer),
                      top_k=0, seq_len=16, shard_rows=64, validation_fraction=0.1, quiet=True))
    return out


def _metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _weights(run_dir):
    return load_file(str(run_dir / "model.safetensors"))


def test_two_students_one_pass_both_learn_and_match_solo_runs(tmp_path, labeled):
    a = student(tmp_path, "gpt-a", seed=1)
    b = student(tmp_path, "gru-b", GRU, 'kind = "kl_renorm"\ntemperature = 2.0\nalpha = 0.7')
    runs = run(TrainConfig(labels=str(labeled), students=[a, b], out=str(tmp_path / "runs"),
                           device="cpu", quiet=True))
    assert set(runs) == {"gpt-a", "gru-b"}
    for name, d in runs.items():
        m = _metrics(d)
        assert [r["step"] for r in m] == list(range(1, 31))
        assert {"loss", "kd", "ce", "lr", "tokens_per_s"} <= set(m[0])
        first, last = (sum(r["loss"] for r in rows) / 5 for rows in (m[:5], m[-5:]))
        assert last < 0.92 * first, (name, first, last)
        assert {"val_loss", "val_ce"} <= set(m[9]) and "val_loss" not in m[8]
        done = json.loads((d / "complete.json").read_text())
        assert done["step"] == 30 and done["val_loss"] == m[-1]["val_loss"]
        loaded = load_model_dir(d)  # the run folder is a model directory (usable as --teacher)
        assert loaded.config["family"] == name.split("-")[0]
        assert (d / "config.toml").read_text().startswith(f'name = "{name}"')
    # One shared pass gives each student exactly the weights it gets training alone.
    solo = run(TrainConfig(labels=str(labeled), students=[b], out=str(tmp_path / "solo"),
                           device="cpu", quiet=True))
    wa, wb = _weights(runs["gru-b"]), _weights(solo["gru-b"])
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_students_with_different_batch_sizes_and_epochs(tmp_path, labeled):
    a = student(tmp_path, "small-batch", batch_size=4, max_steps=5)
    b = student(tmp_path, "one-epoch", batch_size=64, max_steps=None, epochs=1,
                checkpoint_every=1000)
    runs = run(TrainConfig(labels=str(labeled), students=[a, b], out=str(tmp_path / "r"),
                           device="cpu", quiet=True, num_workers=2))
    train_rows = sum(e["rows"] for e in json.loads(
        (labeled / "manifest.json").read_text())["splits"]["train"])
    done = json.loads((runs["one-epoch"] / "complete.json").read_text())
    assert done["tokens"] == train_rows * 16  # every training row exactly once
    assert _metrics(runs["small-batch"])[-1]["step"] == 5


def test_finished_runs_are_skipped_and_unfinished_need_resume(tmp_path, labeled):
    a = student(tmp_path, "s", max_steps=4)
    cfg = TrainConfig(labels=str(labeled), students=[a], out=str(tmp_path / "runs"),
                      device="cpu", quiet=True)
    weights = run(cfg)["s"] / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    run(cfg)  # finished with the same config: nothing to do
    assert weights.stat().st_mtime_ns == stamp
    (tmp_path / "runs" / "s" / "complete.json").unlink()
    with pytest.raises(PipelineError, match="holds an unfinished run; pass --resume"):
        run(cfg)
    with pytest.raises(PipelineError, match=r"different config \(train.max_steps differ\)"):
        run(TrainConfig(**{**cfg.__dict__, "max_steps": 9, "resume": True}))


def test_tokens_only_dataset_trains_ce_and_refuses_kd(tmp_path, tokens_only):
    ce = student(tmp_path, "ce", loss='kind = "ce"', max_steps=20)
    runs = run(TrainConfig(labels=str(tokens_only), students=[ce], out=str(tmp_path / "r"),
                           device="cpu", quiet=True))
    m = _metrics(runs["ce"])
    assert "kd" not in m[0] and m[-1]["loss"] < m[0]["loss"] - 0.5
    kd = student(tmp_path, "kd")
    with pytest.raises(ConfigError, match=r"kind 'kl_tail' needs soft labels but dataset .* "
                                          r"is tokens only"):
        run(TrainConfig(labels=str(tokens_only), students=[kd], out=str(tmp_path / "r2")))


def test_student_with_another_tokenizer_needs_a_crosstok_loss(tmp_path, labeled):
    """A loss comparing ids is refused for another tokenizer (#21: crosstok or ce train)."""
    from pipeline.models.tokenizer import train_bpe_tokenizer

    other = train_bpe_tokenizer(["some other text entirely"] * 20, 300, tmp_path / "tok.json")
    path = tmp_path / "t.toml"
    path.write_text(f'tokenizer = "{other.path}"\n' + GPT)
    with pytest.raises(PipelineError, match=r"kind 'kl_tail' compares token ids.*crosstok"):
        run(TrainConfig(labels=str(labeled), students=[str(path)], out=str(tmp_path / "r")))


def test_out_inside_the_dataset_refused(tmp_path, labeled):
    """Run folders inside a dataset would be files the labeler did not write (and the next
    `label --overwrite` would refuse the whole dataset)."""
    before = sorted(p.relative_to(labeled) for p in labeled.rglob("*"))
    for out in (labeled / "runs", labeled):
        with pytest.raises(PipelineError, match="is inside the dataset folder --labels"):
            run(TrainConfig(labels=str(labeled), students=[student(tmp_path, "s")],
                            out=str(out), device="cpu", quiet=True))
    assert sorted(p.relative_to(labeled) for p in labeled.rglob("*")) == before


def test_cli_bad_student_file_exits_2_with_one_line(tmp_path, labeled):
    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nbatch = 8\n")
    proc = run_cli("train", "--labels", labeled, "--student", bad, "--out", tmp_path / "r",
                   check=False)
    assert proc.returncode == 2
    assert "unknown key 'batch'" in proc.stderr and "valid keys are" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_sigkill_then_resume_gives_identical_weights(tmp_path, labeled):
    a = student(tmp_path, "k", max_steps=60, checkpoint_every=2, eval_every=25)
    args = ["train", "--labels", str(labeled), "--student", a, "--out", str(tmp_path / "killed"),
            "--device", "cpu", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the same thread count as this process
    # the real CLI, held right after the checkpoint of step 6 is committed (tests/holds.py)
    hold = hold_env("pipeline.training.trainer:write_json_atomic", tmp_path / "held",
                    when="after", where="Path(args[0]).name == 'latest.json' and "
                                        "args[1]['step'] >= 6")
    kill_in_hold(args, hold, tmp_path / "held", env=env)
    run_dir = tmp_path / "killed" / "k"
    assert not (run_dir / "complete.json").exists(), "training finished before the kill"
    cfg = TrainConfig(labels=str(labeled), students=[a], out=str(tmp_path / "killed"),
                      device="cpu", quiet=True)
    with pytest.raises(PipelineError, match="pass --resume"):
        run(cfg)
    run_cli(*args, "--resume", env=env)
    ref = run(TrainConfig(**{**cfg.__dict__, "out": str(tmp_path / "ref")}))["k"]
    want, got = _weights(ref), _weights(run_dir)
    assert all(torch.equal(want[k], got[k]) for k in want)
    assert _metrics(run_dir) == [  # same losses at every step, each step logged once
        {**r, "tokens_per_s": g["tokens_per_s"]}
        for r, g in zip(_metrics(ref), _metrics(run_dir), strict=True)]


def test_train_step_takes_a_live_teachers_topk(tmp_path, labeled, tiny_teacher):
    """Online KD: the same step function trains from a teacher run on the fly."""
    from pipeline.labeling.forward import topk_from_logits
    from pipeline.softlabels.reader import SoftLabelDataset
    from pipeline.training.students import load_student, resolve_for_dataset
    from pipeline.training.trainer import StudentRun

    ds = SoftLabelDataset(labeled)
    path = student(tmp_path, "online", loss="alpha = 1.0")
    spec = resolve_for_dataset(load_student(path), ds.vocab_size, 16)
    stu = StudentRun(spec, tmp_path / "online", torch.device("cpu"), labeled / "tokenizer.json",
                     total_steps=8)
    teacher = load_model_dir(tiny_teacher).model
    ids = ds.decode(ds.read_table(ds.split_shards("train")[0]))["input_ids"][:8]
    with torch.inference_mode():
        top_ids, top_lp, tail = topk_from_logits(teacher(ids), 4)
    batch = {"input_ids": ids, "topk_ids": top_ids, "topk_logprobs": top_lp, "tail_mass": tail}
    losses = [float(stu.train_step(batch)["kd"]) for _ in range(8)]
    assert losses[-1] < losses[0] and stu.step == 8


def test_resume_drops_metrics_after_the_checkpoint_and_a_cut_line(tmp_path, labeled):
    from pipeline.training.students import load_student, resolve_for_dataset
    from pipeline.training.trainer import StudentRun

    spec = resolve_for_dataset(load_student(student(tmp_path, "m")), 320, 16)
    d = tmp_path / "m"
    d.mkdir()
    first = StudentRun(spec, d, torch.device("cpu"), labeled / "tokenizer.json", 10)
    first.step = 2
    first.save_checkpoint({})
    lines = [json.dumps({"step": s, "loss": 1.0}) for s in (1, 2, 3)]
    (d / "metrics.jsonl").write_text("\n".join(lines) + '\n{"step": 4, "lo')  # killed mid-line
    again = StudentRun(spec, d, torch.device("cpu"), labeled / "tokenizer.json", 10)
    assert again.load_checkpoint()["step"] == 2 and again.step == 2
    assert [r["step"] for r in _metrics(d)] == [1, 2]


def test_is_complete_is_the_skip_test_run_applies(tmp_path, labeled):
    """The stage owns its completion: `pipeline run` asks stages.train.is_complete, which must
    say "to run" exactly when `run` would train (unfinished, or another length or config)."""
    from stages.train import is_complete

    path = student(tmp_path, "s", max_steps=4, checkpoint_every=2)
    cfg = TrainConfig(labels=str(labeled), students=[path], out=str(tmp_path / "runs"),
                      device="cpu", quiet=True)
    assert not is_complete(cfg)
    run(cfg)
    assert is_complete(cfg)
    assert not is_complete(TrainConfig(**{**cfg.__dict__, "max_steps": 5}))
    assert not is_complete(TrainConfig(**{**cfg.__dict__, "data_seed": 1}))
    assert not is_complete(TrainConfig(**{**cfg.__dict__, "labels": str(tmp_path / "none")}))
    (tmp_path / "runs" / "s" / "complete.json").unlink()
    assert not is_complete(cfg)
