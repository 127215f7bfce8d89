"""One student's training run: model, AdamW, schedule, per-batch step, checkpoints, metrics.

`StudentRun.train_step(batch)` takes a dict of tensors (`input_ids`, and for KD losses
`topk_ids`, `topk_logprobs`, `tail_mass`) so the same step serves stored labels and a live
teacher's top-k (online KD). Each student keeps its own torch RNG state and swaps it in around
its own work, so students sharing one read pass do not perturb each other: a student trains to
the same weights alone or in a group, and a resumed run to the same weights as an unbroken one.
The loss applies the student's output head one chunk of positions at a time
(pipeline/training/chunked.py), so memory does not grow with batch × seq × vocab.

Checkpoints never use pickle: weights and optimizer tensors go to safetensors, the rest to JSON.
The run folder's files and their write order are pipeline/training/layout.py's: a checkpoint is a
folder `state/step-N` written as `step-N.tmp` and renamed (pipeline/io/atomic.py), then
`state/latest.json` is replaced atomically to point at it, so a kill at any instant leaves
either the old or the new checkpoint; then the run folder's top-level model files become hard
links to the checkpoint's, so the run folder is a model directory from the first checkpoint on.
"""

import contextlib
import json
import math
import os
import shutil
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from pipeline.errors import PipelineError
from pipeline.io import atomic
from pipeline.io.atomic import write_json as write_json_atomic
from pipeline.models import build_model, count_parameters
from pipeline.models.checkpoint import WEIGHTS, load_state, load_weights, save_model_dir
from pipeline.training.chunked import model_loss
from pipeline.training.layout import (
    LATEST,
    METRICS,
    OPTIMIZER,
    STATE,
    TRAINER,
    checkpoint_model_files,
    checkpoint_name,
    latest_checkpoint,
)
from pipeline.training.students import StudentSpec


def lr_at(step: int, total: int, spec: StudentSpec) -> float:
    """Linear warmup to lr over warmup_steps, then cosine down to min_lr at the last step."""
    lr, warmup, floor = spec.optimizer.lr, spec.schedule.warmup_steps, spec.schedule.min_lr
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + 0.5 * (lr - floor) * (1.0 + math.cos(math.pi * progress))



def _same(batch: dict) -> dict:
    return batch


