"""`pipeline evaluate` on a tiny labeled dataset with a really distilled student (stages.train)
and a random-init one: every output file, sane values, and the refusals."""

import json
import math
import shutil

import polars as pl
import pytest

from pipeline.errors import PipelineError
from pipeline.models.tokenizer import train_bpe_tokenizer
from stages.evaluate import EvaluateConfig, inputs_fingerprint, is_complete, run
from stages.label import LabelConfig
from stages.label import run as label
from stages.train import TrainConfig
from stages.train import run as train
from tests.conftest import make_teacher, run_cli

STUDENT = """name = "{name}"
[model]
family = "gpt"
n_layer = 1
n_head = 2
d_model = 16
[train]
batch_size = 8
max_steps = {steps}
eval_every = 25
checkpoint_every = 1000
[loss]
kind = "kl_tail"
alpha = 1.0
"""
MAX_ROWS, SEQ_LEN = 32, 32


def student_file(tmp, name: str, steps: int):
    path = tmp / f"{name}.toml"
    path.write_text(STUDENT.format(name=name, steps=steps))
    return path


def fast(**kw) -> EvaluateConfig:
    return EvaluateConfig(**{"max_rows": MAX_ROWS, "bench_warmup": 1, "bench_repeats": 2,
                             "quiet": True, "device": "cpu", **kw})


@pytest.fixture(scope="module")
def labeled(tmp_path_factory, tiny_corpus, tiny_teacher):
    d = tmp_path_factory.mktemp("eval")
    label(LabelConfig(corpus=str(tiny_corpus), out=str(d / "ds"), teacher=str(tiny_teacher),
                      top_k=8, seq_len=SEQ_LEN, shard_rows=16, batch_size=8,
                      validation_fraction=0.2, device="cpu", quiet=True))
    return d


@pytest.fixture(scope="module")
def pair(labeled, tiny_teacher, tiny_tokenizer):
    """A KD student trained on the dataset for real, a random-init student, and the report."""
    d = labeled
    train(TrainConfig(labels=str(d / "ds"), students=[str(student_file(d, "kd", 25))],
                      out=str(d / "runs"), device="cpu", quiet=True))
    make_teacher(tiny_tokenizer, d / "runs" / "random", seed=7, d_model=16, context=SEQ_LEN)
    cfg = fast(labels=str(d / "ds"), runs=[str(d / "runs/random"), str(d / "runs/kd")],
               teacher=str(tiny_teacher), out=str(d / "report"))
    return d, cfg, run(cfg)


@pytest.mark.slow
def test_writes_every_output(pair):
    d, cfg, results = pair
    report = d / "report"
    for name in ("results.json", "results.parquet", "report.md", "fidelity_vs_size.png",
                 "training_curves.png"):
        assert (report / name).is_file(), name
    for png in report.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((report / "results.json").read_text()) == results
    df = pl.read_parquet(report / "results.parquet")
    assert df["name"].to_list() == [r["name"] for r in results["rows"]]
    assert df["kl_tail"].to_list() == pytest.approx([r["kl_tail"] for r in results["rows"]])
    md = (report / "report.md").read_text()
    assert "| model |" in md and "(fidelity_vs_size.png)" in md and "(training_curves.png)" in md
    for r in results["rows"]:
        assert f"| {r['name']} |" in md


@pytest.mark.slow
def test_values_are_sane(pair, tiny_teacher):
    d, cfg, results = pair
    rows = {r["name"]: r for r in results["rows"]}
    assert results["dataset"]["positions"] == MAX_ROWS * SEQ_LEN
    teacher = rows[tiny_teacher.name]
    assert teacher["role"] == "teacher" and teacher["kl_tail"] == 0.0
    assert teacher["top1_agreement"] == 1.0 and teacher["speedup"] == 1.0
    for r in rows.values():
        assert r["kl_tail"] >= -1e-6 and 0 <= r["top1_agreement"] <= 1
        assert 0 < r["topk_mass"] <= 1 and 0 <= r["top1_accuracy"] <= 1 and 0 <= r["ece"] <= 1
        assert r["perplexity"] == pytest.approx(math.exp(r["ce"]))
        assert r["positions"] == MAX_ROWS * (SEQ_LEN - 1)
        assert r["tokens_per_s"] > 0 and r["latency_ms"] > 0
        assert r["checkpoint_bytes"] == (d.parent / r["path"] / "model.safetensors").stat().st_size
        assert r["size_ratio"] == pytest.approx(r["parameters"] / teacher["parameters"])
        assert r["speedup"] == pytest.approx(r["tokens_per_s"] / teacher["tokens_per_s"])
    assert rows["kd"]["parameters"] == rows["random"]["parameters"] < teacher["parameters"]


@pytest.mark.slow
def test_distilled_student_beats_random_init(pair):
    _, _, results = pair
    rows = {r["name"]: r for r in results["rows"]}
    kd, rand = rows["kd"], rows["random"]
    assert kd["top1_agreement"] > rand["top1_agreement"]
    assert kd["kl_tail"] < rand["kl_tail"]
    assert kd["topk_mass"] > rand["topk_mass"]
    # leaderboard order: teacher, then most faithful first
    assert [r["name"] for r in results["rows"]][1:] == ["kd", "random"]


