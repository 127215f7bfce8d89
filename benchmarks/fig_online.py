"""Figure 4: offline vs online KD — what does reading labels save over running the teacher?

Four variants per repetition, on the same training epoch (same rows, same order, same device):
- offline: the demo student trained from the shards (streaming reader → `train_step`);
- online: the same student, the teacher run live in the loop on the batch's tokens (forward +
  top-k under inference_mode, then the same `train_step`); its tokens come from a tokens-only
  dataset of the same plan, so it reads no labels it would not have;
- teacher: the bare teacher loop (forward + top-k) over the epoch's batches, in memory;
- student: the bare `train_step` loop over the epoch's labeled batches, in memory.
Ideal speed-up of offline over online = (teacher + student) ÷ student: offline saves the whole
teacher and costs nothing. The figure is the measured speed-up (online ÷ offline epoch time) as
a fraction of that ideal, i.e. (offline ÷ online) measured against student ÷ (teacher + student).
"""

import time

import torch

from benchmarks.common import DEMO_STUDENT, Context
from benchmarks.profiling import torch_profile_top
from benchmarks.report import Figure
from benchmarks.timing import interleaved, per_round
from pipeline.labeling.forward import topk_from_logits
from pipeline.softlabels.stream import StreamConfig, StreamReader

GOAL = 0.9


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def live_labels(teacher, input_ids: torch.Tensor, k: int) -> dict:
    ids, logprobs, tail = topk_from_logits(teacher(input_ids), k)
    return {"topk_ids": ids, "topk_logprobs": logprobs, "tail_mass": tail}


def _epoch(ctx: Context, spec, ds, teacher=None) -> float:
    """Seconds of one training epoch from the reader; with `teacher`, labels are made live."""
    reader = StreamReader(ds, StreamConfig("train", ctx.params.batch_size), verify=False)
    run = ctx.student_run(spec, ds, reader.epoch_length(0))
    start = time.perf_counter()
    for _, batch in reader.iter_epoch(0):
        batch = {k: v.to(ctx.device) for k, v in batch.items()}
        if teacher is not None:
            batch.update(live_labels(teacher, batch["input_ids"], ctx.params.top_k))
        run.train_step(batch)
    _sync(ctx.device)
    return time.perf_counter() - start


def _bare_teacher(ctx: Context, batches: list[dict]) -> float:
    start = time.perf_counter()
    for b in batches:
        live_labels(ctx.teacher.model, b["input_ids"], ctx.params.top_k)
    _sync(ctx.device)
    return time.perf_counter() - start


def _bare_student(ctx: Context, spec, ds, batches: list[dict]) -> float:
    run = ctx.student_run(spec, ds, len(batches))
    start = time.perf_counter()
    for b in batches:
        run.train_step(b)
    _sync(ctx.device)
    return time.perf_counter() - start


def measure(ctx: Context) -> list[Figure]:
    p = ctx.params
    labeled = ctx.dataset("small", p.label_docs)
    tokens = ctx.dataset("small-tokens", p.label_docs, top_k=0)
    batches = ctx.batches(labeled)
    spec = ctx.student_spec(ctx.student_file("online-gpt-tiny", DEMO_STUDENT), labeled,
                            len(batches))
    teacher = ctx.teacher.model.eval()
    live_labels(teacher, batches[0]["input_ids"], p.top_k)  # warm-up
    s = interleaved({"offline": lambda: _epoch(ctx, spec, labeled),
                     "online": lambda: _epoch(ctx, spec, tokens, teacher),
                     "teacher": lambda: _bare_teacher(ctx, batches),
                     "student": lambda: _bare_student(ctx, spec, labeled, batches)}, p.reps)
    speedup = per_round(lambda off, on: on / off, s["offline"], s["online"])
    ideal = per_round(lambda t, st: (t + st) / st, s["teacher"], s["student"])
    stat = per_round(lambda off, on, t, st: (on / off) / ((t + st) / st),
                     s["offline"], s["online"], s["teacher"], s["student"])
    fig = Figure("4", "Offline vs online KD: speed-up online ÷ offline epoch "
                      f"({speedup.median:.2f}×) as a fraction of the ideal (teacher + student) "
                      f"÷ student ({ideal.median:.2f}×)", f"≥ {GOAL}", stat, stat.median >= GOAL,
                 unit="", details={"steps_per_epoch": len(batches),
                                   "offline_epoch_s": s["offline"],
                                   "online_epoch_s": s["online"],
                                   "bare_teacher_s": s["teacher"],
                                   "bare_student_s": s["student"],
                                   "offline_over_online": [1 / x for x in speedup.values],
                                   "speedup": speedup.values, "ideal": ideal.values})
    if not fig.passed:
        read = [off - st for off, st in zip(s["offline"], s["student"])]
        top = torch_profile_top(lambda: _epoch(ctx, spec, labeled))
        fig.note = (
            f"Offline reached {stat.median:.2f} of the ideal speed-up. Offline epoch minus bare "
            f"student loop = {min(read):.2f}–{max(read):.2f} s of reading and decoding per "
            f"epoch that the ideal assumes free. Torch operators in one offline epoch: {top}. "
            "What would close it: read ahead on DataLoader workers (`--num-workers`) so "
            "decoding overlaps the student's step, and decode only the columns the loss needs.")
    return [fig]
