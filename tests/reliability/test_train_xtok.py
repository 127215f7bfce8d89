"""Students with their own tokenizer train from a dataset labeled with another one: end to end,
bad input in one line before any step, and SIGKILL + --resume gives identical weights."""

import json
import random

import pytest
import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer, models, pre_tokenizers

from pipeline.models.tokenizer import EOS_TOKEN, train_bpe_tokenizer
from tests.reliability.conftest import train_unbroken, write_student
from tests.reliability.test_train_kills import kill_train, metrics, train_args

TRAIN = {"batch_size": 8, "epochs": None, "max_steps": 12, "checkpoint_every": 4,
         "eval_every": 4, "eval_batches": 1}


@pytest.fixture(scope="module")
def student_tok(tmp_path_factory, tiny_corpus):
    texts = [json.loads(line)["text"] for line in tiny_corpus.read_text().splitlines()][::2]
    out = tmp_path_factory.mktemp("stok") / "student.json"
    train_bpe_tokenizer(texts, 300, out)  # a smaller vocabulary: different splits
    return out


def body(tok, kind="crosstok", extra=""):
    return (f'tokenizer = "{tok}"\n[model]\nfamily = "gpt"\nn_layer = 1\nn_head = 2\n'
            f'd_model = 16\ndropout = 0.1\ncontext = 24\n[loss]\nkind = "{kind}"\nalpha = 0.5\n'
            f"uld_weight = 0.5\n{extra}")


def test_cross_tokenizer_students_train(small_dataset, student_tok, tmp_path):
    from stages.train import TrainConfig, run

    kd = write_student(tmp_path, "xkd", body(student_tok), **TRAIN)
    ce = write_student(tmp_path, "xce", body(student_tok, "ce").replace("uld_weight = 0.5\n",
                                                                         ""), **TRAIN)
    same = write_student(tmp_path, "same", '[model]\nfamily = "gpt"\nn_layer = 1\nn_head = 2\n'
                         'd_model = 16\n', **TRAIN)
    runs = run(TrainConfig(labels=str(small_dataset), students=[str(kd), str(ce), str(same)],
                           out=str(tmp_path / "runs"), device="cpu", quiet=True, num_workers=1))
    rows = [json.loads(x) for x in (runs["xkd"] / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 12 and "val_uld" in rows[-1] and 0 < rows[-1]["val_aligned"] <= 1
    assert (runs["xkd"] / "tokenizer.json").read_bytes() == student_tok.read_bytes()
    assert load_file(str(runs["xkd"] / "model.safetensors"))["wte.weight"].shape[0] == 300 \
        if "wte.weight" in load_file(str(runs["xkd"] / "model.safetensors")) else True
    assert (runs["same"] / "complete.json").is_file() and (runs["xce"] / "complete.json").is_file()


def test_bad_input_is_one_line(cli, small_dataset, student_tok, tmp_path):
    shared = write_student(tmp_path, "a", body(student_tok, "kl_tail"), **TRAIN)
    code, _, err = cli(*train_args(small_dataset, shared, tmp_path / "r"))
    assert code != 0 and f"{shared}: [loss] kind 'kl_tail' compares token ids" in err
    assert 'kind = "crosstok"' in err and len(err.strip().splitlines()) == 1
    bad = Tokenizer(models.BPE({"a": 0, EOS_TOKEN: 1}, []))
    bad.pre_tokenizer = pre_tokenizers.ByteLevel()
    from tokenizers import decoders
    bad.decoder = decoders.ByteLevel()
    bad.add_special_tokens([EOS_TOKEN])
    bad.save(str(tmp_path / "bad.json"))
    unk = write_student(tmp_path, "b", body(tmp_path / "bad.json"), **TRAIN)
    code, _, err = cli(*train_args(small_dataset, unk, tmp_path / "r"))
    assert code != 0 and "cannot spell" in err and str(unk) in err, err
    assert not (tmp_path / "r" / "b" / "metrics.jsonl").exists()


@pytest.mark.slow
def test_sigkill_then_resume_gives_identical_weights(cli, small_dataset, student_tok,
                                                      tmp_path):
    (tmp_path / "ref").mkdir()
    student, ref_dir = train_unbroken(small_dataset, tmp_path / "ref", body(student_tok),
                                      **TRAIN)
    args = train_args(small_dataset, student, tmp_path / "runs")
    run_dir = tmp_path / "runs" / "k"
    kill_train(args, run_dir, "mid-checkpoint", tmp_path / "marker", random.Random(3), 8)
    assert not (run_dir / "complete.json").exists()
    code, _, err = cli(*args, "--resume")
    assert code == 0, err
    want, got = (load_file(str(d / "model.safetensors")) for d in (ref_dir, run_dir))
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    assert metrics(run_dir) == metrics(ref_dir)
