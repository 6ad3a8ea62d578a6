"""Decoding during start-up (graft.image.predecode): the child's pixels are the evaluation transform's to the
bit, the frozen pass takes them, a file the child could not decode is decoded (and reported) as before, and a
whole `graft train` caches the same activations with or without it."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from graft.errors import DataError
from graft.image import predecode
from graft.image.decoded import ImageDataset
from graft.image.preprocessing import Preprocessing
from graft.perf import usable_cores
from tests.conftest import make_image

PREPROCESSINGS = [
    Preprocessing(),  # EfficientNet-Lite0's: 224 px, bicubic, crop 0.875
    Preprocessing(input_size=240, interpolation="bilinear", crop_pct=0.875),
    Preprocessing(input_size=32, interpolation="bilinear", crop_pct=1.0),  # graft_cnn's
    Preprocessing(input_size=64, interpolation="nearest", crop_pct=0.9),
]


def _odd_images(folder: Path) -> list[Path]:
    """Images that exercise every branch: portrait, landscape, square, smaller than the crop, already the
    resize's size, grey, palette, transparent, and a JPEG stored sideways with an EXIF rotation."""
    rng = np.random.default_rng(0)
    paths = []
    for index, (width, height) in enumerate([(300, 200), (200, 301), (224, 224), (50, 80), (256, 300), (257, 256)]):
        path = folder / f"rgb_{index}.png"
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    grey = Image.fromarray(rng.integers(0, 256, (120, 90), dtype=np.uint8))
    grey.save(folder / "grey.png")
    grey.convert("P").save(folder / "palette.png")
    Image.fromarray(rng.integers(0, 256, (100, 140, 4), dtype=np.uint8), "RGBA").save(folder / "alpha.png")
    sideways = Image.fromarray(rng.integers(0, 256, (90, 160, 3), dtype=np.uint8))
    exif = sideways.getexif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees to display
    sideways.save(folder / "sideways.jpg", exif=exif, quality=90)
    return paths + [folder / name for name in ("grey.png", "palette.png", "alpha.png", "sideways.jpg")]


@pytest.mark.parametrize("preprocessing", PREPROCESSINGS, ids=lambda p: f"{p.input_size}-{p.interpolation}")
def test_clean_pixels_are_the_evaluation_transforms_to_the_bit(tmp_path, preprocessing):
    assert predecode.can_predecode(preprocessing)
    reference = ImageDataset([(str(path), 0) for path in _odd_images(tmp_path)], preprocessing.eval_transform(False))
    for index, (path, _) in enumerate(reference.items):
        expected = reference[index][0].numpy()
        actual = predecode.clean_pixels(path, preprocessing)
        assert actual.dtype == np.uint8 and actual.shape == expected.shape, path
        assert np.array_equal(actual, expected), path


def _wait_for(predecoded: predecode.Predecoded, count: int) -> None:
    deadline = time.monotonic() + 30
    while predecoded.ready() < count and time.monotonic() < deadline:
        time.sleep(0.02)


def test_the_frozen_pass_takes_what_the_child_decoded_and_decodes_the_rest_itself(tmp_path):
    preprocessing = Preprocessing(input_size=64)
    good = [make_image(tmp_path / "data" / "a" / f"{i}.png", (200, 30, 30), seed=i, size=90) for i in range(5)]
    broken = tmp_path / "data" / "a" / "broken.png"
    broken.write_bytes(b"not an image")
    late = make_image(tmp_path / "data" / "a" / "late.png", (30, 30, 200), seed=9, size=90)  # not in the child's list
    listed = predecode.image_files(str(tmp_path / "data"), limit=100)
    assert str(late.resolve()) in listed and str(broken.resolve()) in listed
    listed.remove(str(late.resolve()))
    predecoded = predecode.launch(listed, preprocessing, started=time.monotonic())
    try:
        _wait_for(predecoded, len(good))
        predecoded.stop()
        assert predecoded.ready() == len(good)  # the broken file failed in the child without stopping it
        assert predecoded.describe()["first_image_seconds"] > 0
        items = [(str(path), 0) for path in [*good, late]]
        plain = ImageDataset(items, preprocessing.eval_transform(normalize=False))
        served = predecoded.serving(plain)
        for index, (path, _) in enumerate(items):
            pixels, label = served[index]
            assert torch.equal(pixels, plain[index][0]) and label == 0
            assert (predecoded.pixels_of(path) is None) == (Path(path) == late)
        with pytest.raises(DataError, match="broken.png"):  # decoded by the pass, reported as ever
            predecoded.serving(ImageDataset([(str(broken), 0)], plain.transform))[0]
        assert predecoded.matches(Preprocessing(input_size=64, mean=(0.5, 0.5, 0.5)))  # normalising comes later
        assert not predecoded.matches(Preprocessing(input_size=64, crop_pct=1.0))
    finally:
        predecoded.stop()


