"""Figure 9: memory at a wide vocabulary — what `train` costs beyond the wider weights.

For the same native student (GPT, 1 layer, 64 wide) and batch (batch_size × seq_len, 16 × 128 in
the full run), peak RSS of `train` on a dataset at V = `wide_vocab` (151,936, Qwen2's width)
minus on the demo dataset (V = 4,096), divided by what the wider vocabulary must cost: the extra
weights, their gradients and AdamW's two states (4 × 4 B per extra parameter), plus one fp32
chunk of logits (1,024 positions × V). Goal ≤ 1.5. The same difference on the full-logit path
(SOFTLABELS_CHUNK_POSITIONS=0: the pre-chunking code, where the whole [batch, seq, vocab] logits
and their gradient live at once) is reported as the baseline, and `label` at the wide vocabulary,
chunked ÷ full logits, for information.

The wide dataset is labeled by a Qwen2-shaped `hf` teacher with random weights (1 layer, hidden
64) whose embeddings are padded from the demo tokenizer to `wide_vocab` rows, as real models
pad theirs; the narrow one by the demo teacher, on the same articles. Each measurement is a
fresh child of benchmarks/memprobe.py (peak RSS from `os.wait4`; transformers imported by the
parent, so its pages count in every job alike), variants interleaved.
"""

import shutil
from dataclasses import asdict
from pathlib import Path

import torch

from benchmarks.common import Context
from benchmarks.fig_memory import Probe
from benchmarks.report import Figure
from benchmarks.timing import Stat, interleaved, ratio
from pipeline.models import build_model, count_parameters
from pipeline.models.head import CHUNK_ENV, CHUNK_POSITIONS

GOAL = 1.5
STUDENT = {"n_layer": 1, "n_head": 2, "d_model": 64}
MODES = {"chunked": str(CHUNK_POSITIONS), "full": "0"}  # SOFTLABELS_CHUNK_POSITIONS per mode


def wide_teacher(tokenizer: Path, out: Path, vocab: int, context: int) -> Path:
    """A Qwen2-shaped random teacher with `vocab` logits over `tokenizer` (padded past it)."""
    if (out / "model.safetensors").is_file():
        return out
    import transformers
    from tokenizers import Tokenizer
    from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

    from pipeline.models.tokenizer import find_eos

    transformers.utils.logging.disable_progress_bar()
    tok = Tokenizer.from_file(str(tokenizer))
    cfg = AutoConfig.for_model("qwen2", vocab_size=vocab, num_hidden_layers=1, hidden_size=64,
                               intermediate_size=128, num_attention_heads=2,
                               num_key_value_heads=1, max_position_embeddings=context,
                               bos_token_id=None, eos_token_id=None, pad_token_id=None)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(out)
    PreTrainedTokenizerFast(tokenizer_file=str(tokenizer),
                            eos_token=tok.id_to_token(find_eos(tok))).save_pretrained(out)
    return out


def budget_bytes(narrow: int, wide: int, positions: int) -> dict[str, float]:
    """What V = wide must cost over V = narrow: 4 × 4 B per extra parameter (weights,
    gradients, AdamW exp_avg and exp_avg_sq) + one fp32 chunk of logits."""
    def params(vocab):
        return count_parameters(build_model("gpt", {"vocab_size": vocab, **STUDENT}))

    state = 16.0 * (params(wide) - params(narrow))
    chunk = 4.0 * min(CHUNK_POSITIONS, positions) * wide
    return {"state": state, "chunk": chunk, "total": state + chunk}


def measure(ctx: Context) -> list[Figure]:
    p = ctx.params
    root = ctx.work / "fig9-vocab"
    root.mkdir(parents=True, exist_ok=True)
    teacher = wide_teacher(ctx.teacher_path / "tokenizer.json", root / "qwen2-wide",
                           p.wide_vocab, p.seq_len)
    spec = f"hf:{teacher}"
    data = {"narrow": ctx.dataset("vocab-narrow", p.vocab_docs, validation_fraction=0.0),
            "wide": ctx.dataset("vocab-wide", p.vocab_docs, validation_fraction=0.0,
                                teacher=spec)}
    student = ctx.student_file("vocab-gpt", model=STUDENT, train={"batch_size": p.batch_size})
    jobs = {}
    for mode, chunk in MODES.items():
        for size, ds in data.items():
            out = root / f"runs-{size}-{mode}"
            jobs[f"train_{size}_{mode}"] = ("train", out, {
                "labels": str(ds.root), "students": [str(student)], "out": str(out),
                "max_steps": p.vocab_steps, "device": str(ctx.device), "quiet": True}, chunk)
        out = root / f"label-{mode}"
        jobs[f"label_wide_{mode}"] = ("label", out, asdict(ctx.label_config(
            out, p.vocab_label_docs, teacher=spec, validation_fraction=0.0)), chunk)
    with open(root / "memprobe.log", "w") as log:
        probe = Probe(log, "--hf")  # transformers imported once; it cancels in differences
        try:
            s = interleaved({name: (lambda j=job: probe.peak(j[0], j[2], {CHUNK_ENV: j[3]}))
                             for name, job in jobs.items()}, p.reps,
                            setup=lambda name, _: shutil.rmtree(jobs[name][1],
                                                                ignore_errors=True))
        finally:
            probe.close()
    vocab = {k: d.vocab_size for k, d in data.items()}
    figures = _figures(s, budget_bytes(vocab["narrow"], vocab["wide"],
                                       p.batch_size * p.seq_len), vocab, p)
    if not figures[0].passed or ctx.quick:  # quick: keep the profiling path from rotting
        top = _profile(ctx, data["wide"], student)
        figures[0].details["step_allocations"] = top
        if not figures[0].passed:
            figures[0].note += f" Profile of one step (torch profiler, bytes allocated): {top}."
    return figures


