"""``graft serve``: a trained model behind HTTP (FastAPI on uvicorn), on torch for a run folder or on
ONNX Runtime for an exported file.

``POST /predict`` takes one or many images (multipart field ``file``, repeatable) and answers in the
shape of ``graft predict --json``; ``GET /health``, ``GET /info`` (labels, preprocessing, version,
limits), ``GET /openapi.json``, and a page at ``/`` to drop images on. Images from concurrent requests
are run through the model together (dynamic batching), so eight clients cost little more than one.

Every limit answers with a 4xx and a message, never a 5xx: the request's size (413), the number of
files (413), pixels per image (decompression bombs: the file's entry says so), and the images waiting
for the model (429 with ``Retry-After``: the server is busy, not broken).
"""

from __future__ import annotations  # FastAPI reads the endpoints' annotations from this module's names

import asyncio
import collections
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from importlib import resources
from typing import Annotated, Any

import numpy as np
from fastapi import FastAPI, File, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from graft.deploy.serving import ServedModel


@dataclass(frozen=True)
class Limits:
    """What one request, and the server at one time, may ask of the model."""

    max_request_mb: float = 20.0  # the whole multipart body
    max_files: int = 32  # images in one request
    max_pixels: int = 40_000_000  # per image, checked from the header before decoding (decompression bombs)
    max_waiting: int = 64  # images queued for the model; more gets 429 (busy) instead of an ever longer wait
    max_batch: int = 16  # images run through the model at once

    def __post_init__(self):
        """Checked once, when made: a limit outside its range is refused naming its option."""
        from graft.errors import ConfigError

        for name, low, high in (
            ("max_request_mb", 0.001, 10_000),
            ("max_files", 1, 10_000),
            ("max_pixels", 1, 1_000_000_000),
            ("max_waiting", 1, 100_000),
            ("max_batch", 1, 1_024),
        ):
            value = getattr(self, name)
            if not low <= value <= high:
                option = "--" + name.replace("_", "-")
                raise ConfigError(f"{option} must be from {low:,} to {high:,}; got {value}")


class Busy(Exception):
    """More images are waiting for the model than :attr:`Limits.max_waiting` allows."""