@pytest.mark.slow
def test_fingerprint_tracks_inputs(pair, tmp_path):
    d, cfg, _ = pair
    assert is_complete(cfg)
    runs = tmp_path / "runs"
    shutil.copytree(d / "runs", runs)
    copy = fast(labels=cfg.labels, runs=[str(runs / "random"), str(runs / "kd")],
                teacher=cfg.teacher, out=cfg.out)
    assert inputs_fingerprint(copy) == inputs_fingerprint(cfg)  # same content, same name
    before = inputs_fingerprint(copy)
    complete = runs / "kd" / "complete.json"
    complete.write_text(complete.read_text().replace("{", '{"retrained": 1, ', 1))
    assert inputs_fingerprint(copy) != before
    assert inputs_fingerprint(fast(**{**cfg.__dict__, "max_rows": 8})) != before


@pytest.mark.slow
def test_cli_prints_leaderboard_and_report_path(pair, tmp_path, tiny_teacher):
    d, _, _ = pair
    proc = run_cli("evaluate", "--labels", d / "ds", "--run", d / "runs/kd", "--teacher",
                   tiny_teacher, "--out", tmp_path / "rep", "--max-rows", 4, "--bench-repeats",
                   1, "--device", "cpu", "--quiet")
    lines = proc.stdout.strip().splitlines()
    assert any("kd" in line for line in lines) and "leaderboard" in proc.stdout
    assert lines[-1].endswith(str(tmp_path / "rep" / "report.md"))


def test_a_model_with_another_tokenizer_is_scored_in_bits_per_byte(labeled, tmp_path,
                                                                   tiny_corpus, tiny_teacher):
    """Mixed tokenizers: the other model is scored on its re-tokenization of the same rows and
    bytes, every row gets bits per byte, students are ranked by it, and the report says so."""
    texts = [json.loads(line)["text"] for line in tiny_corpus.read_text().splitlines()]
    other_tok = tmp_path / "other.json"
    train_bpe_tokenizer(texts[::2], 300, other_tok)
    other = make_teacher(other_tok, tmp_path / "other", seed=4)  # context 64: never cut here
    same = make_teacher(labeled / "ds" / "tokenizer.json", tmp_path / "same", seed=5,
                        context=SEQ_LEN)
    results = run(fast(labels=str(labeled / "ds"), runs=[str(other), str(same)],
                       teacher=str(tiny_teacher), out=str(tmp_path / "r")))
    rows = {("teacher" if r["role"] == "teacher" else r["name"]): r for r in results["rows"]}
    assert rows["other"]["tokenizer"] != rows["teacher"]["tokenizer"] == rows["same"]["tokenizer"]
    assert 0.2 < rows["other"]["aligned_share"] < 1 and rows["same"].get("aligned_share") is None
    assert 0.95 * rows["teacher"]["bytes"] <= rows["other"]["bytes"] <= rows["teacher"]["bytes"]
    assert rows["same"]["bytes"] == rows["teacher"]["bytes"]
    assert rows["other"]["fidelity_positions"] < rows["other"]["positions"] + MAX_ROWS
    students = [r["bits_per_byte"] for r in results["rows"][1:]]
    assert students == sorted(students) and all(b > 0 for b in students)
    assert "ranked by bits per byte" in (tmp_path / "r" / "report.md").read_text()


def test_refuses_a_teacher_that_did_not_label(labeled, tmp_path, tiny_tokenizer):
    student = make_teacher(tiny_tokenizer, tmp_path / "student", seed=2, context=SEQ_LEN)
    impostor = make_teacher(tiny_tokenizer, tmp_path / "impostor", seed=3)
    with pytest.raises(PipelineError, match="is not the teacher that labeled"):
        run(fast(labels=str(labeled / "ds"), runs=[str(student)], teacher=str(impostor),
                 out=str(tmp_path / "r")))


def test_tokens_only_dataset_has_quality_but_no_fidelity(tmp_path, tiny_corpus, tiny_tokenizer):
    label(LabelConfig(corpus=str(tiny_corpus), out=str(tmp_path / "ds"), top_k=0,
                      tokenizer=str(tiny_tokenizer), seq_len=SEQ_LEN, shard_rows=16,
                      validation_fraction=0.2, quiet=True))
    model = make_teacher(tiny_tokenizer, tmp_path / "m")
    res = run(fast(labels=str(tmp_path / "ds"), runs=[str(model)], out=str(tmp_path / "r"),
                   max_rows=4))
    row = res["rows"][0]
    assert row["kl_tail"] is None and row["top1_agreement"] is None
    assert row["ce"] == pytest.approx(math.log(320), abs=0.1)  # random init ≈ uniform
    assert (tmp_path / "r" / "fidelity_vs_size.png").is_file()


def test_refuses_two_models_with_one_name(tmp_path):
    with pytest.raises(PipelineError, match="share the folder name 'kd'"):
        run(fast(labels=str(tmp_path), runs=[str(tmp_path / "a/kd"), str(tmp_path / "b/kd")],
                 out=str(tmp_path / "r")))


def test_report_never_overwrites_files_it_did_not_write(labeled, tmp_path, tiny_teacher):
    d = labeled
    out = tmp_path / "notes"
    out.mkdir()
    (out / "report.md").write_text("my own report")
    cfg = fast(labels=str(d / "ds"), runs=[], teacher=str(tiny_teacher), out=str(out))
    with pytest.raises(PipelineError, match="holds report.md, which this tool did not write"):
        run(cfg)
    assert (out / "report.md").read_text() == "my own report"
    (out / "report.md").unlink()
    run(cfg)  # an empty folder, then a rerun over its own report: both fine
    run(cfg)
    assert (out / "report.md").read_text().startswith("# Distillation report")
    as_file = tmp_path / "report.txt"
    as_file.write_text("x")
    with pytest.raises(PipelineError, match="is a file, not a folder"):
        run(fast(labels=str(d / "ds"), runs=[], teacher=str(tiny_teacher), out=str(as_file)))
