"""`pipeline label` on dask.distributed: same dataset as in process, teacher once per worker, and a
worker SIGKILLed mid-run changes nothing in the result.

One LocalCluster (2 processes × 1 thread) is shared by the module; the kill test runs last because
it leaves a restarted worker behind. Cluster start-up and worker torch imports take seconds on a
shared 2-core machine, hence `slow`.
"""

import json
import os
import signal
import threading

import pyarrow.parquet as pq
import pytest
from distributed import Client

from pipeline.cluster import local_cluster
from pipeline.models.loader import clear_teacher_cache, teacher_loads
from pipeline.softlabels.validate import validate_dataset
from stages.label import LabelConfig, run
from tests.conftest import run_cli
from tests.holds import WorkerGate

OPTS = dict(top_k=4, seq_len=32, shard_rows=8, batch_size=2, device="cpu", quiet=True,
            validation_fraction=0.2)


def rows(d):
    """Every shard's rows, by path, as Python values (row-for-row comparison)."""
    return {p.relative_to(d).as_posix(): pq.read_table(p).to_pylist()
            for p in sorted((d / "shards").rglob("*.parquet"))}


def manifest(d):
    m = json.loads((d / "manifest.json").read_text())
    m.pop("created_at")
    return m


@pytest.fixture(scope="module")
def client():
    with local_cluster(2, gpus=0) as cluster, Client(cluster, set_as_default=False) as c:
        c.wait_for_workers(2)
        yield c


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_corpus, tiny_teacher):
    out = tmp_path_factory.mktemp("ref") / "ds"
    run(LabelConfig(corpus=str(tiny_corpus), out=str(out), teacher=str(tiny_teacher), **OPTS))
    return out


def label_on(client, out, tiny_corpus, tiny_teacher):
    return run(LabelConfig(corpus=str(tiny_corpus), out=str(out), teacher=str(tiny_teacher),
                           scheduler=client.scheduler.address, **OPTS))


@pytest.mark.slow
def test_two_workers_label_identical_to_in_process(client, reference, tmp_path, tiny_corpus,
                                                   tiny_teacher):
    out = tmp_path / "ds"
    label_on(client, out, tiny_corpus, tiny_teacher)
    got, want = rows(out), rows(reference)
    assert len(want) > 20 and sum(map(len, want.values())) > 50
    assert got == want
    assert manifest(out) == manifest(reference)
    assert validate_dataset(out)[0] == []


@pytest.mark.slow
def test_teacher_loaded_once_per_worker(client, tmp_path, tiny_corpus, tiny_teacher):
    client.run(clear_teacher_cache)
    m = label_on(client, tmp_path / "ds", tiny_corpus, tiny_teacher)
    loads = client.run(teacher_loads)
    shards = sum(len(s) for s in m["splits"].values())
    assert len(loads) == 2 and shards > 2 * len(loads)
    assert all(counts == {m["teacher"]["sha256"]: 1} for counts in loads.values()), loads


@pytest.mark.slow
def test_cli_workers_flag_starts_its_own_cluster(reference, tmp_path, tiny_corpus, tiny_teacher):
    out = tmp_path / "ds"
    run_cli("label", "--corpus", tiny_corpus, "--teacher", tiny_teacher, "--out", out,
            "--workers", "2", "--top-k", "4", "--seq-len", "32", "--shard-rows", "8",
            "--batch-size", "2", "--device", "cpu", "--quiet", "--validation-fraction", "0.2")
    assert rows(out) == rows(reference)
    assert manifest(out) == manifest(reference)


def _threads_seen(cfg):
    import torch

    return torch.get_num_threads(), os.environ["MKL_DYNAMIC"]


@pytest.mark.slow
def test_tasks_run_at_the_clients_thread_count(client):
    """The nanny starts workers at one thread; a task pins the count the client asked for."""
    from pipeline.training.cluster import pinned

    assert client.submit(pinned, _threads_seen, 2, None, pure=False).result() == (2, "FALSE")
    assert client.submit(pinned, _threads_seen, 1, None, pure=False).result() == (1, "FALSE")


@pytest.mark.slow
def test_worker_sigkilled_mid_run_still_yields_identical_dataset(client, reference, tmp_path,
                                                                 tiny_corpus, tiny_teacher):
    out = tmp_path / "ds"
    errors = []

    def labeler():
        try:
            label_on(client, out, tiny_corpus, tiny_teacher)
        except BaseException as exc:  # surfaced by the assert below
            errors.append(exc)

    # Every task on the current workers holds right after its shard and record are written,
    # until the kill is done: the victim dies inside a task whatever the load (tests/holds.py).
    gate = WorkerGate(client, "pipeline.labeling.shards:write_shard", lambda args, result: True)
    thread = threading.Thread(target=labeler)
    thread.start()
    try:
        victim = gate.held_worker()
        pids = client.run(os.getpid)
        busy = {addr: keys for addr, keys in client.processing().items() if keys}
        assert thread.is_alive() and busy, "labeling finished before a worker could be killed"
        assert victim in busy and (out / "_progress").exists()
        os.kill(pids[victim], signal.SIGKILL)
    finally:
        gate.release()
    thread.join(timeout=180)
    assert not thread.is_alive() and not errors, errors
    assert victim not in client.run(os.getpid)  # the worker really died (the nanny restarts it)
    got = rows(out)
    assert got == rows(reference)  # no duplicate, missing or half-written shard
    assert manifest(out) == manifest(reference)
    assert not list(out.rglob("*.tmp"))
    assert validate_dataset(out)[0] == []
