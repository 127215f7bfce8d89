"""`make bench-gpu`: the GPU check — label with a wide-vocabulary teacher in bf16, train a student.

    .venv/bin/python -m benchmarks.gpu_check [--out DIR]   # CUDA, < 8 min with set-up
    .venv/bin/python -m benchmarks.gpu_check --tiny        # the same steps on CPU, seconds

Why: every other figure runs a 4,096-token teacher on a CPU, while the people this tool is for
distill 128k–256k-vocabulary teachers on GPUs. This is the check to run when a GPU is lent: it
needs no network (HF_HUB_OFFLINE) and brings everything it uses:
  1. a byte-level BPE tokenizer trained here with `tokenizers` on the shipped `builtin:bbc-news`;
  2. a Qwen2-shaped Hugging Face causal LM built from a config with random weights (151,936
     logits, the real Qwen2-0.5B width, 2 layers; its embeddings padded past the tokenizer, as
     real models' are), saved as an `hf:` teacher folder;
  3. a bare loop (teacher forward + top-k, bf16 autocast) over the batches labeling will run;
  4. `pipeline label` with that teacher (loaded in bf16 on CUDA);
  5. `pipeline train` of a native student on the labels (vocabulary = the teacher's logits).
Printed and written to OUT/gpu_check.json: labeled positions/s, label ÷ bare forward, training
tokens/s and peak GPU memory per step. `--tiny` shrinks every size and runs on the CPU, so
`make test` runs it (tests/benchmarks/test_gpu_check.py) and it cannot rot.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported: no network
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import asdict, dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from pipeline.device import autocast  # noqa: E402
from pipeline.labeling.corpus import CorpusSpec, read_texts  # noqa: E402
from pipeline.labeling.forward import topk_from_logits  # noqa: E402
from pipeline.labeling.packing import iter_shard_inputs  # noqa: E402

CORPUS = "builtin:bbc-news"
LIMIT_S = 8 * 60


@dataclass
class Sizes:
    """Every size of the check; `tiny` keeps the code path and shrinks the numbers."""

    tokenizer_vocab: int = 32_000
    vocab: int = 151_936  # Qwen2's logits width
    hidden: int = 896
    intermediate: int = 4_864
    heads: int = 14
    kv_heads: int = 2
    layers: int = 2
    seq_len: int = 512
    top_k: int = 32
    label_batch: int = 32
    docs: int | None = None  # the whole corpus
    student: str = "n_layer = 2\nn_head = 8\nd_model = 512\n"
    batch_size: int = 16
    train_steps: int = 200
    num_workers: int = 2

    @classmethod
    def tiny(cls) -> "Sizes":
        return cls(tokenizer_vocab=512, vocab=640, hidden=32, intermediate=64, heads=2,
                   kv_heads=1, layers=1, seq_len=32, top_k=8, label_batch=8, docs=24,
                   student="n_layer = 1\nn_head = 2\nd_model = 16\n", batch_size=8,
                   train_steps=4, num_workers=0)


def build_tokenizer(sizes: Sizes, out: Path) -> Path:
    """A BPE tokenizer trained on the shipped corpus (reused when already there)."""
    from pipeline.models.tokenizer import train_bpe_tokenizer

    path = out / f"tokenizer-{sizes.tokenizer_vocab}.json"
    if not path.is_file():
        train_bpe_tokenizer(read_texts(CorpusSpec(CORPUS), sizes.docs), sizes.tokenizer_vocab,
                            path)
    return path


def build_teacher(sizes: Sizes, tokenizer: Path, out: Path) -> Path:
    """A Qwen2-shaped causal LM with random weights, from a config (no download), plus a fast
    tokenizer wrapping `tokenizer`; reused when the folder holds the same config."""
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, Qwen2Config

    from pipeline.models.tokenizer import EOS_TOKEN, PAD_TOKEN

    cfg = Qwen2Config(vocab_size=sizes.vocab, hidden_size=sizes.hidden,
                      intermediate_size=sizes.intermediate, num_attention_heads=sizes.heads,
                      num_key_value_heads=sizes.kv_heads, num_hidden_layers=sizes.layers,
                      max_position_embeddings=max(sizes.seq_len, 64), tie_word_embeddings=True,
                      bos_token_id=None, eos_token_id=None, pad_token_id=None)
    folder = out / f"teacher-qwen2-{sizes.vocab}x{sizes.hidden}x{sizes.layers}"
    if not (folder / "model.safetensors").is_file():
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16).eval()
        model.save_pretrained(folder)
        PreTrainedTokenizerFast(tokenizer_file=str(tokenizer), eos_token=EOS_TOKEN,
                                pad_token=PAD_TOKEN).save_pretrained(folder)
    return folder


def _peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2)


@torch.inference_mode()
def bare_forward(teacher, sizes: Sizes, device: torch.device) -> dict:
    """Teacher forward + top-k on exactly the batches labeling runs (as bench figure 1), in
    the labeler's precision (bf16 autocast on CUDA)."""
    batches = []
    for shard in iter_shard_inputs(CorpusSpec(CORPUS), teacher.tokenizer, sizes.seq_len, 512,
                                   0.02, sizes.docs):
        tokens = torch.from_numpy(shard.tokens.astype("int64"))
        batches += [tokens[i:i + sizes.label_batch]
                    for i in range(0, tokens.shape[0], sizes.label_batch)]
    model = teacher.model.eval()

    def loop(some):
        for batch in some:
            with autocast(device):
                logits = model(batch.to(device, non_blocking=True))
            topk_from_logits(logits, sizes.top_k)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    loop(batches[:2])  # warm-up: kernels, allocator
    _peak_reset(device)
    start = time.perf_counter()
    loop(batches)
    seconds = time.perf_counter() - start
    positions = sum(b.numel() for b in batches)
    return {"seconds": seconds, "positions": positions, "positions_per_s": positions / seconds,
            "peak_gpu_gib": _peak_gib(device)}


