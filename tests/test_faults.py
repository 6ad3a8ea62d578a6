"""Fault injection for bad input: each case builds a broken or unusual file or folder and asserts
what graft reports (used correctly, or skipped with a reason naming the file, or a warning), through
``scan_folder`` (what ``graft train`` uses) and ``graft check --json`` in a subprocess (no traceback).

``FILE_CASES`` is the catalogue; the closing note of issue 5 counts its cases.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import graft
from graft.errors import DataError
from graft.image import checking
from graft.image.data import IMAGE_EXTENSIONS, load_image, scan_folder
from tests.conftest import COLOURS, SHARED_DATASETS, TINY_BACKBONE, make_image

SRC = Path(__file__).resolve().parents[1] / "src"


def _pixels(colour=(200, 30, 30), size=32, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(np.array(colour, dtype=np.float32) + rng.normal(0, 10, (size, size, 3)), 0, 255).astype(np.uint8)


def _save(path: Path, image: Image.Image, fmt: str | None = None, **options) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format=fmt, **options)
    return path


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _bomb_png(path: Path, side: int) -> Path:
    """A tiny file whose header claims ``side`` x ``side`` RGB pixels (a decompression bomb)."""
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    data = (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(b"\0" * 4096))
        + _png_chunk(b"IEND", b"")
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _truncated(path: Path, fmt: str) -> Path:
    _save(path, Image.fromarray(_pixels(size=64)), fmt)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _corrupt_jpeg(path: Path) -> Path:
    _save(path, Image.fromarray(_pixels(size=64)), "JPEG")
    data = bytearray(path.read_bytes())
    rng = np.random.default_rng(1)
    data[20:] = rng.integers(0, 256, len(data) - 20, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    return path


def _exif_rotated(path: Path) -> Path:
    image = Image.fromarray(_pixels(size=1)).resize((40, 20))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when shown
    return _save(path, image, "JPEG", exif=exif.tobytes())


def _animated_gif(path: Path) -> Path:
    frames = [Image.fromarray(_pixels(seed=i)).convert("P") for i in range(3)]
    path.parent.mkdir(parents=True, exist_ok=True)
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50)
    return path


def _palette_transparent(path: Path) -> Path:
    image = Image.fromarray(_pixels()).convert("P")
    return _save(path, image, "PNG", transparency=0)


# name -> (builder(path), file name, expected): "usable", ("skipped", reason part) or ("warning", message part)
FILE_CASES = {
    "truncated_jpeg": (lambda p: _truncated(p, "JPEG"), "truncated.jpg", ("skipped", "truncated or corrupt")),
    "truncated_png": (lambda p: _truncated(p, "PNG"), "truncated.png", ("skipped", "truncated or corrupt")),
    "corrupt_jpeg": (_corrupt_jpeg, "corrupt.jpg", ("skipped", "")),
    "zero_bytes": (
        lambda p: (p.parent.mkdir(parents=True, exist_ok=True), p.write_bytes(b"")),
        "empty.jpg",
        ("skipped", "empty file (0 bytes)"),
    ),
    "text_named_jpg": (
        lambda p: (p.parent.mkdir(parents=True, exist_ok=True), p.write_text("<html>not an image</html>")),
        "page.jpg",
        ("skipped", "not an image"),
    ),
    "text_file": (
        lambda p: (p.parent.mkdir(parents=True, exist_ok=True), p.write_text("notes")),
        "notes.txt",
        ("skipped", "not an image"),
    ),
    "no_extension": (
        lambda p: _save(p, Image.fromarray(_pixels()), "PNG"),
        "photo_without_extension",
        ("warning", "no file extension; read by content as PNG"),
    ),
    "wrong_extension": (lambda p: _save(p, Image.fromarray(_pixels()), "PNG"), "really_png.jpg", "usable"),
    "gif_animated": (_animated_gif, "anim.gif", "usable"),
    "webp": (lambda p: _save(p, Image.fromarray(_pixels()), "WEBP"), "a.webp", "usable"),
    "bmp": (lambda p: _save(p, Image.fromarray(_pixels()), "BMP"), "a.bmp", "usable"),
    "tiff": (lambda p: _save(p, Image.fromarray(_pixels()), "TIFF"), "a.tiff", "usable"),
    "cmyk_jpeg": (lambda p: _save(p, Image.fromarray(_pixels()).convert("CMYK"), "JPEG"), "cmyk.jpg", "usable"),
    "gray16_png": (
        lambda p: _save(p, Image.fromarray(np.full((32, 32), 30000, dtype=np.uint16)), "PNG"),
        "gray16.png",
        "usable",
    ),
    "palette_png": (lambda p: _save(p, Image.fromarray(_pixels()).convert("P"), "PNG"), "palette.png", "usable"),
    "palette_transparent_png": (_palette_transparent, "palette_t.png", "usable"),
    "rgba_png": (
        lambda p: _save(p, Image.fromarray(np.dstack([_pixels(), np.full((32, 32), 128, np.uint8)]), "RGBA"), "PNG"),
        "rgba.png",
        "usable",
    ),
    "grayscale_jpeg": (lambda p: _save(p, Image.fromarray(_pixels()).convert("L"), "JPEG"), "gray.jpg", "usable"),
    "exif_rotated_jpeg": (_exif_rotated, "rotated.jpg", "usable"),
    "decompression_bomb": (lambda p: _bomb_png(p, 30000), "bomb.png", ("skipped", "decompression-bomb limit")),
    "over_pixel_limit": (lambda p: _bomb_png(p, 12000), "huge.png", ("skipped", "decompression-bomb limit")),
    "hidden_file": (
        lambda p: _save(p, Image.fromarray(_pixels()), "PNG"),
        "._resource_fork.png",
        ("skipped", "hidden file"),
    ),
    "non_utf8_name": (
        lambda p: _save(p, Image.fromarray(_pixels()), "PNG"),
        os.fsdecode(b"caf\xe9_latin1.png"),
        ("warning", "not valid UTF-8"),
    ),
}


def _good_dataset(root: Path, per_class: int = 6) -> Path:
    for index, (name, colour) in enumerate(list(COLOURS.items())[:2]):
        for i in range(per_class):
            make_image(root / name / f"{name}_{i}.png", colour, seed=index * 100 + i, size=32)
    return root


@pytest.mark.parametrize("case", sorted(FILE_CASES))
def test_each_file_case_is_used_or_reported_by_name(case, tmp_path):
    builder, filename, expected = FILE_CASES[case]
    root = _good_dataset(tmp_path / "data")
    target = root / "red" / filename
    builder(target)
    dataset = scan_folder(root)
    used = {path for items in dataset.splits.values() for path, _ in items}
    skipped = {entry["file"]: entry["reason"] for entry in dataset.skipped}
    warned = {entry["file"]: entry["message"] for entry in dataset.warnings}
    assert len(used) + len(skipped) == 13, "a file was dropped silently"
    if expected == "usable" or expected[0] == "warning":
        assert str(target) in used, skipped.get(str(target))
        image = load_image(target)
        assert image.mode == "RGB" and min(image.size) > 0
    if expected != "usable":
        kind, text = expected
        where = skipped if kind == "skipped" else warned
        assert str(target) in where, f"{case}: {target.name} not in {kind}: {skipped} {warned}"
        assert text in where[str(target)]
        if kind == "skipped":
            assert str(target) not in used


def test_conversions_look_right(tmp_path):
    rgba = np.zeros((8, 8, 4), np.uint8)  # fully transparent black: shown as white, not black
    assert load_image(_save(tmp_path / "t.png", Image.fromarray(rgba, "RGBA"))).getpixel((0, 0)) == (255, 255, 255)
    gray16 = Image.fromarray(np.full((8, 8), 30000, dtype=np.uint16))
    value = load_image(_save(tmp_path / "g.png", gray16)).getpixel((0, 0))
    assert value == (117, 117, 117), value  # 30000/257, not clipped to 255
    red = load_image(
        _save(tmp_path / "c.jpg", Image.new("RGB", (8, 8), (220, 20, 20)).convert("CMYK"), "JPEG")
    ).getpixel((4, 4))
    assert red[0] > 180 and red[1] < 80 and red[2] < 80, red
    assert load_image(_exif_rotated(tmp_path / "r.jpg")).size == (20, 40)


def test_empty_class_folder_is_reported_and_ignored(tmp_path):
    root = _good_dataset(tmp_path / "data")
    (root / "empty_class").mkdir()
    _truncated(root / "only_bad" / "x.jpg", "JPEG")
    dataset = scan_folder(root)
    assert dataset.classes == ["green", "red"]
    reasons = {Path(entry["file"]).name: entry["reason"] for entry in dataset.skipped}
    assert "empty class folder" in reasons["empty_class"] and "empty class folder" in reasons["only_bad"]
    assert "truncated" in reasons["x.jpg"]


def test_one_class_dataset_is_a_clear_error(tmp_path):
    root = tmp_path / "data"
    for i in range(4):
        make_image(root / "only" / f"{i}.png", (10, 10, 10), seed=i)
    with pytest.raises(DataError, match="needs at least 2"):
        scan_folder(root)
    report = graft.check(root)
    assert report["ok"] is False and "needs at least 2" in report["errors"][0] and report["usable"] == 4


def test_classes_missing_from_valid_or_test_are_reported(tmp_path):
    root = tmp_path / "split"
    for split in ("train", "valid", "test"):
        for index, name in enumerate(("a", "b", "c")):
            if (split, name) in {("valid", "c"), ("test", "b")}:
                continue
            for i in range(3):
                make_image(
                    root / split / name / f"{i}.png", list(COLOURS.values())[index], seed=hash((split, name, i)) % 1000
                )
    make_image(root / "test" / "zebra" / "0.png", (1, 2, 3), seed=5)
    dataset = scan_folder(root)
    messages = [entry["message"] for entry in dataset.warnings]
    assert any("valid split has no images of class(es) c" in m for m in messages)
    assert any("test split has no images of class(es) b" in m for m in messages)
    zebra = [entry for entry in dataset.skipped if "zebra" in entry["file"]]
    assert zebra and "no training images" in zebra[0]["reason"]


def test_duplicates_across_splits_warn_about_leakage(split_folder):
    source = split_folder / "train" / "red" / "0.png"
    copy = split_folder / "test" / "red" / "copy_of_train.png"
    copy.write_bytes(source.read_bytes())
    mislabelled = split_folder / "train" / "blue" / "red_in_blue.png"
    mislabelled.write_bytes(source.read_bytes())
    dataset = scan_folder(split_folder)
    by_file = {}
    for entry in dataset.warnings:
        by_file.setdefault(entry["file"], []).append(entry["message"])
    assert any("leaks into evaluation" in m for m in by_file[str(copy)])
    noise = [e for e in dataset.warnings if "label noise" in e["message"]]
    assert noise and all(mislabelled.name in e["file"] + e["message"] for e in noise)


def test_random_split_keeps_identical_images_on_one_side(tmp_path):
    root = _good_dataset(tmp_path / "data", per_class=10)
    for i in range(5):
        (root / "red" / f"dup_{i}.png").write_bytes((root / "red" / "red_0.png").read_bytes())
    dataset = scan_folder(root)
    valid = {Path(path).name for path, _ in dataset.split("valid")}
    assert not ({"red_0.png"} | {f"dup_{i}.png" for i in range(5)}) & valid


def test_non_utf8_class_folder_trains_and_is_reported(tmp_path):
    root = tmp_path / "data"
    weird = os.fsdecode(b"k\xf6nig")
    for index, name in enumerate(("plain", weird)):
        for i in range(6):
            make_image(root / name / f"{i}.png", list(COLOURS.values())[index], seed=index * 10 + i, size=32)
    report = graft.check(root)
    assert "k\ufffdnig" in report["classes"] and report["usable"] == 12
    assert any("not valid UTF-8" in w["message"] for w in report["warnings"])
    json.dumps(report)  # serialisable
    summary = graft.train(
        root,
        tmp_path / "run",
        backbone=TINY_BACKBONE,
        pretrained=False,
        epochs=1,
        num_workers=0,
        quiet=True,
        batch_size=4,
    )
    assert summary["skipped"] == 0
    assert graft.load(tmp_path / "run").classes == ["k\ufffdnig", "plain"]


def test_cli_check_json_lists_every_case_without_traceback(tmp_path):
    root = _good_dataset(tmp_path / "data")
    for builder, filename, _ in FILE_CASES.values():
        builder(root / "red" / filename)
    (root / "empty_class").mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "graft", "check", str(root), "--json"],
        capture_output=True,
        env={**os.environ, "PYTHONPATH": str(SRC)},
        timeout=300,
    )
    assert b"Traceback" not in result.stderr, result.stderr.decode(errors="replace")
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    report = json.loads(result.stdout)
    assert {"images", "usable", "skipped", "warnings"} <= set(report)
    assert all(set(entry) == {"file", "reason"} for entry in report["skipped"])
    assert all(set(entry) == {"file", "message"} for entry in report["warnings"])
    expected_skipped = sum(
        1 for *_, expected in FILE_CASES.values() if expected != "usable" and expected[0] == "skipped"
    )
    assert len([e for e in report["skipped"] if Path(e["file"]).is_file()]) == expected_skipped
    assert report["images"] == 12 + len(FILE_CASES)
    assert report["usable"] == report["images"] - expected_skipped
    assert sum(report["skipped_by_reason"].values()) == len(report["skipped"])


def test_train_records_skipped_files_in_the_manifest(tmp_path):
    root = _good_dataset(tmp_path / "data")
    _truncated(root / "red" / "bad.jpg", "JPEG")
    (root / "green" / "empty.png").write_bytes(b"")
    graft.train(
        root,
        tmp_path / "run",
        backbone=TINY_BACKBONE,
        pretrained=False,
        epochs=1,
        num_workers=0,
        quiet=True,
        batch_size=4,
    )
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    reasons = {Path(entry["file"]).name: entry["reason"] for entry in manifest["skipped"]}
    assert "truncated" in reasons["bad.jpg"] and "0 bytes" in reasons["empty.png"]
    assert not any("bad.jpg" in path for items in manifest["splits"].values() for path, _ in items)


def test_predict_predicts_every_readable_file_and_names_each_unreadable_one(split_folder, tmp_path):
    graft.train(
        split_folder,
        tmp_path / "run",
        backbone=TINY_BACKBONE,
        pretrained=False,
        epochs=1,
        num_workers=0,
        quiet=True,
        batch_size=8,
    )
    bad = _truncated(tmp_path / "bad.jpg", "JPEG")
    good = sorted(str(p) for p in (split_folder / "test").rglob("*.png"))[:4]
    results = graft.predict(tmp_path / "run", [good[0], good[1], bad, good[2], good[3]])
    assert [r["image"] for r in results] == [good[0], good[1], str(bad), good[2], good[3]]  # every input, in order
    assert "truncated" in results[2]["error"] and all("label" in r for i, r in enumerate(results) if i != 2)
    from typer.testing import CliRunner

    from graft.cli import app

    result = CliRunner().invoke(app, ["predict", str(tmp_path / "run"), good[0], str(bad), "--json"])
    assert result.exit_code == 3  # not every file could be predicted
    entries = json.loads(result.stdout)
    assert "label" in entries[0] and "bad.jpg" in entries[1]["image"] and "error" in entries[1]


@pytest.mark.skipif(not (SHARED_DATASETS / "sign-language-digits").is_dir(), reason="shared datasets not present")
def test_real_3024px_phone_photos_in_sign_language_digits_are_used():
    folder = SHARED_DATASETS / "sign-language-digits" / "train" / "7"
    big = sorted(p for p in folder.iterdir() if p.stat().st_size > 500_000)
    assert len(big) == 3
    verdicts = checking.inspect_files([str(p) for p in big], {".jpg"})
    assert all(v.usable for v in verdicts), [v.reason for v in verdicts]
    image = load_image(big[0])
    assert image.size == (3024, 3024) and image.mode == "RGB"


def test_checking_in_processes_gives_the_verdicts_of_checking_one_by_one(tmp_path, monkeypatch):
    """Every fault case, among enough good files to be split over two processes: same verdicts, same order."""
    root = _good_dataset(tmp_path / "data", per_class=70)
    for case, (builder, filename, _) in sorted(FILE_CASES.items()):
        builder(root / "red" / f"{case}_{filename}")
    paths = sorted(str(p) for p in root.rglob("*") if p.is_file())
    pools = []

    class CountedPool(checking.ProcessPoolExecutor):
        def __init__(self, *args, **kwargs):
            pools.append(kwargs["max_workers"])
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(checking, "ProcessPoolExecutor", CountedPool)
    one_by_one = checking.inspect_files(paths, IMAGE_EXTENSIONS, workers=1, remember=False)
    in_processes = checking.inspect_files(paths, IMAGE_EXTENSIONS, workers=2, remember=False)
    assert pools == [2]
    assert in_processes == one_by_one
    rejected = {Path(v.path).name.split("_")[0] for v in one_by_one if not v.usable}
    # hidden files are left out by the scan, not by the check
    assert rejected == {
        case.split("_")[0]
        for case, (*_, expected) in FILE_CASES.items()
        if expected != "usable" and expected[0] == "skipped" and case != "hidden_file"
    }


def test_nothing_in_a_data_folder_disappears_without_a_word(tmp_path, monkeypatch):
    """Symlink loops, dangling symlinks, FIFOs, unreadable and hidden folders are each listed with a reason;
    hidden entries follow one rule everywhere (skipped and listed, also inside a class folder)."""
    data = tmp_path / "data"
    for name in ("cats", "dogs"):
        for i in range(4):
            make_image(data / name / f"{i}.png", (60 * i, 90, 30), seed=i)
    (data / "cats" / "loop").symlink_to(data / "cats", target_is_directory=True)
    (data / "cats" / "dangling.png").symlink_to(tmp_path / "nowhere.png")
    os.mkfifo(data / "dogs" / "pipe.png")
    make_image(data / "dogs" / ".thumbs" / "x.png", (1, 2, 3), seed=9)
    make_image(data / ".hidden_class" / "y.png", (1, 2, 3), seed=8)
    (data / "locked").mkdir()
    real_listdir = os.listdir

    def listdir(path):
        if str(path).endswith("locked"):
            raise PermissionError(13, "Permission denied")
        return real_listdir(path)

    monkeypatch.setattr(os, "listdir", listdir)
    dataset = scan_folder(data)
    reasons: dict[str, str] = {}
    for entry in dataset.skipped:
        reasons[Path(entry["file"]).name] = reasons.get(Path(entry["file"]).name, "") + entry["reason"]
    assert "symlink loop" in reasons["loop"]
    assert "broken symlink" in reasons["dangling.png"]
    assert "FIFO" in reasons["pipe.png"]
    assert "hidden" in reasons[".thumbs"] and "hidden" in reasons[".hidden_class"]
    assert "cannot be read" in reasons["locked"]
    used = [path for items in dataset.splits.values() for path, _ in items]
    assert len(used) == 8 and not any(".thumbs" in path for path in used)