def test_nothing_is_started_where_the_imports_are_done_already(tmp_path):
    make_image(tmp_path / "a" / "0.png", (200, 30, 30), seed=0)
    assert "torch" in sys.modules
    assert predecode.start(str(tmp_path), Preprocessing(), process_age=None) is None
    assert predecode.running() is None


def test_a_train_run_caches_the_same_activations_with_and_without_decoding_during_start_up(tmp_path, class_folder):
    """The real command, twice, each with its own empty cache: once as a user runs it (the child decodes while
    torch loads), once with GRAFT_PREDECODE=0. The cached rows and the trained head must be identical."""
    caches, runs = {}, {}
    for name, opt_out in (("ahead", None), ("plain", "0")):
        environ = {k: v for k, v in os.environ.items() if k != predecode.OPT_OUT}
        if opt_out is not None:
            environ[predecode.OPT_OUT] = opt_out
        caches[name], runs[name] = tmp_path / f"cache-{name}", tmp_path / f"run-{name}"
        command = [sys.executable, "-m", "graft", "train", str(class_folder), "--out", str(runs[name])]
        command += ["--cache-dir", str(caches[name]), "--epochs", "2", "--image-size", "64", "--json"]
        completed = subprocess.run(command, capture_output=True, text=True, env=environ, timeout=300)
        assert completed.returncode == 0, completed.stderr[-2000:]
        summary = json.loads(completed.stdout)
        if name == "ahead":
            ahead = summary["frozen_pass"]["decoded_ahead"]
            assert ahead["listed"] == 30 and ahead["decoded"] >= 1
        else:
            assert "decoded_ahead" not in summary["frozen_pass"]
    chunks = {name: sorted(cache.rglob("chunk-*.npy")) for name, cache in caches.items()}
    assert chunks["ahead"] and [p.name for p in chunks["ahead"]] == [p.name for p in chunks["plain"]]
    for ahead, plain in zip(chunks["ahead"], chunks["plain"]):
        assert ahead.read_bytes() == plain.read_bytes()
    assert (runs["ahead"] / "model.safetensors").read_bytes() == (runs["plain"] / "model.safetensors").read_bytes()


def test_a_command_alone_starts_the_child_and_one_of_several_processes_does_not(tmp_path):
    """In a fresh process (torch not imported, as the `graft` command starts): a child decodes; with
    WORLD_SIZE=2 (a torchrun rank, which computes only its share of the rows) none is started."""
    make_image(tmp_path / "data" / "a" / "0.png", (200, 30, 30), seed=0)
    script = (
        "import sys\n"
        "from graft.image import predecode\n"
        "from graft.image.preprocessing import Preprocessing\n"
        f"started = predecode.start({str(tmp_path / 'data')!r}, Preprocessing(input_size=32), process_age=None)\n"
        "assert 'torch' not in sys.modules\n"
        "print('none' if started is None else 'child')\n"
        "predecode.stop_running()\n"
    )
    answers = {}
    for world in ("1", "2"):
        environ = {k: v for k, v in os.environ.items() if k != predecode.OPT_OUT} | {"WORLD_SIZE": world}
        completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=environ)
        assert completed.returncode == 0, completed.stderr
        answers[world] = completed.stdout.strip()
    expected = "child" if usable_cores() >= 2 else "none"
    assert answers == {"1": expected, "2": "none"}
