"""`make bench-gpu` must not rot: its `--tiny` mode runs the same steps on the CPU (tokenizer
trained on the shipped corpus, Qwen2-shaped `hf:` teacher built from a config, bare forward,
label, train) in seconds, offline."""

import json
import subprocess
import sys

from tests.conftest import REPO
from tests.interop import OFFLINE


def test_gpu_check_tiny_runs_every_step_on_cpu(tmp_path):
    import os

    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--tiny", "--out",
                           str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env={**os.environ, **OFFLINE})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    assert result["device"] == "cpu" and result["within_limit"]
    assert result["label"]["vocab_size"] > result["sizes"]["tokenizer_vocab"]  # padded head
    assert result["label"]["positions"] == result["bare_forward"]["positions"] > 0
    assert result["label_over_bare"] > 0 and result["train"]["tokens_per_s"] > 0
    for line in ("labeled positions/s", "label ÷ bare forward", "training tokens/s",
                 "peak GPU memory"):
        assert line in proc.stdout
