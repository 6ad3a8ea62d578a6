"""``graft studio``: a local page that trains, as Teachable Machine does, but with graft's transfer modes and
activation cache. Make classes, drop examples in each, press Train, watch the learning curve, read the
evaluation (confusion matrix, the mistakes with their images), try the model on new images, download the
run folder or its ONNX export.

Everything lands on disk as graft would write it by hand: examples in ``FOLDER/data/<class>/`` (so
``graft train FOLDER/data`` reproduces a studio run) and runs in ``FOLDER/runs/<time>/``, normal run folders.
Training runs in a background thread of the server; the page polls ``GET /api/state``.
"""

from __future__ import annotations  # FastAPI reads the endpoints' annotations from this module's names

import asyncio
import hashlib
import io
import os
import re
import shutil
import threading
import time
import zipfile
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, File, UploadFile
from fastapi.responses import FileResponse, Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from graft.core.run_files import CONFIG, HISTORY, METRICS
from graft.deploy.server import (
    Batcher,
    Limits,
    graft_app,
    label_uploads,
    listen,
    require_file_count,
)
from graft.fileio import atomic_write_bytes, read_json

CLASS_NAME = re.compile(r"^[^/\\.\x00-\x1f][^/\\\x00-\x1f]{0,63}$")  # a folder name: no separators or leading dot
MIN_EXAMPLES = 2  # per class: graft needs one to train on and one to validate with


class TrainRequest(BaseModel):
    mode: str = Field("extract", pattern="^(extract|finetune|auto)$", description="graft train --mode")
    epochs: int | None = Field(None, ge=1, le=200, description="default: the mode's")


class Studio:
    """The studio's state: its folder, the training job, and the model of the last finished run."""

    def __init__(self, folder: Path, limits: Limits, train_options: dict[str, Any]):
        self.folder, self.limits, self.train_options = folder, limits, train_options
        self.data, self.runs = folder / "data", folder / "runs"
        self.job: dict[str, Any] = {"state": "idle"}
        self.lock = threading.Lock()
        self.served = None
        self.batcher: Batcher | None = None
        self.worker: asyncio.Task | None = None

    def classes(self) -> dict[str, int]:
        if not self.data.is_dir():
            return {}
        return {
            folder.name: sum(1 for f in folder.iterdir() if f.is_file())
            for folder in sorted(self.data.iterdir())
            if folder.is_dir() and not folder.name.startswith(".")
        }

    def state(self) -> dict[str, Any]:
        job = dict(self.job)
        run = Path(job["run"]) if "run" in job else None
        history = read_json(run / HISTORY) if run and (run / HISTORY).is_file() else []
        return {"classes": self.classes(), "job": job, "history": history, "limits": asdict(self.limits)}

    def add_examples(self, name: str, uploads: list[tuple[str, bytes]]) -> dict[str, Any]:
        """Keep each upload that is a usable image in ``data/<name>/`` (named by its content, so the same
        picture twice is kept once); list the others with the reason."""
        from graft.image.checking import ImageProblem, open_rgb

        if not CLASS_NAME.match(name) or name != name.strip():
            raise HTTPException(422, f"class name {name!r} cannot be a folder name")
        folder = self.data / name
        folder.mkdir(parents=True, exist_ok=True)
        added, skipped = 0, []
        for filename, data in uploads:
            try:
                image = open_rgb(io.BytesIO(data), max_pixels=self.limits.max_pixels)
            except ImageProblem as problem:
                skipped.append({"image": filename, "error": str(problem)})
                continue
            suffix = Path(filename).suffix.lower()
            suffix = suffix if suffix in {".jpg", ".jpeg", ".png"} else ""
            target = folder / (hashlib.sha256(data).hexdigest()[:16] + (suffix or ".png"))
            if not target.exists():
                if not suffix:  # another format: stored as PNG, which every reader of the folder takes
                    buffer = io.BytesIO()
                    image.save(buffer, format="PNG")
                    data = buffer.getvalue()
                atomic_write_bytes(target, data)
                added += 1
        return {"class": name, "added": added, "skipped": skipped, "count": self.classes().get(name, 0)}

    def start_training(self, request: TrainRequest) -> dict[str, Any]:
        classes = self.classes()
        if len(classes) < 2:
            raise HTTPException(422, f"make at least two classes first (there are {len(classes)})")
        few = [name for name, count in classes.items() if count < MIN_EXAMPLES]
        if few:
            raise HTTPException(422, f"give every class at least {MIN_EXAMPLES} examples; too few in: {', '.join(few)}")
        with self.lock:
            if self.job["state"] == "training":
                raise HTTPException(409, "a model is training already; wait for it to finish")
            run = self.runs / time.strftime("%Y%m%d-%H%M%S")
            self.job = {"state": "training", "run": str(run), "mode": request.mode, "started": time.time()}
        threading.Thread(target=self._train, args=(run, request), daemon=True, name="graft-studio-train").start()
        return dict(self.job)

    def _train(self, run: Path, request: TrainRequest) -> None:
        import graft
        from graft.deploy.serving import load_served
        from graft.errors import GraftError

        try:
            summary = graft.train(
                self.data, run, mode=request.mode, epochs=request.epochs, quiet=True, **self.train_options
            )
            evaluation = self._evaluation(run)
            served = load_served(run, "torch")  # ready at once; the ONNX export is made when downloaded
        except GraftError as error:
            self.job = {**self.job, "state": "failed", "error": error.message, "hint": error.hint}
            return
        except Exception as error:  # the page must hear of it; the server stays up
            self.job = {**self.job, "state": "failed", "error": f"{type(error).__name__}: {error}"}
            return
        self.served = served
        self.job = {
            **self.job,
            "state": "done",
            "seconds": time.time() - self.job["started"],
            "best_epoch": summary.get("best_epoch"),
            "evaluation": evaluation,
        }

    def _evaluation(self, run: Path) -> dict[str, Any]:
        """The run's held-out split as training measured it (``metrics.json``): accuracy, confusion matrix,
        per-class scores, the worst mistakes."""
        metrics = read_json(run / METRICS)
        split = "test" if "test" in metrics else "valid"
        held_out = metrics[split]
        mistakes = [
            {**mistake, "file": str(Path(mistake["file"]).resolve().relative_to(self.data.resolve()))}
            for mistake in held_out["worst"]
        ]
        return {
            "split": split,
            "n": held_out["n"],
            "accuracy": held_out["accuracy"],
            "classes": read_json(run / CONFIG)["classes"],
            "confusion_matrix": held_out["confusion_matrix"],
            "per_class": held_out["per_class"],
            "mistakes": mistakes,
        }

    def run_folder(self) -> Path:
        if self.job["state"] != "done":
            raise HTTPException(409, "no trained model yet: press Train first")
        return Path(self.job["run"])


