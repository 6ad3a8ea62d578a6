"""``graft export RUN --format onnx``: one ONNX file that carries its preprocessing, labels and graft
version in its metadata, written only if it passes a **parity gate**: on real examples of the run's own
valid split, ONNX Runtime's outputs must match torch's (``numpy.allclose`` with rtol 1e-3, atol 1e-5,
the de-facto tolerance) and agree on every top-1 class. A file that fails is never written.

What is exported is the modality's ONNX graph of the model (for images: the export form, BatchNorm
folded into the convolutions and the static padding as explicit pads; for audio: the package's log-mel
and embedding graphs chained with the trained layers) after ONNX Runtime's basic graph rewrites; the
gate compares the file with the run's own model, not with that form.

Outputs: a classifier gives ``probabilities`` (batch, classes); a multi-task run gives one output per
task, ``<task>`` probabilities or values in the task's units. The batch axis is dynamic; the image
size (or clip length) is the run's (graft's static "same" padding is what makes an image export exact).
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from graft.core.inputs import make_loader
from graft.core.modality import FLOAT_ONLY
from graft.core.onnx_graph import ATOL, RTOL, close_enough, torch_onnx
from graft.core.run_files import MANIFEST, first_split
from graft.core.runs import TrainedRun
from graft.deploy.outputs import UserOutputs, output_labels, output_names
from graft.errors import ConfigError, GraftError
from graft.fileio import atomic_write_bytes, read_json


class ExportError(GraftError, RuntimeError):
    """The exported model does not behave like the run's model; nothing was written."""

    exit_code = 7


def export_onnx(
    trained: TrainedRun,
    out: str | os.PathLike,
    samples: int = 64,
    batch_size: int = 16,
    int8: bool = False,
    max_drop: float = 1.0,
) -> dict[str, Any]:
    """Export ``trained`` to ``out`` after the parity gate; returns what was written and measured. With
    ``int8``, the file is statically quantised (per channel, calibrated on the run's training images) and
    written only if its accuracy on the valid split is at most ``max_drop`` points below fp32's."""
    if not 1 <= samples <= 100_000:
        raise ConfigError(f"--samples must be from 1 to 100,000; got {samples}")
    if not 0 <= max_drop <= 100:
        raise ConfigError(f"--max-drop must be from 0 to 100 (accuracy points); got {max_drop}")
    began = time.perf_counter()
    data, result = gated_onnx(trained, samples, batch_size)
    if int8:
        data, result["int8"] = _int8(data, trained, samples, batch_size, max_drop)
    atomic_write_bytes(out, data)
    return {"file": str(out), "bytes": len(data), **result, "seconds": time.perf_counter() - began}


def gated_onnx(trained: TrainedRun, samples: int = 64, batch_size: int = 16) -> tuple[bytes, dict[str, Any]]:
    """The run's model as ONNX bytes (with graft's metadata) that passed the parity gate on up to ``samples``
    valid examples, and what was measured; :class:`ExportError` when it does not pass."""
    wrapped = UserOutputs(trained).eval()
    names = output_names(trained)
    graph = trained.modality.onnx_graph(wrapped, trained.example_input(), names, torch_onnx)
    data = _with_metadata(_optimised(graph), trained, names)
    parity = _parity(wrapped, data, trained, names, samples, batch_size)
    if not parity["passed"]:
        raise ExportError(
            f"the ONNX export does not match the run's model on {parity['n']} valid examples (max abs difference "
            f"{parity['max_abs_diff']:.2e}, top-1 agreement {parity['top1_agreement']:.2%}); nothing was written",
            hint="report it with the run's config.json; the run itself is unaffected",
        )
    return data, {"format": "onnx", "outputs": names, "parity": parity}


