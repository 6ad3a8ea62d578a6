"""graft serve: the API answers as graft predict does, refuses every bad request with a 4xx and a message,
survives fuzzing and a bounded load without a 5xx, and its page works in a real browser (headless Chromium)."""

from __future__ import annotations

import io
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import graft
from tests.conftest import COLOURS, TINY_BACKBONE, make_image

fastapi = pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
from fastapi.testclient import TestClient  # noqa: E402

from graft.deploy.server import Limits, create_app  # noqa: E402
from graft.deploy.serving import load_served  # noqa: E402

ARTEFACTS = Path(os.environ.get("GRAFT_TEST_ARTEFACTS", Path(__file__).resolve().parents[1] / "test-artefacts"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A tiny three-colour classifier and its test images."""
    root = tmp_path_factory.mktemp("serve")
    for split, count in (("train", 8), ("valid", 3), ("test", 3)):
        for index, (name, colour) in enumerate(COLOURS.items()):
            for i in range(count):
                make_image(root / "data" / split / name / f"{name}{i}.png", colour, seed=index * 50 + i + len(split))
    graft.train(
        root / "data",
        root / "run",
        backbone=TINY_BACKBONE,
        pretrained=False,
        epochs=2,
        num_workers=0,
        quiet=True,
        batch_size=8,
        cache=False,
    )
    return root


def images(root: Path) -> list[Path]:
    return sorted((root / "data" / "test").rglob("*.png"))


def upload(paths) -> list:
    return [("file", (Path(p).name, Path(p).read_bytes(), "image/png")) for p in paths]


def test_the_api_answers_as_graft_predict_does_from_a_run_and_from_its_onnx_export(trained):
    pytest.importorskip("onnxruntime")
    expected = graft.load(trained / "run").predict([str(p) for p in images(trained)])
    graft.export(trained / "run", trained / "model.onnx")
    # the run on torch, the run exported in memory (auto: through the parity gate), the exported file
    for source, engine in (
        (trained / "run", "torch"),
        (trained / "run", "auto"),
        (trained / "model.onnx", "onnxruntime"),
    ):
        with TestClient(create_app(load_served(source, engine))) as client:
            assert client.get("/health").json() == {"status": "ok"}
            info = client.get("/info").json()
            assert info["engine"] == ("torch" if engine == "torch" else "onnxruntime") and info["labels"] == {
                "probabilities": ["blue", "green", "red"]
            }
            assert info["preprocessing"]["input_size"] == 160 and info["graft_version"] == graft.__version__
            answers = client.post("/predict", files=upload(images(trained))).json()
            assert [a["image"] for a in answers] == [Path(e["image"]).name for e in expected]
            assert [a["label"] for a in answers] == [e["label"] for e in expected]
            got = np.array([[a["probs"][c] for c in ("blue", "green", "red")] for a in answers])
            want = np.array([[e["probs"][c] for c in ("blue", "green", "red")] for e in expected])
            assert np.allclose(got, want, rtol=1e-3, atol=1e-5)
            assert "/predict" in client.get("/openapi.json").json()["paths"]
            assert "<title>graft" in client.get("/").text


def test_bad_requests_get_a_4xx_with_a_message_and_good_files_are_still_answered(trained):
    limits = Limits(max_files=4, max_request_mb=0.05, max_pixels=100 * 100)
    good = images(trained)[0]
    with TestClient(create_app(load_served(trained / "run"), limits)) as client:
        # one bad file among good ones: listed with its reason, the rest answered
        mixed = client.post("/predict", files=upload([good]) + [("file", ("notes.txt", b"hello", "text/plain"))])
        assert mixed.status_code == 200
        assert "label" in mixed.json()[0] and mixed.json()[1] == {
            "image": "notes.txt",
            "error": "not an image: Pillow cannot identify the format",
        }
        # nothing usable at all
        none = client.post("/predict", files=[("file", ("empty.jpg", b"", "image/jpeg"))])
        assert none.status_code == 422 and "empty.jpg" in none.json()["error"] and "JPEG" in none.json()["hint"]
        # no file field
        missing = client.post("/predict", data={"image": "x"})
        assert missing.status_code == 422 and "file" in missing.json()["error"]
        # too many files in one request
        many = client.post("/predict", files=upload([good] * 5))
        assert many.status_code == 413 and "at most 4" in many.json()["error"]
        # too large a body, refused before parsing
        large = client.post("/predict", files=[("file", ("big.png", b"0" * 60_000, "image/png"))])
        assert large.status_code == 413 and "0.05 MB" in large.json()["error"]
        # a decompression bomb: its header declares more pixels than allowed, so it is never decoded
        buffer = io.BytesIO()
        Image.new("L", (400, 400)).save(buffer, format="PNG")
        bomb = client.post("/predict", files=upload([good]) + [("file", ("bomb.png", buffer.getvalue(), "image/png"))])
        assert bomb.status_code == 200 and "decompression-bomb limit" in bomb.json()[1]["error"]


def test_more_images_waiting_than_allowed_get_429_busy_not_a_server_error(trained):
    with TestClient(create_app(load_served(trained / "run"), Limits(max_waiting=2))) as client:
        busy = client.post("/predict", files=upload(images(trained)[:3]))
        assert busy.status_code == 429 and busy.headers["retry-after"] == "1" and "busy" in busy.json()["error"]
        assert client.post("/predict", files=upload(images(trained)[:2])).status_code == 200


def test_serve_refuses_what_it_cannot_serve_with_a_message(tmp_path, trained):
    from graft.deploy.server import require_free_port
    from graft.errors import ConfigError, RunFolderError

    with pytest.raises(ConfigError, match="does not exist"):
        load_served(tmp_path / "nowhere")
    (tmp_path / "model.onnx").write_bytes(b"not a model")
    with pytest.raises(RunFolderError, match="not a model ONNX Runtime can load"):
        load_served(tmp_path / "model.onnx")
    with pytest.raises(ConfigError, match="--max-files"):
        create_app(load_served(trained / "run"), Limits(max_files=0))
    with pytest.raises(ConfigError, match="--engine must be one of auto, torch, onnxruntime"):
        load_served(trained / "run", "tensorrt")
    graft.export(trained / "run", tmp_path / "exported.onnx")
    with pytest.raises(ConfigError, match="exported ONNX file, which runs on onnxruntime"):
        load_served(tmp_path / "exported.onnx", "torch")
    with socket.create_server(("127.0.0.1", 0)) as taken:
        with pytest.raises(ConfigError, match="cannot listen"):
            require_free_port("127.0.0.1", taken.getsockname()[1])


class Server:
    """The app on uvicorn in a thread, listening on a free loopback port."""

    def __init__(self, app):
        import uvicorn

        with socket.create_server(("127.0.0.1", 0)) as probe:
            self.port = probe.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.05)
        return f"http://127.0.0.1:{self.port}/"

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(10)


def test_a_bounded_load_gets_no_errors_and_requests_are_batched(trained):
    """8 concurrent clients, 80 requests on loopback: every answer 200 and right (bench/serve_load.py is
    the full-size run, with latency percentiles)."""
    import httpx

    from graft.deploy.load_test import load_test

    expected = graft.load(trained / "run").predict([str(images(trained)[0])])[0]["label"]
    served = load_served(trained / "run")
    batch_sizes = []
    run_batch = served.run_batch
    served.run_batch = lambda batch: batch_sizes.append(len(batch)) or run_batch(batch)
    with Server(create_app(served)) as url:
        result = load_test(url, images(trained)[0], clients=8, requests=80, timeout=60)
        assert httpx.get(url + "health").status_code == 200
    assert result["errors"] == 0 and result["statuses"] == {"200": 80} and result["labels"] == {expected: 80}
    assert result["p50_ms"] <= result["p95_ms"]
    assert sum(batch_sizes) == 80 and max(batch_sizes) > 1  # concurrent requests shared forward passes


def test_schema_driven_fuzzing_finds_no_server_error(trained):
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings

    with Server(create_app(load_served(trained / "run"), Limits(max_files=4))) as url:
        schema = schemathesis.openapi.from_url(url + "openapi.json")
        for operation in schema.get_all_operations():
            operation = operation.ok()

            @given(case=operation.as_strategy())
            @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), database=None)
            def fuzz(case):
                response = case.call(timeout=30)
                assert response.status_code < 500, (case.path, response.status_code, response.text)

            fuzz()


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(chromium() is None, reason="needs Debian's chromium package (apt-get install -y chromium)")
def test_the_page_labels_dropped_images_in_a_real_browser(trained):
    playwright = pytest.importorskip("playwright.sync_api")
    paths = images(trained)[:3]
    expected = graft.load(trained / "run").predict([str(p) for p in paths])
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    with Server(create_app(load_served(trained / "run"))) as url, playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        page = browser.new_page()
        page.goto(url)
        page.wait_for_function("document.getElementById('about').textContent.includes('3 classes')")
        page.set_input_files("#pick", [str(path) for path in paths])
        page.wait_for_selector(".card >> nth=2")
        page.wait_for_function("document.getElementById('status').textContent.includes('3 image(s) in')")
        shown = page.eval_on_selector_all(".card .bar.top", "bars => bars.map(bar => bar.dataset.label)")
        names = page.eval_on_selector_all(".card .name", "names => names.map(name => name.textContent)")
        page.screenshot(path=str(ARTEFACTS / "serve-page.png"), full_page=True)
        browser.close()
    assert names == [path.name for path in paths]
    assert shown == [e["label"] for e in expected]


def wait_for_training(client, seconds: float = 240) -> dict:
    deadline = time.monotonic() + seconds
    while True:
        state = client.get("/api/state").json()
        if state["job"]["state"] != "training":
            return state
        assert time.monotonic() < deadline, "training did not finish"
        time.sleep(0.2)


STUDIO_OPTIONS = dict(backbone=TINY_BACKBONE, pretrained=False, num_workers=0, batch_size=8, cache=False)


def test_the_studio_makes_classes_trains_evaluates_predicts_and_hands_over_the_run(tmp_path, trained):
    import zipfile

    from graft.deploy.studio import create_studio_app

    folder = tmp_path / "studio"
    with TestClient(create_studio_app(folder, **STUDIO_OPTIONS)) as client:
        assert client.get("/api/state").json()["classes"] == {}
        assert client.post("/api/train", json={"mode": "extract"}).status_code == 422  # no classes yet
        for name in COLOURS:
            paths = sorted((trained / "data" / "train" / name).glob("*.png"))
            added = client.post(f"/api/classes/{name}/examples", files=upload(paths)).json()
            assert added["added"] == 8 and added["count"] == 8
        red = sorted((trained / "data" / "train" / "red").glob("*.png"))
        again = client.post(
            "/api/classes/red/examples", files=upload(red[:1]) + [("file", ("x.txt", b"no", "text/plain"))]
        )
        assert again.json()["added"] == 0 and again.json()["skipped"][0]["image"] == "x.txt"  # same picture kept once
        assert client.post("/api/classes/..%2Fescape/examples", files=upload([paths[0]])).status_code in (404, 422)
        assert client.post("/api/classes/.hidden/examples", files=upload([paths[0]])).status_code == 422
        assert client.post("/api/train", json={"mode": "sideways"}).status_code == 422
        assert client.post("/api/predict", files=upload([paths[0]])).status_code == 409  # nothing trained yet
        started = client.post("/api/train", json={"mode": "extract", "epochs": 2}).json()
        assert started["state"] == "training"
        state = wait_for_training(client)
        assert state["job"]["state"] == "done", state["job"]
        assert len(state["history"]) == 2 and "valid_accuracy" in state["history"][0]
        evaluation = state["job"]["evaluation"]
        assert evaluation["classes"] == ["blue", "green", "red"] and len(evaluation["confusion_matrix"]) == 3
        assert sum(map(sum, evaluation["confusion_matrix"])) == evaluation["n"]
        for mistake in evaluation["mistakes"]:
            assert client.get("/api/example/" + mistake["file"]).status_code == 200
        assert client.get("/api/example/../../etc/passwd").status_code == 404
        answers = client.post("/api/predict", files=upload(images(trained)[:2])).json()
        run = Path(state["job"]["run"])
        assert [a["label"] for a in answers] == [p["label"] for p in graft.load(run).predict(images(trained)[:2])]
        archive = zipfile.ZipFile(io.BytesIO(client.get("/api/download/run").content))
        assert f"{run.name}/model.safetensors" in archive.namelist() and f"{run.name}/report.html" in archive.namelist()
        onnx_file = client.get("/api/download/onnx")
        assert onnx_file.status_code == 200 and len(onnx_file.content) == (run / "model.onnx").stat().st_size
        assert client.delete("/api/classes/red").json()["classes"] == {"blue": 8, "green": 8}
    # the studio's folder is plain graft: data/<class>/ and a normal run folder
    assert graft.load(run).classes == ["blue", "green", "red"] and (folder / "data" / "blue").is_dir()


@pytest.mark.skipif(chromium() is None, reason="needs Debian's chromium package (apt-get install -y chromium)")
def test_the_studio_page_trains_a_three_class_model_in_a_real_browser(tmp_path, trained):
    playwright = pytest.importorskip("playwright.sync_api")
    from graft.deploy.studio import create_studio_app

    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    with (
        Server(create_studio_app(tmp_path / "studio", **STUDIO_OPTIONS)) as url,
        playwright.sync_playwright() as p,
    ):
        browser = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        page.goto(url)
        for name in COLOURS:
            page.fill("#class-name", name)
            page.click("#new-class button")
            card = f'.class[data-name="{name}"]'
            page.set_input_files(
                f"{card} input", [str(p) for p in sorted((trained / "data" / "train" / name).glob("*.png"))]
            )
            page.wait_for_selector(f"{card} .count:has-text('8 examples')")
        page.fill("#epochs", "3")
        page.click("#train")
        page.wait_for_selector("#accuracy", timeout=240_000)
        assert page.locator("#curve polyline").count() >= 2
        assert page.locator("table.confusion tr").count() == 4
        page.set_input_files("#try", [str(images(trained)[0])])
        page.wait_for_selector("#tries .try .bar")
        page.screenshot(path=str(ARTEFACTS / "studio-page.png"), full_page=True)
        assert page.get_attribute("#download-onnx", "href") == "api/download/onnx"
        browser.close()
