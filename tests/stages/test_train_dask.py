"""`pipeline train` on dask: 2 students as 2 tasks on 2 workers give the run folders (layout,
config, metrics, weights) of the in-process run; a worker SIGKILLed mid-student changes nothing."""

import json
import os
import signal
import threading

import pytest
import torch
from distributed import Client, get_task_stream
from safetensors.torch import load_file

from pipeline.cluster import local_cluster
from pipeline.errors import PipelineError
from stages.label import LabelConfig
from stages.label import run as label
from stages.train import TrainConfig, run
from tests.holds import WorkerGate

GPT = '[model]\nfamily = "gpt"\nn_layer = 1\nn_head = 2\nd_model = 32\n'
GRU = '[model]\nfamily = "gru"\nd_model = 32\n'
TRAIN = ("[schedule]\nwarmup_steps = 3\n[train]\nbatch_size = 8\nmax_steps = 20\neval_every = 10\n"
         "eval_batches = 2\ncheckpoint_every = 10\n")


@pytest.fixture
def one_thread():
    """Dask workers run torch on one thread; so does the in-process reference, to compare bits."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def cluster():
    with local_cluster(2, gpus=0) as c, Client(c, set_as_default=False) as client:
        client.wait_for_workers(2)
        yield c, client


@pytest.fixture(scope="module")
def labeled(tmp_path_factory, tiny_corpus, tiny_teacher):
    out = tmp_path_factory.mktemp("ds") / "ds"
    label(LabelConfig(corpus=str(tiny_corpus), out=str(out), teacher=str(tiny_teacher), top_k=4,
                      seq_len=16, shard_rows=32, row_group_rows=8, batch_size=32,
                      validation_fraction=0.1, quiet=True))
    return out


def tree(d):
    return sorted(p.relative_to(d).as_posix() for p in d.rglob("*"))


def metrics(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in rows]


@pytest.mark.slow
def test_two_students_on_two_workers_match_in_process(tmp_path, labeled, one_thread, cluster):
    students = []
    for name, model in (("gpt", GPT), ("gru", GRU)):
        students.append(tmp_path / f"{name}.toml")
        students[-1].write_text(model + TRAIN)
    cfg = dict(labels=str(labeled), students=[str(s) for s in students], device="cpu",
               quiet=True)
    ref = run(TrainConfig(out=str(tmp_path / "ref"), **cfg))
    cluster, client = cluster
    with get_task_stream(client) as stream:
        got = run(TrainConfig(out=str(tmp_path / "dask"), scheduler=cluster.scheduler_address,
                              **cfg))
    workers = {t["worker"] for t in stream.data if str(t["key"]).startswith("train-")}
    assert len(workers) == 2  # one student per worker
    with get_task_stream(client) as again:  # finished runs are skipped: nothing is submitted
        run(TrainConfig(out=str(tmp_path / "dask"), scheduler=cluster.scheduler_address, **cfg))
    assert not again.data
    assert set(got) == set(ref) == {"gpt", "gru"}
    for name in ref:
        assert tree(got[name]) == tree(ref[name])
        assert (got[name] / "config.toml").read_text() == (ref[name] / "config.toml").read_text()
        assert metrics(got[name]) == metrics(ref[name])
        assert_same_weights(got[name], ref[name])


def assert_same_weights(a, b):
    a, b = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_worker_killed_mid_student_resumes_to_the_same_weights(tmp_path, labeled, one_thread,
                                                               cluster):
    path = tmp_path / "gpt.toml"
    path.write_text(GPT + TRAIN.replace("max_steps = 20", "max_steps = 120"))
    cfg = dict(labels=str(labeled), students=[str(path)], device="cpu", quiet=True)
    ref = run(TrainConfig(out=str(tmp_path / "ref"), **cfg))["gpt"]
    cluster, client = cluster
    errors = []

    def trainer():
        try:
            run(TrainConfig(out=str(tmp_path / "dask"), scheduler=cluster.scheduler_address,
                            **cfg))
        except BaseException as exc:  # surfaced by the assert below
            errors.append(exc)

    # the worker holds right after committing the checkpoint of step 20 until the kill is done
    gate = WorkerGate(client, "pipeline.training.trainer:write_json_atomic",
                      lambda args, result: str(args[0]).endswith("latest.json")
                      and args[1]["step"] >= 20)
    thread = threading.Thread(target=trainer)
    thread.start()
    try:
        held = gate.held_worker()
        busy = [addr for addr, keys in client.processing().items() if keys]
        assert thread.is_alive() and len(busy) == 1, "training ended before the kill"
        assert busy == [held]
        os.kill(client.run(os.getpid)[busy[0]], signal.SIGKILL)
    finally:
        gate.release()
    thread.join(timeout=300)
    assert not thread.is_alive() and not errors, errors
    got = tmp_path / "dask" / "gpt"
    assert [r["step"] for r in metrics(got)] == list(range(1, 121))
    assert metrics(got) == metrics(ref)
    assert_same_weights(got, ref)


def test_unfinished_run_without_resume_is_refused_before_any_cluster(tmp_path, labeled):
    path = tmp_path / "gpt.toml"
    path.write_text(GPT + TRAIN)
    (tmp_path / "runs" / "gpt").mkdir(parents=True)
    (tmp_path / "runs" / "gpt" / "junk").write_text("x")
    with pytest.raises(PipelineError, match="run folder"):
        run(TrainConfig(labels=str(labeled), students=[str(path)], out=str(tmp_path / "runs"),
                        workers=2, quiet=True, device="cpu"))
