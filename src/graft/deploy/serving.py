"""A trained model ready to answer requests, whichever form it comes in: a run folder (run by torch) or a
file written by ``graft export`` (run by ONNX Runtime, no training stack needed). Both decode and
preprocess an image exactly as ``graft predict`` does and answer in the shape of ``graft predict --json``.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from graft.errors import ConfigError, GraftError, RunFolderError


@dataclass
class ServedModel:
    """What the server needs of a model: its description, how to turn an image into its input, and a
    function from a batch of inputs to named outputs (probabilities (n, classes), or values (n,))."""

    source: str
    engine: str  # "torch" or "onnxruntime"
    labels: dict[str, list[str]]  # each output's class names; empty for a regression output
    preprocessing: Any
    description: dict[str, Any]
    run_batch: Any = field(repr=False)
    _transform: Any = field(init=False, repr=False)  # the preprocessing's, made once

    def __post_init__(self):
        self._transform = self.preprocessing.eval_transform()

    def info(self) -> dict[str, Any]:
        """Labels, preprocessing and version: what ``GET /info`` answers."""
        from graft import __version__

        return {
            "model": self.source,
            "engine": self.engine,
            "labels": self.labels,
            "preprocessing": self.preprocessing.to_dict(),
            "graft_version": __version__,
            **self.description,
        }

    def pixels(self, data: bytes, max_pixels: int) -> np.ndarray:
        """One uploaded image as the model's input (C, H, W); :class:`graft.image.checking.ImageProblem`
        with the reason when it is not a usable image."""
        from graft.image.checking import open_rgb

        return self._transform(open_rgb(io.BytesIO(data), max_pixels=max_pixels)).numpy()

    def answers(self, outputs: dict[str, np.ndarray]) -> list[dict[str, Any]]:
        """Per example: ``{"label", "prob", "probs"}`` for a classifier, ``{"tasks": {name: ...}}`` for
        several outputs (a regression output as ``{"value"}``), as ``graft predict --json``."""
        from graft.core.evaluation import answer

        count = len(next(iter(outputs.values())))
        per_output = [
            {
                name: answer(values[row], self.labels[name]) if values.ndim == 2 else {"value": float(values[row])}
                for name, values in outputs.items()
            }
            for row in range(count)
        ]
        if list(outputs) == ["probabilities"]:
            return [entry["probabilities"] for entry in per_output]
        return [{"tasks": entry} for entry in per_output]


ENGINES = ("auto", "torch", "onnxruntime")


def load_served(path: str | os.PathLike, engine: str = "auto") -> ServedModel:
    """A run folder or an exported ``.onnx`` file, ready to serve (image models). ``engine``: what runs the
    model; ``auto`` is ONNX Runtime when it is installed (for a run folder: its export, made in memory and
    held to the same parity gate as ``graft export``), else torch."""
    if engine not in ENGINES:
        raise ConfigError(f"--engine must be one of {', '.join(ENGINES)}; got '{engine}'")
    location = Path(path)
    if location.is_file():
        if engine == "torch":
            raise ConfigError(
                f"'{path}' is an exported ONNX file, which runs on onnxruntime",
                hint="leave out --engine, or serve the run folder with --engine torch",
            )
        return _onnx_model(str(location), str(location))
    if not location.is_dir():
        raise ConfigError(
            f"'{path}' does not exist", hint="give a folder written by graft train, or a file written by graft export"
        )
    if engine == "torch" or (engine == "auto" and importlib.util.find_spec("onnxruntime") is None):
        return _run_model(location)
    return _exported_run(location, required=engine == "onnxruntime")


def _exported_run(folder: Path, required: bool) -> ServedModel:
    """The run folder's model on ONNX Runtime, exported in memory through the parity gate; when the export
    fails the gate and ``auto`` chose it, the run on torch instead (with a warning saying why)."""
    from graft.api import load
    from graft.deploy.onnx import ExportError, gated_onnx

    trained = load(folder)
    _refuse_modality(trained.modality.name, folder)
    try:
        data, _ = gated_onnx(trained)
    except ExportError as error:
        if required:
            raise
        from graft.console import stderr

        stderr.print(f"[yellow]serving {folder} on torch[/]: {error.message}", highlight=False)
        return _run_model(folder)
    return _onnx_model(str(folder), data)


def _refuse_modality(modality: str, source: Path) -> None:
    if modality != "image":
        raise ConfigError(
            f"'{source}' is a {modality} model; graft serve answers images so far",
            hint="use graft predict for it, or the exported ONNX file in your own code",
        )


def _run_model(folder: Path) -> ServedModel:
    import torch

    from graft.api import load
    from graft.deploy.outputs import UserOutputs, output_labels, output_names

    trained = load(folder)
    _refuse_modality(trained.modality.name, folder)
    model = trained.modality.inference_form(UserOutputs(trained).eval(), trained.example_input()).eval()
    names = output_names(trained)
    lock = threading.Lock()  # one forward pass at a time: torch already uses every core for one

    def run_batch(batch: np.ndarray) -> dict[str, np.ndarray]:
        with lock, torch.inference_mode():
            outputs = model(torch.from_numpy(batch))
        outputs = (outputs,) if isinstance(outputs, torch.Tensor) else outputs
        return {name: output.numpy() for name, output in zip(names, outputs)}

    return ServedModel(
        source=str(folder),
        engine="torch",
        labels=output_labels(trained),
        preprocessing=trained.preprocessing,
        description={
            "kind": str(trained.config.get("kind", "classifier")),
            "backbone": str(trained.config["backbone"]["name"]),
        },
        run_batch=run_batch,
    )


def _onnx_model(source: str, model: str | bytes) -> ServedModel:
    """A model on ONNX Runtime from an exported file's path or bytes; its metadata says what it is."""
    try:
        import onnxruntime
    except ImportError:
        raise ConfigError("serving an ONNX file needs onnxruntime", hint="pip install 'graft[export]'") from None
    from graft.image.preprocessing import Preprocessing

    try:
        session = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own exception types for a bad file
        raise RunFolderError(
            f"'{source}' is not a model ONNX Runtime can load ({str(error).splitlines()[0]})"
        ) from None
    metadata = session.get_modelmeta().custom_metadata_map
    try:
        labels = json.loads(metadata["labels"])
        names = json.loads(metadata["outputs"])
        preprocessing = Preprocessing.from_dict(json.loads(metadata["preprocessing"]))
    except (KeyError, ValueError, GraftError):
        raise RunFolderError(
            f"'{source}' carries no graft metadata (labels, outputs, preprocessing)",
            hint="serve a file written by graft export, or the run folder itself",
        ) from None
    _refuse_modality(metadata.get("modality", "image"), Path(source))

    def run_batch(batch: np.ndarray) -> dict[str, np.ndarray]:
        return dict(zip(names, session.run(names, {"input": batch})))

    return ServedModel(
        source=source,
        engine="onnxruntime",
        labels=labels,
        preprocessing=preprocessing,
        description={key: metadata[key] for key in ("kind", "backbone") if key in metadata},
        run_batch=run_batch,
    )
