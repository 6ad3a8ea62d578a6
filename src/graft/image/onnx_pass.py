"""The frozen pass on ONNX Runtime, where it is exact enough and faster: on a 2-core Xeon it runs the folded
stages of EfficientNet-Lite0 on one thread ~1.2x faster than torch (109-114 against 91 img/s, 2026-12-07;
BENCHMARKS.md section 12). Whether it is faster on another CPU is measured there, once (below).

The folded frozen part is exported once (:func:`graft.core.onnx_graph.torch_onnx`) and kept in
``default_cache_dir()/onnx/``, named by a digest of its structure and weights, so the next run of the same
backbone skips the export. Before a pass uses it, ONNX Runtime's activations of the pass's first images must
pass the export's parity gate against torch's (:func:`graft.core.onnx_graph.close_enough`); a graph that
fails, or a network that does not export, leaves the pass on torch. Then both runtimes time those images on
the pass's thread count, and the faster one runs the pass; the rates are kept beside the graph, per CPU, so
this is measured once. The run's metrics say which ran and why. ``GRAFT_FROZEN_RUNTIME=torch`` keeps every
pass on torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from graft.core.onnx_graph import OPSET, close_enough, torch_onnx
from graft.fileio import atomic_write_bytes, atomic_write_json, default_cache_dir
from graft.perf import cpu_description, torch_threads

OPT_OUT = "GRAFT_FROZEN_RUNTIME"
INPUT, OUTPUT = "input", "activations"
# Images per session call in each worker: ONNX Runtime runs Lite0 faster at 8 than at 16 on one thread (114
# against 109 img/s) and holds half the activations.
ORT_BATCH = 8
# A pass pays for the export (~0.7 s, once per backbone and size on a machine) from about this many images,
# and for checking a kept graph against torch (~0.2 s) from about this many (the runtime saves ~20% of the
# forward pass, ~1 ms an image on 2 cores).
EXPORT_FROM_IMAGES, REUSE_FROM_IMAGES = 500, 200
# Timed calls of each runtime on the gate's images when a CPU is first measured (the shortest counts).
TIMED_RUNS = 3


class OnnxPass:
    """An exported frozen part, run by ONNX Runtime on ``threads`` threads. Each process opens its own
    session on first use (a session does not survive a fork into the pass's worker processes)."""

    def __init__(self, path: Path, threads: int):
        self.path = path
        self.threads = threads
        self._session = None
        self._pid: int | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "threads": self.threads, "_session": None, "_pid": None}

    def run(self, inputs: np.ndarray) -> np.ndarray:
        if self._session is None or self._pid != os.getpid():
            self._session, self._pid = _session(self.path, self.threads), os.getpid()
        return self._session.run([OUTPUT], {INPUT: np.ascontiguousarray(inputs, dtype=np.float32)})[0]

    def close(self) -> None:
        """Drop this process's session (its memory), e.g. before worker processes that open their own."""
        self._session = self._pid = None


def onnx_pass(
    folded: nn.Module, examples: torch.Tensor, threads: int, images: int | None = None
) -> tuple[OnnxPass | None, dict[str, Any]]:
    """``folded`` (the frozen part, BatchNorm folded, in eval mode) on ONNX Runtime if its activations of
    ``examples`` (real inputs, normalised) pass the parity gate; else None. With a note for the run's metrics.
    ``images``: how many the pass will run, when known (too few do not pay for the export or the check)."""
    if os.environ.get(OPT_OUT, "").lower() == "torch":
        return None, {"runtime": "torch", "why": f"{OPT_OUT}=torch"}
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return None, {"runtime": "torch", "why": "onnxruntime is not installed"}
    began = time.perf_counter()
    path = default_cache_dir() / "onnx" / f"{_digest(folded, examples)}.onnx"
    exported = not path.is_file()
    if images is not None and images < (EXPORT_FROM_IMAGES if exported else REUSE_FROM_IMAGES):
        return None, {"runtime": "torch", "why": f"{images} images are too few to pay for ONNX Runtime"}
    if exported:
        try:
            atomic_write_bytes(path, torch_onnx(folded, examples[:1], [OUTPUT], input_name=INPUT))
        except Exception as error:  # noqa: BLE001  (any exporter failure: the pass runs on torch)
            return None, {
                "runtime": "torch",
                "why": f"the frozen part does not export to ONNX ({type(error).__name__})",
            }
    candidate = OnnxPass(path, threads)
    with torch.inference_mode():
        want = folded(examples).float().contiguous().numpy()
    try:
        have = candidate.run(examples.numpy())
    except Exception as error:  # noqa: BLE001  (a graph ONNX Runtime cannot run: the pass runs on torch)
        return None, {"runtime": "torch", "why": f"ONNX Runtime cannot run the exported graph ({type(error).__name__})"}
    difference = float(np.abs(have - want).max()) if have.shape == want.shape else float("inf")
    note = {"max_abs_diff": difference, "checked_on": len(examples), "exported": exported}
    if not close_enough(have, want):
        candidate.close()
        return None, {"runtime": "torch", "why": "ONNX Runtime's activations fail the parity gate", **note}
    rates = _rates(folded, candidate, examples, threads)
    candidate.close()
    note |= {"images_per_second": rates, "seconds": time.perf_counter() - began}
    if rates["onnxruntime"] <= rates["torch"]:
        return None, {"runtime": "torch", "why": "torch is faster on this CPU", **note}
    return candidate, {"runtime": "onnxruntime", **note}


def _rates(folded: nn.Module, candidate: OnnxPass, examples: torch.Tensor, threads: int) -> dict[str, float]:
    """Images a second of torch and of ONNX Runtime on ``examples`` with ``threads`` threads each, as the pass
    would run them: measured once per CPU, graph and thread count, and kept beside the graph."""
    memo = candidate.path.with_name(f"{candidate.path.stem}-{_cpu_tag()}-{threads}t.json")
    try:
        known = json.loads(memo.read_text())
        if set(known) == {"torch", "onnxruntime"} and all(isinstance(v, (int, float)) for v in known.values()):
            return known
    except (OSError, ValueError):
        pass
    with torch_threads(threads), torch.inference_mode():
        torch_seconds = _best_of(TIMED_RUNS, lambda: folded(examples))
    inputs = examples.numpy()
    ort_seconds = _best_of(TIMED_RUNS, lambda: candidate.run(inputs))
    rates = {"torch": len(examples) / torch_seconds, "onnxruntime": len(examples) / ort_seconds}
    atomic_write_json(memo, rates)
    return rates


def _best_of(runs: int, work) -> float:
    """The shortest of ``runs`` timed calls of ``work``, after one untimed call (first calls prepare kernels)."""
    work()
    seconds = []
    for _ in range(runs):
        began = time.perf_counter()
        work()
        seconds.append(time.perf_counter() - began)
    return min(seconds)


def _cpu_tag() -> str:
    """Names the CPU a speed was measured on: its name, cores and vector instructions."""
    described = cpu_description()
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:12]


def _session(path: Path, threads: int):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # the other core decodes
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _digest(folded: nn.Module, examples: torch.Tensor) -> str:
    """Names the exported file: the module's structure, its weights, the input's shape, torch and the opset."""
    digest = hashlib.sha256(f"{torch.__version__} opset{OPSET} {tuple(examples.shape[1:])}\n{folded}".encode())
    for name, tensor in folded.state_dict().items():
        digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:32]
