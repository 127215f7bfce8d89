"""Device choice: `auto` means CUDA when present, else CPU. bf16 autocast on CUDA, fp32 on CPU."""

import contextlib

import torch

from pipeline.errors import PipelineError


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise PipelineError(f"--device {name} asked for CUDA but none is available; use "
                            "--device auto or cpu")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise PipelineError(f"--device {name!r} is not a device: use auto, cpu or cuda[:N]"
                            ) from exc


def autocast(device: torch.device):
    """bf16 autocast on CUDA; a no-op context on CPU where fp32 is both faster and exact."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
