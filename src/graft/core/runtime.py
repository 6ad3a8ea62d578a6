"""Where a run's tensors live and in what precision: the device, chosen once (``--device
auto|cpu|cuda[:N]``), and ``--precision`` (bf16 mixed precision for the trainable part's forward pass),
used by the loop, evaluation and prediction alike, so no code assumes the CPU."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any

import torch

from graft.core.distributed import SINGLE, Processes, processes
from graft.errors import ConfigError


def resolve_device(name: str | None) -> torch.device:
    """``auto`` (or None): CUDA when torch sees a GPU, else the CPU; ``cpu``; ``cuda`` or ``cuda:N``."""
    name = "auto" if name is None else str(name).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device must be auto, cpu, cuda or cuda:N; got '{name}'") from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device must be auto, cpu, cuda or cuda:N; got '{name}'")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"--device {name}: torch sees no CUDA GPU on this machine", hint="use --device cpu (or auto)"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {name}: this machine has {torch.cuda.device_count()} GPU(s), numbered from 0")
    return device


def resolve_precision(name: str | None, device: torch.device) -> str:
    """``auto`` (or None): bf16 on a GPU that computes in it, else fp32 (on most CPUs bf16 is emulated,
    slower than fp32); ``fp32``; ``bf16`` anywhere torch's autocast supports it (CPU and CUDA)."""
    if name in (None, "auto"):
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    return name


@dataclass(frozen=True)
class Runtime:
    """The device a model and its batches run on, the precision of the trainable part's forward pass, and
    the run's processes (:mod:`graft.core.distributed`)."""

    device: torch.device = torch.device("cpu")
    processes: Processes = SINGLE
    precision: str = "fp32"

    @classmethod
    def create(cls, device: str | None = None, precision: str | None = None) -> Runtime:
        resolved = resolve_device(device)
        joined = processes(resolved)
        if joined.distributed and resolved.type == "cuda" and resolved.index is None:  # one GPU per local process
            resolved = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return cls(resolved, joined, resolve_precision(precision, resolved))

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    def describe(self) -> dict[str, Any]:
        """Where the run ran, for its metrics and summary."""
        return {"device": str(self.device), "precision": self.precision, "processes": self.processes.world}

    def autocast(self) -> contextlib.AbstractContextManager:
        """The context a forward pass (and its loss) runs in: bf16 autocast, or nothing. Weights, their
        gradients and the optimizer stay fp32 and bf16 has fp32's range, so no loss scaling is needed."""
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def put(self, batch: Any) -> Any:
        """A tensor, or a mapping / sequence of them, on this runtime's device."""
        if isinstance(batch, torch.Tensor):
            return batch if batch.device == self.device else batch.to(self.device, non_blocking=self.is_cuda)
        if isinstance(batch, dict):
            return {key: self.put(value) for key, value in batch.items()}
        if isinstance(batch, (list, tuple)):
            return type(batch)(self.put(value) for value in batch)
        return batch


CPU = Runtime()