def _int8(
    fp32: bytes, trained: TrainedRun, samples: int, batch_size: int, max_drop: float
) -> tuple[bytes, dict[str, Any]]:
    """Static per-channel int8 quantisation calibrated on the run's training images, and its accuracy (every
    classification task's; a regression task's mean absolute error), size and speed against fp32 on the
    valid split; refused when a classification accuracy drops by more than ``max_drop`` points."""
    import tempfile

    import onnxruntime
    from onnxruntime.quantization import CalibrationDataReader

    onnxruntime.set_default_logger_severity(3)  # errors only: the quantiser's notes are not the user's business

    manifest = read_json(Path(trained.path) / MANIFEST)
    tasks = getattr(trained, "tasks", None)
    names, classes = output_names(trained), output_labels(trained)

    def label(value):  # a classifier's class index, or one value per task (NaN: not labelled)
        return int(value) if tasks is None else [float("nan") if v is None else float(v) for v in value]

    calibration = _present(trained, [(path, _unlabelled(trained)) for path, _ in manifest["splits"]["train"][:samples]])
    valid_split = first_split(manifest, "valid", "test")
    valid = _present(trained, [(path, label(value)) for path, value in manifest["splits"][valid_split]])
    examples = trained.modality.examples

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(make_loader(examples(calibration, trained.preprocessing, augment=False), batch_size))

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {"input": batch[0].numpy()}

    import onnx

    float_only = [node.name for node in onnx.load_from_string(fp32).graph.node if node.name.startswith(FLOAT_ONLY)]
    with tempfile.TemporaryDirectory() as folder:
        source, target = Path(folder) / "fp32.onnx", Path(folder) / "int8.onnx"
        source.write_bytes(fp32)
        quiet_root = logging.getLogger()  # the quantiser notes skipped axes on the root logger
        level = quiet_root.level
        quiet_root.setLevel(logging.ERROR)
        try:
            _quantise(source, target, Reader(), trained.modality.int8_operators, float_only)
        finally:
            quiet_root.setLevel(level)
        quantised = target.read_bytes()
    figures, scores_of = {}, {}
    for version, model in (("fp32", fp32), ("int8", quantised)):
        session = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
        outputs, truth, seconds = {name: [] for name in names}, [], 0.0
        for inputs, labels in make_loader(examples(valid, trained.preprocessing, augment=False), batch_size):
            began = time.perf_counter()
            for name, values in zip(names, session.run(names, {"input": inputs.numpy()})):
                outputs[name].append(values)
            seconds += time.perf_counter() - began
            truth.append(labels.numpy().reshape(len(labels), -1))
        truth = np.concatenate(truth)
        scores = scores_of[version] = {
            name: _score(np.concatenate(outputs[name]), truth[:, index], classes[name])
            for index, name in enumerate(names)
        }
        figures[version] = {
            **(scores["probabilities"] if tasks is None else {"tasks": scores}),
            "ms_per_image": 1000 * seconds / len(truth),
            "bytes": len(model),
        }
    drops = {
        name: 100 * (scores_of["fp32"][name]["accuracy"] - scores_of["int8"][name]["accuracy"])
        for name in names
        if classes[name]
    }
    drop = max(drops.values(), default=0.0)
    report = {
        "split": valid_split,
        "n": len(valid),
        **figures,
        "accuracy_drop_points": drop,
        "max_drop_points": max_drop,
    }
    if tasks is not None:
        report["task_drop_points"] = drops
    if drop > max_drop:
        worst = max(drops, key=drops.get)
        if tasks is None:
            where = f" ({figures['fp32']['accuracy']:.2%} -> {figures['int8']['accuracy']:.2%})"
        else:
            where = f" on task {worst}"
        raise ExportError(
            f"int8 loses {drop:.1f} accuracy points on the {valid_split} split{where}, more than --max-drop "
            f"{max_drop}; nothing was written",
            hint="export without --int8, or allow the drop with a larger --max-drop",
        )
    return quantised, report


def _quantise(source: Path, target: Path, reader, operators, float_only: list[str]) -> None:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    quantize_static(
        str(source),
        str(target),
        reader,
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        op_types_to_quantize=operators,
        nodes_to_exclude=float_only,
    )


