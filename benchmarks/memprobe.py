"""Peak RSS of a stage, each run in its own child process: `python -m benchmarks.memprobe`.

Protocol: one JSON job per stdin line, `{"stage": "label" | "train", "config": {...}}` (the
fields of LabelConfig / TrainConfig; optional `"env": {...}`, set in the child only, e.g.
SOFTLABELS_CHUNK_POSITIONS); one JSON answer per stdout line, `{"maxrss_kb": N, "status": S}`.
The probe imports torch and the stages once, then forks a fresh child per job and reads the
child's own peak resident set from `os.wait4` (ru_maxrss), so a measurement holds the same
interpreter + torch baseline as a `pipeline` process and nothing of the benchmark process
(datasets, models of other figures), while paying the imports once instead of per job.
`--hf` also imports transformers first (its pages then count in every child alike).
"""

import json
import os
import sys
import traceback


def _run(job: dict) -> None:
    if job["stage"] == "label":
        from stages.label import LabelConfig, run

        run(LabelConfig(**job["config"]))
    elif job["stage"] == "train":
        from stages.train import TrainConfig, run

        run(TrainConfig(**job["config"]))
    else:
        raise ValueError(f"unknown stage {job['stage']!r}")


def main() -> None:
    import torch

    import stages.label  # noqa: F401  (import once, before forking: children share it)
    import stages.train  # noqa: F401

    # The first optimizer of a process imports torch._dynamo (seconds); pay that once here too.
    torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))])
    if "--hf" in sys.argv:  # jobs load `hf:` models: import transformers once, not per child
        import transformers  # noqa: F401
        import transformers.models.qwen2.modeling_qwen2  # noqa: F401

    for line in sys.stdin:
        if not line.strip():
            continue
        job = json.loads(line)
        pid = os.fork()
        if pid == 0:  # the child: run the stage, exit without running parent's atexit hooks
            code = 0
            try:
                os.environ.update(job.get("env") or {})
                _run(job)
            except BaseException:
                traceback.print_exc()
                code = 1
            finally:
                sys.stderr.flush()
                os._exit(code)
        _, status, usage = os.wait4(pid, 0)
        print(json.dumps({"maxrss_kb": usage.ru_maxrss,
                          "status": os.waitstatus_to_exitcode(status)}), flush=True)


if __name__ == "__main__":
    main()