class StudentRun:
    def __init__(self, spec: StudentSpec, run_dir: Path, device: torch.device,
                 tokenizer_path: Path, total_steps: int):
        self.spec, self.dir, self.device = spec, Path(run_dir), device
        self.tokenizer_path, self.total_steps = tokenizer_path, total_steps
        self.step, self.position, self.tokens, self.elapsed = 0, (0, 0), 0, 0.0
        self.epoch = 0  # epoch of the last batch trained on (position moves past it)
        torch.manual_seed(spec.train.seed)
        try:
            self.model = build_model(spec.family, spec.model_params()).to(device)
        except PipelineError as exc:
            raise PipelineError(f"{spec.path}: {exc}") from exc
        self.rng = {"cpu": torch.get_rng_state()}
        if device.type == "cuda":
            torch.cuda.manual_seed(spec.train.seed)
            self.rng["cuda"] = torch.cuda.get_rng_state(device)
        o = spec.optimizer
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=o.lr, betas=tuple(o.betas),
                                           eps=o.eps, weight_decay=o.weight_decay)
        self.last_parts: dict[str, torch.Tensor] = {}
        self.last_val: dict = {}
        self._log_clock, self._log_tokens = time.perf_counter(), 0
        self.after_save = None  # called with the run folder after each checkpoint, if set
        self.view = _same  # batch → this student's batch (own tokenizer: training/xtok.py)

    @property
    def done(self) -> bool:
        return self.step >= self.total_steps

    @contextlib.contextmanager
    def own_rng(self):
        """Swap this student's RNG in (dropout draws), and the caller's back afterwards."""
        outer = {"cpu": torch.get_rng_state()}
        torch.set_rng_state(self.rng["cpu"])
        if "cuda" in self.rng:
            outer["cuda"] = torch.cuda.get_rng_state(self.device)
            torch.cuda.set_rng_state(self.rng["cuda"], self.device)
        try:
            yield
        finally:
            self.rng["cpu"] = torch.get_rng_state()
            torch.set_rng_state(outer["cpu"])
            if "cuda" in self.rng:
                self.rng["cuda"] = torch.cuda.get_rng_state(self.device)
                torch.cuda.set_rng_state(outer["cuda"], self.device)

    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One optimizer step on a batch already on this run's device; returns loss parts."""
        start = time.perf_counter()
        # A live teacher runs under inference_mode; autograd cannot save its tensors (the
        # gathered top-k ids), so take ordinary copies (k-sized, cheap).
        batch = {k: v.clone() if v.is_inference() else v for k, v in batch.items()}
        lr = lr_at(self.step, self.total_steps, self.spec)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.model.train()
        with self.own_rng():
            parts = model_loss(self.model, batch, self.spec.loss, self.device)
            self.optimizer.zero_grad(set_to_none=True)
            parts["loss"].backward()
            if self.spec.optimizer.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(),
                                               self.spec.optimizer.grad_clip)
            self.optimizer.step()
        self.step += 1
        self.tokens += batch["input_ids"].numel()
        self.elapsed += time.perf_counter() - start
        self.last_parts = {k: v.detach() for k, v in parts.items()}
        return self.last_parts

    @torch.no_grad()
    def evaluate(self, batches: list[dict]) -> dict:
        """Mean loss parts over validation batches, as val_loss / val_ce / val_kd."""
        if not batches:
            return {}
        self.model.eval()
        sums: dict[str, float] = {}
        for batch in batches:
            for k, v in model_loss(self.model, batch, self.spec.loss, self.device).items():
                sums[k] = sums.get(k, 0.0) + float(v)
        self.last_val = {f"val_{k}": v / len(batches) for k, v in sums.items()}
        return self.last_val

    def metrics_record(self) -> dict:
        parts = {k: float(v) for k, v in self.last_parts.items()}
        if not all(math.isfinite(v) for v in parts.values()):
            raise PipelineError(f"student {self.spec.name}: loss is not finite at step "
                                f"{self.step} ({parts}); lower [optimizer] lr or set grad_clip")
        now = time.perf_counter()
        rate = (self.tokens - self._log_tokens) / max(now - self._log_clock, 1e-9)
        self._log_clock, self._log_tokens = now, self.tokens
        return {"step": self.step, "epoch": self.epoch, **parts,
                "lr": lr_at(self.step - 1, self.total_steps, self.spec),
                "tokens": self.tokens, "tokens_per_s": round(rate, 1)}

    def append_metrics(self, record: dict) -> None:
        with open(self.dir / METRICS, "a") as f:
            f.write(json.dumps(record) + "\n")

    # -- checkpoints ---------------------------------------------------------------------------

    def save_checkpoint(self, stream_settings: dict) -> None:
        """Checkpoint folder, then latest.json, then the run folder's model files (the run
        folder's write order, training/layout.py), then the after_save hook (an upload)."""
        state = self.dir / STATE
        name = checkpoint_name(self.step)
        with atomic.replacing(state / name) as tmp:  # step-N.tmp, fsynced, renamed
            # the dataset says the vocabulary; it may exceed the tokenizer (an HF teacher's
            # padding)
            save_model_dir(self.model, self.tokenizer_path, tmp, padded_vocab=True)
            tensors, groups = _optimizer_tensors(self.optimizer)
            tensors.update({f"rng.{k}": v for k, v in self.rng.items()})
            save_file(tensors, str(tmp / OPTIMIZER))
            trainer = {"step": self.step, "position": list(self.position),
                       "tokens": self.tokens, "elapsed_s": self.elapsed, "param_groups": groups,
                       "stream": stream_settings, "last_val": self.last_val}
            (tmp / TRAINER).write_text(json.dumps(trainer, indent=2))
        write_json_atomic(state / LATEST, {"checkpoint": name, "step": self.step})
        self._link_model_files(state / name)
        for old in state.iterdir():
            if old.is_dir() and old.name != name:
                shutil.rmtree(old, ignore_errors=True)
        if self.after_save is not None:
            self.after_save(self.dir)

    def _link_model_files(self, ckpt: Path) -> None:
        """Make the run folder's model files the checkpoint's (hard links; weights last, so the
        model dir is complete; an hf student: a save_pretrained folder)."""
        for fname in checkpoint_model_files(ckpt):
            target = self.dir / fname
            if target.exists() and os.path.samefile(ckpt / fname, target):
                continue  # already linked (rename onto the same inode would keep the .tmp)
            link = self.dir / (fname + ".tmp")
            link.unlink(missing_ok=True)
            try:
                os.link(ckpt / fname, link)
            except OSError:  # a filesystem without hard links: copy instead
                shutil.copyfile(ckpt / fname, link)
            os.replace(link, target)

    def publish_latest_weights(self) -> None:
        """The run folder's model files := the latest checkpoint's. save_checkpoint links them
        right after latest.json; a kill in between (or, on object storage, a failed upload
        after it) leaves the previous weights there, so completing a run does this again."""
        self._link_model_files(self.dir / STATE / latest_checkpoint(self.dir))

    def load_checkpoint(self) -> dict | None:
        """Restore the latest checkpoint if there is one; return its trainer.json."""
        if (latest := latest_checkpoint(self.dir)) is None:
            return None
        ckpt = self.dir / STATE / latest
        load_weights(self.model, ckpt / WEIGHTS)
        tensors = load_state(ckpt / OPTIMIZER)
        trainer = json.loads((ckpt / TRAINER).read_text())
        _load_optimizer(self.optimizer, tensors, trainer["param_groups"])
        saved_rng = {k[4:]: v for k, v in tensors.items() if k.startswith("rng.")}
        self.rng["cpu"] = saved_rng["cpu"]
        if "cuda" in self.rng and "cuda" in saved_rng:  # a CPU checkpoint on CUDA keeps the seed
            self.rng["cuda"] = saved_rng["cuda"]
        self.step, self.tokens = trainer["step"], trainer["tokens"]
        self.position, self.elapsed = tuple(trainer["position"]), trainer["elapsed_s"]
        self.last_val = trainer.get("last_val", {})
        self._truncate_metrics()
        return trainer

    def _truncate_metrics(self) -> None:
        """Drop metric lines written after the checkpoint we resume from (they will be redone)."""
        path = self.dir / METRICS
        if not path.is_file():
            return
        keep = []
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # the line a kill cut short
                continue
            if record["step"] <= self.step:
                keep.append(line)
        atomic.write_bytes(path, "".join(line + "\n" for line in keep).encode())

    def summary(self) -> dict:
        return {"name": self.spec.name, "step": self.step, "tokens": self.tokens,
                "train_seconds": round(self.elapsed, 3),
                "parameters": count_parameters(self.model),
                "final": {k: float(v) for k, v in self.last_parts.items()}, **self.last_val}


def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict, list]:
    sd = opt.state_dict()
    tensors = {f"state.{pid}.{k}": v.detach().cpu().contiguous()
               for pid, st in sd["state"].items() for k, v in st.items()}
    return tensors, sd["param_groups"]


def _load_optimizer(opt: torch.optim.Optimizer, tensors: dict, groups: list) -> None:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("state."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = value
    for g in groups:
        g["betas"] = tuple(g["betas"])
    opt.load_state_dict({"state": state, "param_groups": groups})
