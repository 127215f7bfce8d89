"""Hugging Face end to end through the real CLI: label with `--teacher hf:DIR`, train a
`family = "hf"` student and a native one from those labels, evaluate both against the HF
teacher, load the HF run folder with `AutoModelForCausalLM.from_pretrained`, and label again
with `--teacher hf:RUN_DIR`. Tiny random models built from configs; offline."""

import json

import pytest
import torch

from pipeline.softlabels.validate import validate_dataset
from stages.label import LabelConfig
from stages.label import run as label
from tests.conftest import run_cli
from tests.interop import HF_LLAMA, OFFLINE, make_hf_model

TRAIN = "[train]\nbatch_size = 8\nmax_steps = 4\neval_every = 2\ncheckpoint_every = 2\n" \
        "[schedule]\nwarmup_steps = 1\n"
NATIVE = '[model]\nfamily = "gpt"\nn_layer = 1\nn_head = 2\nd_model = 16\n'
LABEL = ["--top-k", "8", "--seq-len", "32", "--shard-rows", "32", "--batch-size", "8",
         "--limit-docs", "30", "--validation-fraction", "0.2", "--quiet", "--device", "cpu"]


def cli(*args):
    import os

    return run_cli(*args, env={**os.environ, **OFFLINE, "OMP_NUM_THREADS": "1"})


@pytest.mark.slow
def test_hf_teacher_and_students_end_to_end(tmp_path, tiny_corpus, tiny_tokenizer):
    teacher = make_hf_model(tiny_tokenizer, tmp_path / "teacher", "gpt2", extra_vocab=3)
    ds = tmp_path / "ds"
    cli("label", "--corpus", tiny_corpus, "--teacher", f"hf:{teacher}", "--out", ds, *LABEL)
    assert validate_dataset(ds)[0] == []
    m = json.loads((ds / "manifest.json").read_text())
    assert m["labels"]["vocab_size"] == 323 and m["tokenizer"]["tokenizer_size"] == 320

    (tmp_path / "llama.toml").write_text(HF_LLAMA + TRAIN)
    (tmp_path / "gpt.toml").write_text(NATIVE + TRAIN)
    runs = tmp_path / "runs"
    cli("train", "--labels", ds, "--student", tmp_path / "llama.toml", "--student",
        tmp_path / "gpt.toml", "--out", runs, "--quiet", "--device", "cpu")
    assert json.loads((runs / "llama" / "complete.json").read_text())["step"] == 4

    report = tmp_path / "report"
    proc = cli("evaluate", "--labels", ds, "--run", runs / "llama", "--run", runs / "gpt",
               "--teacher", f"hf:{teacher}", "--out", report, "--quiet", "--device", "cpu",
               "--bench-repeats", "1")
    rows = {r["name"]: r for r in json.loads((report / "results.json").read_text())["rows"]}
    assert rows["teacher"]["family"] == "hf" and rows["llama"]["family"] == "hf"
    assert rows["gpt"]["family"] == "gpt" and rows["teacher"]["kl_tail"] == 0.0
    assert rows["llama"]["kl_tail"] > 0 and "llama" in proc.stdout

    # the run folder is a save_pretrained folder: transformers loads it as is
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf = AutoModelForCausalLM.from_pretrained(runs / "llama", local_files_only=True).eval()
    tok = AutoTokenizer.from_pretrained(runs / "llama", local_files_only=True)
    assert type(hf).__name__ == "LlamaForCausalLM" and tok.eos_token == "<|endoftext|>"
    from pipeline.models.loader import load_model_spec

    ours = load_model_spec(runs / "llama")
    ids = torch.randint(0, 320, (2, 16))
    with torch.no_grad():
        assert torch.equal(hf(ids).logits, ours.model(ids))

    # ... and a teacher: same tokenizer, so the new dataset matches the first one's
    m2 = label(LabelConfig(corpus=str(tiny_corpus), out=str(tmp_path / "ds2"),
                           teacher=f"hf:{runs / 'llama'}", top_k=8, seq_len=32, shard_rows=32,
                           batch_size=8, limit_docs=30, validation_fraction=0.2, quiet=True))
    assert m2["tokenizer"]["sha256"] == m["tokenizer"]["sha256"]
    assert m2["teacher"]["sha256"] == ours.weights_sha256
    assert m2["corpus"]["fingerprint"] == m["corpus"]["fingerprint"]


def test_trust_remote_code_is_opt_in(tmp_path, tiny_corpus, tiny_tokenizer):
    teacher = make_hf_model(tiny_tokenizer, tmp_path / "t", "gpt2")
    cfg = json.loads((teacher / "config.json").read_text())
    cfg.update(model_type="custom", auto_map={"AutoConfig": "custom.C",
                                              "AutoModelForCausalLM": "custom.M"})
    (teacher / "config.json").write_text(json.dumps(cfg))
    (teacher / "custom.py").write_text(f"open({str(tmp_path / 'ran')!r}, 'w').write('x')\n")
    proc = run_cli("label", "--corpus", tiny_corpus, "--teacher", f"hf:{teacher}", "--out",
                   tmp_path / "ds", *LABEL, check=False)
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1
    assert "--trust-remote-code" in proc.stderr and not (tmp_path / "ran").exists()
    assert not (tmp_path / "ds").exists()
