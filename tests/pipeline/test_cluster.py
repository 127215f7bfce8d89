"""pipeline/cluster.py: clear errors for a scheduler that does not answer, scheduler files, the
once-per-process teacher cache, and the one-GPU-per-worker local cluster layout."""

import json
import os
import socket
import time

import pytest
from distributed import Client

from pipeline import cluster
from pipeline.errors import PipelineError
from pipeline.io.hashing import sha256_file
from pipeline.models import loader
from tests.conftest import make_teacher, run_cli


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_scheduler_that_does_not_answer_is_one_clear_line_fast():
    address = f"tcp://127.0.0.1:{free_port()}"
    start = time.monotonic()
    with pytest.raises(PipelineError, match="did not answer within 1s") as info:
        cluster.connect(address, timeout=1)
    assert time.monotonic() - start < 20
    assert address in str(info.value) and "\n" not in str(info.value)


@pytest.mark.slow
def test_cli_label_with_dead_scheduler_exits_1_with_one_line(tmp_path, tiny_corpus,
                                                             tiny_teacher):
    proc = run_cli("label", "--corpus", tiny_corpus, "--teacher", tiny_teacher, "--out",
                   tmp_path / "ds", "--top-k", "4", "--seq-len", "32", "--quiet",
                   "--scheduler", f"tcp://127.0.0.1:{free_port()}", check=False)
    assert proc.returncode == 1
    assert "dask scheduler did not answer" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "ds" / "manifest.json").exists()


def test_scheduler_file_is_read_and_a_missing_one_is_refused(tmp_path):
    f = tmp_path / "scheduler.json"
    with pytest.raises(PipelineError, match="scheduler file not found"):
        cluster.scheduler_address(str(f))
    f.write_text(json.dumps({"address": "tcp://10.0.0.5:8786", "type": "Scheduler"}))
    assert cluster.scheduler_address(str(f)) == "tcp://10.0.0.5:8786"
    f.write_text("not json")
    with pytest.raises(PipelineError, match="not a dask scheduler file"):
        cluster.scheduler_address(str(f))
    assert cluster.scheduler_address("tcp://h:1") == "tcp://h:1"


def test_workers_and_scheduler_together_are_refused():
    with pytest.raises(PipelineError, match="not both"), cluster.open_client(2, "tcp://h:1"):
        pass


def test_teacher_cache_loads_once_and_refuses_a_changed_teacher(tmp_path, tiny_tokenizer):
    loader.clear_teacher_cache()
    path = make_teacher(tiny_tokenizer, tmp_path / "t")
    sha = sha256_file(path / "model.safetensors")
    first = loader.cached_teacher(str(path), sha, "cpu")
    assert loader.cached_teacher(str(path), sha, "cpu") is first
    assert loader.teacher_loads() == {sha: 1}
    loader.clear_teacher_cache()
    assert loader.teacher_loads() == {}
    make_teacher(tiny_tokenizer, tmp_path / "t", seed=1)  # same path, new weights
    with pytest.raises(PipelineError, match="changed on disk"):
        loader.cached_teacher(str(path), sha, "cpu")


@pytest.mark.slow
def test_local_cluster_is_processes_with_one_thread_and_one_gpu_each():
    """gpus=2 forces the GPU layout on a CPU machine: each worker sees only its own device."""
    with cluster.local_cluster(2, gpus=2) as c, Client(c, set_as_default=False) as client:
        client.wait_for_workers(2)
        assert sorted(client.nthreads().values()) == [1, 1]
        pids = client.run(os.getpid)
        assert len(set(pids.values())) == 2 and os.getpid() not in pids.values()
        visible = client.run(lambda: os.environ.get("CUDA_VISIBLE_DEVICES"))
        assert sorted(visible.values()) == ["0", "1"]
        info = client.scheduler_info()["workers"].values()
        assert all(w["resources"] == {"GPU": 1} for w in info)