def create_studio_app(folder: str | os.PathLike, limits: Limits | None = None, **train_options: Any) -> FastAPI:
    """The studio's application over ``folder``; ``train_options`` go to :func:`graft.train` (tests pass a
    tiny backbone)."""
    limits = limits or Limits(max_request_mb=200, max_files=500)
    studio = Studio(Path(folder), limits, train_options)
    app = graft_app("graft studio", limits, "send images as multipart/form-data in fields named 'file'", "studio.html")

    @app.get("/api/state", summary="Classes and their example counts, the training job, its learning curve")
    async def state() -> dict[str, Any]:
        return studio.state()

    @app.post("/api/classes/{name}/examples", summary="Add example images to a class (made if new)")
    async def add_examples(name: str, file: Annotated[list[UploadFile], File()]) -> dict[str, Any]:
        require_file_count(file, limits)
        uploads = [(upload.filename or "image", await upload.read()) for upload in file]
        return await run_in_threadpool(studio.add_examples, name, uploads)

    @app.delete("/api/classes/{name}", summary="Remove a class and its examples")
    async def remove_class(name: str) -> dict[str, Any]:
        if name not in studio.classes():
            raise HTTPException(404, f"no class named {name!r}")
        shutil.rmtree(studio.data / name)
        return {"classes": studio.classes()}

    @app.post("/api/train", summary="Train a model on the classes (in the background)")
    async def train(request: TrainRequest) -> dict[str, Any]:
        return studio.start_training(request)

    @app.get("/api/example/{path:path}", summary="One example image (for the mistakes)")
    async def example(path: str) -> FileResponse:
        file = (studio.data / path).resolve()
        if not file.is_file() or not file.is_relative_to(studio.data.resolve()):
            raise HTTPException(404, f"no example {path!r}")
        return FileResponse(file)

    @app.post("/api/predict", summary="Label images with the last trained model")
    async def predict(file: Annotated[list[UploadFile], File()]) -> list[dict[str, Any]]:
        studio.run_folder()
        if studio.batcher is None or studio.batcher.model is not studio.served:
            if studio.worker is not None:
                studio.worker.cancel()
            studio.batcher = Batcher(studio.served, limits)
            studio.worker = asyncio.create_task(studio.batcher.run())
        return await label_uploads(studio.served, studio.batcher, file, limits)

    @app.get("/api/download/run", summary="The run folder, zipped")
    async def download_run() -> Response:
        run = studio.run_folder()
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for file in sorted(run.rglob("*")):
                if file.is_file() and not file.name.startswith("."):
                    archive.write(file, Path(run.name) / file.relative_to(run))
        headers = {"Content-Disposition": f'attachment; filename="{run.name}.zip"'}
        return Response(buffer.getvalue(), media_type="application/zip", headers=headers)

    @app.get("/api/download/onnx", summary="The model exported to ONNX (after the parity gate)")
    async def download_onnx() -> FileResponse:
        import graft

        run = studio.run_folder()
        target = run / "model.onnx"
        if not target.is_file():
            await run_in_threadpool(graft.export, run, target)
        return FileResponse(target, filename=f"{run.name}.onnx", media_type="application/octet-stream")

    app.state.studio = studio
    return app


def studio(folder: str | os.PathLike, host: str = "127.0.0.1", port: int = 8000, announce=None) -> None:
    """Serve the studio over ``folder`` until interrupted."""
    from graft.deploy.server import require_free_port

    require_free_port(host, port)
    app = create_studio_app(folder)
    if announce is not None:
        announce()
    listen(app, host, port)