def _profile(ctx: Context, ds, student: Path) -> str:
    """The ops that allocate most in one training step at the wide vocabulary, in process."""
    from torch.profiler import ProfilerActivity, profile

    run = ctx.student_run(ctx.student_spec(student, ds, 1), ds, 1)
    batch = ctx.batches(ds, limit=1)[0]
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run.train_step(batch)
    top = sorted(prof.key_averages(), key=lambda e: e.self_cpu_memory_usage, reverse=True)[:5]
    return ", ".join(f"`{e.key}` {e.self_cpu_memory_usage / 2**20:.0f} MB" for e in top)


def _figures(s: dict, budget: dict, vocab: dict, p) -> list[Figure]:
    mb = {k: [v / 2**20 for v in vals] for k, vals in s.items()}
    extra = {m: [w - n for w, n in zip(s[f"train_wide_{m}"], s[f"train_narrow_{m}"])]
             for m in MODES}
    shape = (f"1-layer 64-wide GPT, batch {p.batch_size} × {p.seq_len}, V = {vocab['wide']:,} "
             f"vs {vocab['narrow']:,}")
    details = {"budget_mb": budget["total"] / 2**20, "state_mb": budget["state"] / 2**20,
               "chunk_mb": budget["chunk"] / 2**20, **{f"peak_rss_mb_{k}": v
                                                       for k, v in mb.items()}}
    chunked = Stat([e / budget["total"] for e in extra["chunked"]])
    main = Figure("9 (train)", f"Memory at a wide vocabulary: `train` peak RSS at V wide − V "
                  f"narrow ({shape}; chunks of {CHUNK_POSITIONS:,} positions) ÷ (extra weights + "
                  "gradients + AdamW state + one fp32 chunk of logits)", f"≤ {GOAL}", chunked,
                  chunked.median <= GOAL, details=details)
    full = Stat([e / budget["total"] for e in extra["full"]])
    base = Figure("9 (train, full logits)", "Baseline, the full-logit path (before): the same "
                  "difference ÷ the same budget", "none set (before)", full, None)
    label = Figure("9 (label)", f"Memory at a wide vocabulary: `label` peak RSS at V = "
                   f"{vocab['wide']:,}, chunked ÷ full logits (batch {p.batch_size} × "
                   f"{p.seq_len})", "none set (info)",
                   ratio(s["label_wide_chunked"], s["label_wide_full"]), None)
    if not main.passed:
        main.note = _note(extra, budget, vocab)
    return [main, base, label]


def _note(extra: dict, budget: dict, vocab: dict) -> str:
    got = [e / 2**20 for e in extra["chunked"]]
    full = [e / 2**20 for e in extra["full"]]
    return (
        f"`train` at V = {vocab['wide']:,} took {min(got):.0f}–{max(got):.0f} MB more than at "
        f"V = {vocab['narrow']:,} (full-logit path: {min(full):.0f}–{max(full):.0f} MB), "
        f"against a budget of {budget['total'] / 2**20:.0f} MB ({budget['state'] / 2**20:.0f} "
        f"MB of weights, gradients and AdamW state, {budget['chunk'] / 2**20:.0f} MB for one "
        "fp32 chunk of logits). The chunked loss holds one [chunk, V] fp32 buffer in forward "
        "and in backward (tests/pipeline/test_chunked.py checks that no larger logits-shaped "
        "tensor exists); besides it, [V, d] temporaries grow with V (the tied embedding's "
        "gradient is formed apart from the head's and added, AdamW's foreach update, the "
        "checkpoint's copy of the weights) and glibc may keep freed chunk buffers mapped. What "
        "would close it: a smaller SOFTLABELS_CHUNK_POSITIONS, MALLOC_ARENA_MAX=2, a fused AdamW.")
