"""The speech backbone as ONNX: the package's log-mel and embedding graphs with what graft does between
them in numpy (the ``dB / 10 + 2`` scaling, the 76-frame windows every 8 frames) written as ONNX nodes,
so an exported audio run is one file from samples to probabilities, with no Python around it."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def scaled_log_mel(graph: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    """Samples ``(batch, samples)`` -> log-mel frames ``(batch, frames, 32)`` scaled as the embedding expects."""
    raw = helper.make_tensor_value_info("raw", TensorProto.FLOAT, ["batch", 1, "frames", 32])
    glue = _model(
        [
            helper.make_node("Squeeze", ["raw", "one"], ["squeezed"]),
            helper.make_node("Div", ["squeezed", "ten"], ["scaled"]),
            helper.make_node("Add", ["scaled", "two"], ["mel"]),
        ],
        [_constant("one", np.array([1], np.int64)), _constant("ten", np.float32(10)), _constant("two", np.float32(2))],
        raw,
        helper.make_tensor_value_info("mel", TensorProto.FLOAT, ["batch", "frames", 32]),
        opset,
    )
    return chain([graph, glue])


def windowed_embedding(
    graph: onnx.ModelProto, starts: np.ndarray, frames: int, size: int, opset: int
) -> onnx.ModelProto:
    """Log-mel frames ``(batch, frames, bands)`` -> embeddings ``(batch, len(starts), size)``: the windows of
    ``frames`` frames beginning at ``starts`` gathered, embedded in one batch, and put back per clip."""
    bands = graph.graph.input[0].type.tensor_type.shape.dim[2].dim_value
    indices = (np.asarray(starts)[:, None] + np.arange(frames)[None, :]).astype(np.int64)
    before = _model(
        [
            helper.make_node("Gather", ["mel", "indices"], ["windows"], axis=1),
            helper.make_node("Reshape", ["windows", "window_shape"], ["batched"]),
        ],
        [_constant("indices", indices), _constant("window_shape", np.array([-1, frames, bands, 1], np.int64))],
        helper.make_tensor_value_info("mel", TensorProto.FLOAT, ["batch", "frames", bands]),
        helper.make_tensor_value_info("batched", TensorProto.FLOAT, ["windows", frames, bands, 1]),
        opset,
    )
    after = _model(
        [helper.make_node("Reshape", ["embedded", "clip_shape"], ["embeddings"])],
        [_constant("clip_shape", np.array([-1, len(starts), size], np.int64))],
        helper.make_tensor_value_info("embedded", TensorProto.FLOAT, ["windows", 1, 1, size]),
        helper.make_tensor_value_info("embeddings", TensorProto.FLOAT, ["batch", len(starts), size]),
        opset,
    )
    return chain([before, graph, after])


def chain(
    models: list[onnx.ModelProto], prefixes: list[str] | None = None, input_name: str | None = None
) -> onnx.ModelProto:
    """``models`` run one after another (each one's first output feeds the next one's only input) as one
    model, the names in each given its prefix (default ``s<index>/``); its input is renamed ``input_name``
    when given, its outputs keep the last model's names."""
    ir_version = max(model.ir_version for model in models)
    prefixes = prefixes or [f"s{index}/" for index in range(len(models))]
    joined = None
    for index, (model, prefix) in enumerate(zip(models, prefixes)):
        last = index == len(models) - 1
        model = onnx.compose.add_prefix(model, prefix, rename_outputs=not last)
        model.ir_version = ir_version
        if joined is None:
            joined = model
            continue
        joined = onnx.compose.merge_models(
            joined, model, io_map=[(joined.graph.output[0].name, model.graph.input[0].name)]
        )
    versions: dict[str, int] = {}
    for entry in joined.opset_import:  # merging lists a domain once per model; ONNX tools want it once
        versions[entry.domain] = max(entry.version, versions.get(entry.domain, 0))
    del joined.opset_import[:]
    joined.opset_import.extend(helper.make_opsetid(domain, version) for domain, version in versions.items())
    if input_name is not None:
        old = joined.graph.input[0].name
        joined.graph.input[0].name = input_name
        for node in joined.graph.node:
            node.input[:] = [input_name if name == old else name for name in node.input]
    return joined


def _model(nodes, initializers, inputs, output, opset: int) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "glue", [inputs], [output], initializer=initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _constant(name: str, value: np.ndarray | np.generic) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value), name)
