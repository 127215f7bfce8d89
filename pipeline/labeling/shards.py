"""Labeling planned shards: the per-shard work, and the two ways to run it.

`ShardWork` is one shard's job (teacher forward → top-k → atomic Parquet write) without the
teacher and the tokens, so it is small and picklable. Both executors run exactly this code:

- in process (`label_in_process`): the teacher runs on the calling thread while a writer thread
  encodes and writes the previous shard;
- on dask (`label_on_cluster`): each shard is one task. The client streams shard inputs (token
  arrays, embedded in the task so the scheduler can resend them if a worker dies) with a bounded
  number in flight, and gathers completion records as tasks finish. The worker loads the teacher
  once (pipeline/cluster.py cache). A task killed with its worker is rescheduled by dask and
  rewrites the same shard file (softlabels/layout.py) atomically, since names come from the
  plan, never from the worker.
"""

import queue
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from pipeline.device import resolve_device
from pipeline.errors import PipelineError
from pipeline.labeling.forward import label_tokens
from pipeline.labeling.modes import selector
from pipeline.labeling.packing import ShardInput
from pipeline.softlabels import schema as S
from pipeline.softlabels.layout import shard_name
from pipeline.softlabels.writer import ShardLabels, build_table, write_shard
from pipeline.threads import pin_threads, requested_threads

IN_FLIGHT_PER_WORKER = 2  # one running, one queued: workers never idle, memory stays bounded


@dataclass
class ShardWork:
    out: str
    spec: S.LabelSpec
    kv: dict  # Parquet key-value metadata every shard repeats
    batch_size: int
    row_group_rows: int
    teacher: str | None = None
    teacher_sha256: str | None = None
    device: str = "auto"
    trust_remote_code: bool = False

    def labels(self, model, shard_input: ShardInput, device, on_batch=None) -> ShardLabels | None:
        if model is None:  # tokens-only dataset
            if on_batch is not None:
                on_batch(shard_input.tokens.size)
            return None
        name = shard_name(shard_input.split, shard_input.index)
        select = selector(self.spec, shard_input.split, shard_input.index)  # None: top-k
        return ShardLabels(*label_tokens(model, shard_input.tokens, self.spec.k, self.batch_size,
                                         device, name, on_batch, select,
                                         segments=shard_input.segments))

    def write(self, shard_input: ShardInput, labels: ShardLabels | None) -> dict:
        """Atomic write named by (split, index); returns the completion record."""
        table = build_table(self.spec, shard_input.tokens, shard_input.doc_ids, labels,
                            shard_input.mask, shard_input.segments)
        return write_shard(self.out, shard_input.split, shard_input.index, table, self.kv,
                           self.row_group_rows, shard_input.input_sha256)


class _BackgroundWriter:
    """Encodes and writes shards on a thread so Parquet work overlaps the next teacher forward."""

    def __init__(self, write_fn):
        self._q: queue.Queue = queue.Queue(maxsize=2)
        self._write, self._error, self.records = write_fn, None, []
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while (item := self._q.get()) is not None:
            if self._error is None:
                try:
                    self.records.append(self._write(*item))
                except BaseException as exc:  # re-raised on the main thread
                    self._error = exc

    def submit(self, *item) -> None:
        if self._error:
            raise self._error
        self._q.put(item)

    def close(self) -> list[dict]:
        self._q.put(None)
        self._thread.join()
        if self._error:
            raise self._error
        return self.records


def label_in_process(work: ShardWork, inputs: Iterable[ShardInput], model, device,
                     advance: Callable[[int], None]) -> list[dict]:
    writer = _BackgroundWriter(work.write)
    try:
        for shard_input in inputs:
            writer.submit(shard_input, work.labels(model, shard_input, device, advance))
    finally:
        records = writer.close()
    return records


def label_shard_task(work: ShardWork, shard_input: ShardInput, threads: int | None = None) -> dict:
    """A dask task: label one shard with this worker's cached teacher and write it, at the
    client's thread count (pipeline/threads.py: the same bytes as labeling in process)."""
    from pipeline.models.loader import cached_teacher

    pin_threads(threads)
    device = resolve_device(work.device)
    teacher = (cached_teacher(work.teacher, work.teacher_sha256, device, work.trust_remote_code)
               if work.teacher else None)
    labels = work.labels(teacher.model if teacher else None, shard_input, device)
    return work.write(shard_input, labels)


def task_key(work: ShardWork, shard_input: ShardInput) -> str:
    """Named by plan and (split, index): the same shard is the same task, retried or resubmitted."""
    plan = work.kv.get("plan_fingerprint", "")[:12]
    return f"label-{plan}-{shard_input.split}-{shard_input.index:05d}"


def label_on_cluster(client, work: ShardWork, inputs: Iterable[ShardInput],
                     advance: Callable[[int], None]) -> list[dict]:
    """Submit one task per shard, at most IN_FLIGHT_PER_WORKER per worker at a time; feed the
    progress bar and collect records as tasks complete (in any order)."""
    from distributed import as_completed
    from distributed.scheduler import KilledWorker

    from pipeline.cluster import worker_count

    inputs = iter(inputs)
    threads = requested_threads()
    pending = as_completed(loop=client.loop)
    names: dict[str, str] = {}

    def submit_next() -> bool:
        shard_input = next(inputs, None)
        if shard_input is None:
            return False
        key = task_key(work, shard_input)
        names[key] = shard_name(shard_input.split, shard_input.index)
        pending.add(client.submit(label_shard_task, work, shard_input, threads, key=key,
                                  pure=False))
        return True

    for _ in range(IN_FLIGHT_PER_WORKER * worker_count(client)):
        if not submit_next():
            break
    records = []
    for future in pending:
        try:
            record = future.result()
        except KilledWorker as exc:
            raise PipelineError(f"shard {names.get(future.key, future.key)} killed its dask "
                                f"worker repeatedly ({exc}); check worker memory/logs, then "
                                "rerun `pipeline label` (finished shards are kept)") from None
        records.append(record)
        advance(record["positions"])
        future.release()
        submit_next()
    return records