def _score(values: np.ndarray, truth: np.ndarray, classes: list[str]) -> dict[str, float]:
    """Accuracy of class probabilities, or mean absolute error of values, on the labelled rows."""
    labelled = ~np.isnan(truth) & (truth >= 0) if classes else ~np.isnan(truth)
    if not labelled.any():
        return {"accuracy": float("nan")} if classes else {"mae": float("nan")}
    if classes:
        return {"accuracy": float((values[labelled].argmax(1) == truth[labelled]).mean())}
    return {"mae": float(np.abs(values[labelled] - truth[labelled]).mean())}


def _optimised(data: bytes) -> bytes:
    """The graph after ONNX Runtime's basic, hardware-independent rewrites (constants folded, paddings fused
    into convolutions), as its quantisation tools advise: the file loads faster and quantises better."""
    import tempfile

    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as folder:
        source, target = Path(folder) / "exported.onnx", Path(folder) / "optimised.onnx"
        source.write_bytes(data)
        quant_pre_process(str(source), str(target), skip_symbolic_shape=True)
        return target.read_bytes()


def _with_metadata(data: bytes, trained: TrainedRun, names: list[str]) -> bytes:
    import onnx

    from graft import __version__

    model = onnx.load_from_string(data)
    labels = output_labels(trained)
    entries = {
        "graft_version": __version__,
        "kind": str(trained.config.get("kind", "classifier")),
        "modality": str(trained.config.get("modality", "image")),
        "backbone": str(trained.config["backbone"]["name"]),
        "preprocessing": json.dumps(trained.preprocessing.to_dict()),
        "labels": json.dumps(labels),
        "outputs": json.dumps(names),
    }
    for key, value in entries.items():
        model.metadata_props.add(key=key, value=value)
    return model.SerializeToString()


def _unlabelled(trained: TrainedRun) -> int | list[float]:
    """The label of an example read for its inputs only: no class (-1), or no value for any task (NaN)."""
    tasks = getattr(trained, "tasks", None)
    return -1 if tasks is None else [float("nan")] * len(tasks)


def _present(trained: TrainedRun, items: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """The run's recorded ``items`` whose examples are still there (files not deleted since)."""
    gone = set(trained.modality.missing([path for path, _ in items]))
    return [(path, label) for path, label in items if path not in gone]


def _parity(
    wrapped: nn.Module, data: bytes, trained: TrainedRun, names: list[str], samples: int, batch_size: int
) -> dict[str, Any]:
    import onnxruntime

    manifest = read_json(Path(trained.path) / MANIFEST)
    split = first_split(manifest, "valid", "test")
    items = _present(trained, [(path, _unlabelled(trained)) for path, _ in manifest["splits"][split][:samples]])
    if not items:
        raise ExportError(
            f"the run's {split} examples are gone; the parity gate needs real ones", hint="restore the data"
        )
    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    loader = make_loader(trained.modality.examples(items, trained.preprocessing, augment=False), batch_size)
    worst, agree, compared, close = 0.0, 0, 0, True
    for inputs, _ in loader:
        with torch.no_grad():
            expected = wrapped(inputs)
        expected = [expected] if isinstance(expected, torch.Tensor) else list(expected)
        got = session.run(names, {"input": inputs.numpy()})
        for want, have in zip(expected, got):
            want = want.numpy()
            worst = max(worst, float(np.abs(want - have).max()))
            close = close and close_enough(have, want)
            if want.ndim == 2:
                agree += int((want.argmax(1) == have.argmax(1)).sum())
                compared += len(want)
    agreement = agree / compared if compared else 1.0
    return {
        "split": split,
        "n": len(items),
        "max_abs_diff": worst,
        "top1_agreement": agreement,
        "rtol": RTOL,
        "atol": ATOL,
        "passed": close and agreement == 1.0,
    }
