"""Image-folder layouts, splits and the manifest."""

import pytest

from graft.errors import DataError
from graft.image.data import scan_folder
from tests.conftest import make_image


def test_class_folder_layout_gets_a_seeded_stratified_split(class_folder):
    first = scan_folder(class_folder, valid_fraction=0.2, seed=1)
    again = scan_folder(class_folder, valid_fraction=0.2, seed=1)
    other = scan_folder(class_folder, valid_fraction=0.2, seed=2)
    assert first.classes == ["blue", "green", "red"]
    assert first.splits == again.splits and first.splits != other.splits
    assert sorted(label for _, label in first.split("valid")) == [0, 0, 1, 1, 2, 2]
    assert not set(first.split("train")) & set(first.split("valid"))


def test_split_layout_accepts_val_alias(tmp_path):
    for split in ("train", "val"):
        for name, colour in (("a", (0, 0, 0)), ("b", (255, 255, 255))):
            make_image(tmp_path / split / name / "x.png", colour, 0)
    dataset = scan_folder(tmp_path)
    assert dataset.layout == "split folders" and len(dataset.split("valid")) == 2


def test_non_images_are_listed_as_skipped(class_folder):
    (class_folder / "red" / "notes.txt").write_text("hello")
    (class_folder / "empty").mkdir()
    dataset = scan_folder(class_folder)
    reasons = {entry["file"].rsplit("/", 1)[-1]: entry["reason"] for entry in dataset.skipped}
    assert "not an image" in reasons["notes.txt"]
    assert "empty class folder" in reasons["empty"]
    assert dataset.classes == ["blue", "green", "red"]


def test_one_class_is_a_data_error(tmp_path):
    for i in range(3):
        make_image(tmp_path / "only" / f"{i}.png", (1, 2, 3), i)
    with pytest.raises(DataError, match="at least 2"):
        scan_folder(tmp_path)


def test_checking_an_image_folder_does_not_import_torch(split_folder):
    """``graft check`` answers in about a second: importing torch (and timm) would take several."""
    import json
    import subprocess
    import sys

    code = (
        "import json, sys; from graft import api; report = api.check(sys.argv[1]); "
        "print(json.dumps([report['images'], sorted(m for m in ('torch', 'timm') if m in sys.modules)]))"
    )
    completed = subprocess.run([sys.executable, "-c", code, str(split_folder)], capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr
    assert json.loads(completed.stdout) == [42, []]


def test_a_rerun_reads_only_the_files_that_changed_since_the_last_check(split_folder, monkeypatch):
    """The check pass remembers each file's verdict by size, times and inode (like git's index): a re-run's
    scan reads nothing again; a rewritten file is read again and its new content hashed."""
    from graft.fileio import default_cache_dir
    from graft.image import checking

    inspected = []
    real = checking.inspect_image

    def counted(path, *args, **kwargs):
        inspected.append(path)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(checking, "inspect_image", counted)
    first = scan_folder(split_folder)
    assert len(inspected) == 42
    inspected.clear()
    again = scan_folder(split_folder)
    assert inspected == [] and again.sha256 == first.sha256 and again.splits == first.splits
    changed = split_folder / "train" / "red" / "0.png"
    make_image(changed, (0, 0, 255), seed=999)  # new content, same name
    third = scan_folder(split_folder)
    assert inspected == [str(changed)]
    assert third.sha256[str(changed)] != first.sha256[str(changed)]
    inspected.clear()
    paths = sorted(str(path) for path in split_folder.rglob("*.png"))
    checking.inspect_files(
        paths, (".png",), remember=True
    )  # other rules (the extensions asked for): every file checked afresh
    assert sorted(inspected) == paths
    remembered = sorted((default_cache_dir() / "checked").iterdir())
    checking.inspect_files([str(changed)], (".png",))  # a prediction's inputs are checked, not remembered
    assert sorted((default_cache_dir() / "checked").iterdir()) == remembered