class Batcher:
    """Runs images from concurrent requests through the model together, in one background thread."""

    def __init__(self, model: ServedModel, limits: Limits):
        self.model, self.limits = model, limits
        self.pending: collections.deque[tuple[np.ndarray, asyncio.Future]] = collections.deque()
        self.waiting = 0
        self.wakeup = asyncio.Event()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="graft-model")

    async def outputs(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        """The model's outputs for a batch of inputs, run together with other requests' when they overlap."""
        if self.waiting + len(pixels) > self.limits.max_waiting:
            raise Busy()
        future = asyncio.get_running_loop().create_future()
        self.pending.append((pixels, future))
        self.waiting += len(pixels)
        self.wakeup.set()
        return await future

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self.wakeup.wait()
            self.wakeup.clear()
            while self.pending:
                taken = [self.pending.popleft()]
                size = len(taken[0][0])
                while self.pending and size + len(self.pending[0][0]) <= self.limits.max_batch:
                    taken.append(self.pending.popleft())
                    size += len(taken[-1][0])
                self.waiting -= size
                batch = np.concatenate([pixels for pixels, _ in taken])
                try:
                    outputs = await loop.run_in_executor(self.executor, self.model.run_batch, batch)
                except Exception as error:  # reaches each waiting request, which answers 500 with the reason
                    for _, future in taken:
                        if not future.done():
                            future.set_exception(error)
                    continue
                start = 0
                for pixels, future in taken:
                    if not future.done():  # the client may have gone
                        future.set_result(
                            {name: values[start : start + len(pixels)] for name, values in outputs.items()}
                        )
                    start += len(pixels)


class BodyLimit:
    """Refuses a request body over ``limit`` bytes with 413 before anything parses it (the multipart parser
    would otherwise spool any size to disk). The body is read here, bounded, and handed on whole."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            return await self._refuse(scope, receive, send, declared)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                return await self._refuse(scope, receive, send, None)
            more = message.get("more_body", False)
        body, delivered = b"".join(chunks), False

        async def replay():
            nonlocal delivered
            if delivered:
                return await receive()
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, scope, receive, send, declared: bytes | None) -> None:
        if declared is not None and not declared.isdigit():
            status, message = 400, f"Content-Length {declared.decode('latin-1')!r} is not a number of bytes"
        else:
            status, message = 413, f"the request is over the server's limit of {self.limit / 1e6:g} MB"
        await problem(status, message, "send fewer or smaller images per request")(scope, receive, send)


def page(name: str) -> str:
    """One of the HTML pages shipped in ``graft/deploy/pages``."""
    return resources.files("graft.deploy").joinpath("pages", name).read_text(encoding="utf-8")


def graft_app(title: str, limits: Limits, hint: str, home_page: str, **options: Any) -> FastAPI:
    """A FastAPI application as graft serves every one: the request-size limit, errors as ``{"error",
    "hint"}`` (``hint`` for a malformed request), and the page ``home_page`` at ``/``."""
    from graft import __version__

    app = FastAPI(title=title, version=__version__, **options)
    app.add_middleware(BodyLimit, limit=int(limits.max_request_mb * 1e6))
    add_error_handlers(app, hint)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def home() -> str:
        return page(home_page)

    return app


def create_app(model: ServedModel, limits: Limits | None = None):
    """The FastAPI application serving ``model`` within ``limits``."""
    limits = limits or Limits()
    batcher = Batcher(model, limits)

    @asynccontextmanager
    async def lifespan(_app):
        worker = asyncio.create_task(batcher.run())
        yield
        worker.cancel()
        batcher.executor.shutdown(wait=False)

    app = graft_app(
        "graft: a transfer-learned image model",
        limits,
        "POST images as multipart/form-data, each in a field named 'file'",
        "predict.html",
        description=f"{model.description.get('backbone', 'a model')} from {model.source}, on {model.engine}",
        lifespan=lifespan,
    )

    @app.get("/health", summary="The server is up and the model loaded")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/info", summary="The model's labels, preprocessing, version and the server's limits")
    async def info() -> dict[str, Any]:
        return {**model.info(), "limits": asdict(limits)}

    @app.post(
        "/predict",
        summary="Label one or many images",
        description="Multipart form field `file`, repeatable. One entry per file, in order, shaped as "
        "`graft predict --json`; a file that is not a usable image gets `{image, error}` and the others are "
        "still answered (422 when none is usable).",
        responses={
            413: {"description": "too large a request, or too many files"},
            422: {"description": "no usable image, or no `file` field"},
            429: {"description": "busy: too many images waiting for the model; retry"},
        },
    )
    async def predict(
        file: Annotated[list[UploadFile], File(description="an image (JPEG, PNG, WebP, ...); repeat for several")],
    ) -> list[dict[str, Any]]:
        return await label_uploads(model, batcher, file, limits)

    return app


async def label_uploads(
    model: ServedModel, batcher: Batcher, files: list[UploadFile], limits: Limits
) -> list[dict[str, Any]]:
    """Answers for uploaded images, one entry per file in order (``{image, error}`` for an unusable one);
    :class:`HTTPException` 413 (too many files), 422 (none usable) or 429 (busy)."""
    from graft.image.checking import ImageProblem

    require_file_count(files, limits)
    names, inputs, failures = [], [], {}
    for position, upload in enumerate(files):
        name = upload.filename or f"file {position + 1}"
        names.append(name)
        data = await upload.read()
        try:
            inputs.append(await run_in_threadpool(model.pixels, data, limits.max_pixels))
        except ImageProblem as reason:
            failures[position] = str(reason)
    if len(failures) == len(files):
        details = "; ".join(f"{names[p]}: {reason}" for p, reason in failures.items())
        refusal = HTTPException(422, f"no usable image ({details})")
        refusal.hint = "send image files (JPEG, PNG, WebP, BMP, TIFF, GIF) in the form field 'file'"
        raise refusal
    try:
        outputs = await batcher.outputs(np.stack(inputs))
    except Busy:
        raise HTTPException(
            429, f"busy: more than {limits.max_waiting} images are waiting for the model", {"Retry-After": "1"}
        ) from None
    answers = iter(model.answers(outputs))
    return [
        {"image": name, "error": failures[position]} if position in failures else {"image": name, **next(answers)}
        for position, name in enumerate(names)
    ]


def require_file_count(files: list[UploadFile], limits: Limits) -> None:
    """413 when one request carries more files than :attr:`Limits.max_files`."""
    if len(files) > limits.max_files:
        raise HTTPException(413, f"{len(files)} files in one request; this server takes at most {limits.max_files}")


def problem(status: int, message: str, hint: str | None = None, headers: dict | None = None) -> JSONResponse:
    """graft's error shape over HTTP: ``{"error", "hint"}`` with the status."""
    return JSONResponse({"error": message, "hint": hint}, status_code=status, headers=headers)


def add_error_handlers(app: FastAPI, hint: str) -> None:
    """Every refusal as ``{"error", "hint"}``; a malformed request's first problem, said plainly."""

    @app.exception_handler(RequestValidationError)
    async def invalid(_request, error: RequestValidationError):
        first = error.errors()[0] if error.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
        return problem(422, f"{where or 'request'}: {first.get('msg', 'invalid')}", hint)

    @app.exception_handler(HTTPException)
    async def http_problem(_request, error: HTTPException):
        hint = getattr(error, "hint", None)
        return problem(error.status_code, str(error.detail), hint, headers=getattr(error, "headers", None))


def serve(
    model_path,
    host: str = "127.0.0.1",
    port: int = 8000,
    limits: Limits | None = None,
    announce=None,
    engine: str = "auto",
) -> None:
    """Load ``model_path`` (a run folder or an exported file) on ``engine`` and serve it until interrupted;
    ``announce`` is called with the loaded model just before the server listens."""
    from graft.deploy.serving import load_served

    require_free_port(host, port)
    served = load_served(model_path, engine)
    app = create_app(served, limits)
    if announce is not None:
        announce(served)
    listen(app, host, port)


def listen(app: FastAPI, host: str, port: int) -> None:
    """Run ``app`` on uvicorn until interrupted, quietly: graft prints its own lines, not an access log."""
    import uvicorn

    uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False)).run()


def require_free_port(host: str, port: int) -> None:
    """A clear error, before the model loads, when ``host:port`` cannot be listened on."""
    import socket

    from graft.errors import ConfigError

    if not 0 <= port <= 65535:
        raise ConfigError(f"--port must be from 0 to 65535; got {port}")
    try:
        with socket.create_server((host, port)):
            pass
    except OSError as error:
        raise ConfigError(
            f"cannot listen on {host}:{port} ({error.strerror or error})",
            hint="choose another --port, or stop what is using it",
        ) from None