def label(teacher_dir: Path, sizes: Sizes, device: torch.device, out: Path) -> dict:
    from stages.label import LabelConfig
    from stages.label import run as run_label

    _peak_reset(device)
    start = time.perf_counter()
    manifest = run_label(LabelConfig(
        corpus=CORPUS, out=str(out), teacher=f"hf:{teacher_dir}", top_k=sizes.top_k,
        seq_len=sizes.seq_len, batch_size=sizes.label_batch, shard_rows=512,
        validation_fraction=0.02, limit_docs=sizes.docs, device=str(device), overwrite=True,
        quiet=True))
    seconds = time.perf_counter() - start
    positions = manifest["summary"]["positions"]
    return {"seconds": seconds, "positions": positions, "positions_per_s": positions / seconds,
            "vocab_size": manifest["labels"]["vocab_size"], "peak_gpu_gib": _peak_gib(device)}


def train(labels: Path, sizes: Sizes, device: torch.device, out: Path) -> dict:
    from stages.train import TrainConfig
    from stages.train import run as run_train

    student = out / "student.toml"
    student.write_text(f'name = "gpu-check"\n[model]\nfamily = "gpt"\n{sizes.student}'
                       f"[train]\nbatch_size = {sizes.batch_size}\n"
                       f"max_steps = {sizes.train_steps}\neval_every = 1000000\n"
                       "checkpoint_every = 1000000\nlog_every = 1000000\neval_batches = 1\n"
                       '[loss]\nkind = "kl_tail"\n')
    _peak_reset(device)
    start = time.perf_counter()
    runs = run_train(TrainConfig(labels=str(labels), students=[str(student)],
                                 out=str(out / "runs"), device=str(device), quiet=True,
                                 num_workers=sizes.num_workers))
    seconds = time.perf_counter() - start
    done = json.loads((runs["gpu-check"] / "complete.json").read_text())
    tokens = sizes.train_steps * sizes.batch_size * sizes.seq_len
    return {"seconds": seconds, "steps": sizes.train_steps, "tokens": tokens,
            "tokens_per_s": done.get("pass_tokens_per_s"), "peak_gpu_gib": _peak_gib(device)}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="tiny sizes on the CPU (a smoke run)")
    p.add_argument("--device", help="default: cuda (--tiny: cpu)")
    p.add_argument("--out", type=Path, default=Path("outputs/gpu-check"), help="work folder")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    sizes = Sizes.tiny() if args.tiny else Sizes()
    device = torch.device(args.device or ("cpu" if args.tiny else "cuda"))
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"error: no CUDA device (torch {torch.__version__}, CUDA build "
              f"{torch.version.cuda}); run on a GPU machine, or pass --tiny", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    from pipeline.models.loader import load_model_spec

    teacher_dir = build_teacher(sizes, build_tokenizer(sizes, args.out), args.out)
    setup_s = time.perf_counter() - start
    bare = bare_forward(load_model_spec(f"hf:{teacher_dir}", device), sizes, device)
    labeled = label(teacher_dir, sizes, device, args.out / "labels")
    trained = train(args.out / "labels", sizes, device, args.out)
    total = time.perf_counter() - start
    result = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "sizes": asdict(sizes), "setup_s": setup_s,
              "bare_forward": bare, "label": labeled, "train": trained,
              "label_over_bare": labeled["seconds"] / bare["seconds"], "total_s": total,
              "within_limit": total <= LIMIT_S}
    (args.out / "gpu_check.json").write_text(json.dumps(result, indent=2))
    print(report(result))
    print(json.dumps(result))
    return 0


def report(r: dict) -> str:
    gib = {k: r[k]["peak_gpu_gib"] for k in ("bare_forward", "label", "train")}
    return "\n".join([
        f"GPU check on {r['device']} (torch {r['torch']}); teacher Qwen2-shaped, "
        f"{r['label']['vocab_size']:,} logits, {'fp32' if r['device'] == 'cpu' else 'bf16'}",
        f"labeled positions/s      {r['label']['positions_per_s']:,.0f}",
        f"label ÷ bare forward     {r['label_over_bare']:.2f}×",
        f"training tokens/s        {r['train']['tokens_per_s'] or 0:,.0f}",
        f"peak GPU memory (GiB)    bare {gib['bare_forward']}, label {gib['label']}, "
        f"train {gib['train']}",
        f"total {r['total_s']:.0f} s (set-up {r['setup_s']:.0f} s; limit {LIMIT_S} s: "
        f"{'pass' if r['within_limit'] else 'FAIL'})"])


if __name__ == "__main__":
    sys.exit(main())
