"""torch modules as ONNX graphs, and how close ONNX Runtime must come to torch: shared by ``graft export``
(:mod:`graft.deploy.onnx`) and the frozen pass on ONNX Runtime (:mod:`graft.image.onnx_pass`)."""

from __future__ import annotations

import io
import warnings

import numpy as np
import torch
from torch import nn

# The parity gate's tolerance (numpy.allclose): the de-facto one for an exported network.
RTOL, ATOL = 1e-3, 1e-5
OPSET = 17


def torch_onnx(module: nn.Module, example: torch.Tensor, names: list[str], input_name: str = "input") -> bytes:
    """``module`` exported by torch's exporter as graft uses it everywhere: a dynamic batch axis, opset 17."""
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer notes about the static padding's constant shape check
        torch.onnx.export(
            module.eval(),
            (example,),
            buffer,
            input_names=[input_name],
            output_names=names,
            dynamic_axes={input_name: {0: "batch"}, **{name: {0: "batch"} for name in names}},
            opset_version=OPSET,
            dynamo=False,
        )
    return buffer.getvalue()


def close_enough(have: np.ndarray, want: np.ndarray) -> bool:
    """Whether ONNX Runtime's ``have`` passes the parity gate against torch's ``want``."""
    return have.shape == want.shape and bool(np.allclose(have, want, rtol=RTOL, atol=ATOL))
