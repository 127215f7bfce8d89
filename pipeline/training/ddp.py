"""One student across processes with torchrun: ranks, sharded reading, DDP, rank-0-only writes.

`torchrun --nproc-per-node N -m pipeline train ...` starts N copies of the ordinary trainer with
RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR set. `setup()` reads them and joins the process
group (gloo on CPU, nccl on CUDA, one GPU per local rank); without them everything here is a
no-op and the trainer is exactly the single-process one. The trainer asks this module for:

- `for_rank(StreamConfig)`: the reader deals row groups to consumers = ranks × DataLoader
  workers, so each rank reads its own rows and no row is read twice in an epoch;
- `reader(...)`: every rank must take the same number of optimizer steps (DDP all-reduces at
  each one), so a distributed epoch is as long as its shortest rank; the longer ranks drop their
  last batch or so. The lengths come from Parquet metadata, so no communication is needed;
- `agree_to_stop(flag)`: one all-reduce per step, so every rank stops at the same step when
  any of them got SIGINT/SIGTERM (pipeline/interrupt.py);
- `student_run(...)`: a StudentRun whose model is wrapped in DistributedDataParallel (gradients
  averaged across ranks in backward), whose logged losses are averaged across ranks, and which
  writes checkpoints and metrics on rank 0 only. Checkpoints hold the plain model, so a run
  folder is the same model directory as a single-process run's.

The global batch is world_size × the student's `batch_size` rows.
"""

import atexit
import contextlib
import os
from dataclasses import dataclass, replace

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from pipeline.device import resolve_device
from pipeline.softlabels.stream import StreamConfig, StreamReader, epoch_lengths
from pipeline.training.trainer import StudentRun


@dataclass(frozen=True)
class Rank:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


_rank = Rank()


def current() -> Rank:
    return _rank


def is_main() -> bool:
    return _rank.main


def setup(device_name: str = "auto") -> torch.device:
    """Join the torchrun process group if there is one; return this rank's device."""
    global _rank
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = resolve_device(device_name)
    if world <= 1:
        return device
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        atexit.register(dist.destroy_process_group)
    _rank = Rank(dist.get_rank(), dist.get_world_size(), local)
    return device


def barrier() -> None:
    if _rank.active:
        dist.barrier()


def agree_to_stop(asked: bool) -> bool:
    """Whether any rank was asked to stop (SIGINT/SIGTERM), the same answer on every rank: the
    ranks get a signal at different moments, and a rank that stopped alone would leave the
    others waiting in their next all-reduce. Called by every rank at the same step."""
    if not _rank.active:
        return asked
    flag = torch.tensor([int(asked)], device=_collective_device())
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def _collective_device() -> torch.device:
    """nccl reduces CUDA tensors only; gloo CPU ones."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def for_rank(sc: StreamConfig) -> StreamConfig:
    return replace(sc, rank=_rank.rank, world_size=_rank.world_size)


class RankedReader(StreamReader):
    """A StreamReader whose epochs have the same length on every rank (the shortest one's)."""

    def epoch_length(self, epoch: int) -> int:
        return min(sum(epoch_lengths(self.units, replace(self.cfg, rank=r), epoch).values())
                   for r in range(self.cfg.world_size))

    # iter_epochs stops each epoch at epoch_length: every rank takes the same number of steps


def reader(dataset, sc: StreamConfig, **kw) -> StreamReader:
    return (RankedReader if sc.world_size > 1 else StreamReader)(dataset, sc, **kw)


def student_run(*args, **kw) -> StudentRun:
    return DDPStudentRun(*args, **kw) if _rank.active else StudentRun(*args, **kw)


class DDPStudentRun(StudentRun):
    """StudentRun with a DDP-wrapped model; files are written by rank 0 only."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        ids = [self.device.index] if self.device.type == "cuda" else None
        self.model = DistributedDataParallel(self.model, device_ids=ids)
        self.global_tokens = 0

    @contextlib.contextmanager
    def plain(self):
        """The unwrapped model for checkpoints and evaluation (same keys as a 1-process run)."""
        wrapped, self.model = self.model, self.model.module
        try:
            yield
        finally:
            self.model = wrapped

    def load_checkpoint(self):
        with self.plain():
            return super().load_checkpoint()

    def _truncate_metrics(self) -> None:
        if _rank.main:
            super()._truncate_metrics()

    def save_checkpoint(self, stream_settings: dict) -> None:
        if _rank.main:
            with self.plain():
                super().save_checkpoint(stream_settings)

    def append_metrics(self, record: dict) -> None:
        if _rank.main:
            super().append_metrics(record)

    def evaluate(self, batches: list[dict]) -> dict:
        with self.plain():
            return super().evaluate(batches)

    def metrics_record(self) -> dict:
        """Loss parts averaged over ranks, tokens summed, plus the spread of a parameter
        checksum across ranks (0.0 while DDP keeps the replicas identical)."""
        keys = sorted(self.last_parts)
        parts = torch.stack([self.last_parts[k].detach().double().reshape(()) for k in keys])
        dist.all_reduce(parts)
        self.last_parts = dict(zip(keys, parts / _rank.world_size))
        record = super().metrics_record()  # raises on every rank alike if a loss is not finite
        with torch.no_grad():
            checksum = sum(p.double().sum() for p in self.model.parameters())
        counts = torch.tensor([self.tokens, record["tokens_per_s"]], dtype=torch.float64,
                              device=self.device)
        dist.all_reduce(counts)
        sums = [torch.zeros((), dtype=torch.float64, device=self.device)
                for _ in range(_rank.world_size)]
        dist.all_gather(sums, checksum.reshape(()).to(self.device))
        self.global_tokens = int(counts[0])
        record.update(tokens=self.global_tokens, tokens_per_s=round(float(counts[1]), 1),
                      ddp_ranks=_rank.world_size,
                      ddp_param_spread=float(max(sums) - min(sums)))
        return record

    def summary(self) -> dict:
        with self.plain():
            return {**super().summary(), "tokens": self.global_tokens or self.tokens,
                    "ranks": _rank.world_size}
