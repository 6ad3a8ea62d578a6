"""Labels for several tasks: file-name patterns, CSV, task specs, and the duplicate-aware split."""

import math
import shutil

import pytest

from graft.errors import ConfigError, DataError
from graft.multitask.tasks import Task, group_split, parse_tasks, read_labels, scan_multitask
from tests.conftest import make_image


@pytest.fixture
def faces(tmp_path):
    root = tmp_path / "faces"
    for i in range(12):
        make_image(
            root / f"{20 + i}_{i % 2}_{i % 5}_2017010{i:02d}.jpg.chip.jpg",
            (40 * (i % 5), 100, 200 * (i % 2)),
            seed=i,
            size=24,
        )
    make_image(root / "61_3_20170109150557335.jpg.chip.jpg", (0, 0, 0), seed=99, size=24)  # a field missing
    make_image(root / "30_7_1_20170101.jpg.chip.jpg", (0, 0, 0), seed=98, size=24)  # gender 7 does not exist
    (root / "40_1_1_20170102.jpg.chip.jpg").write_bytes(b"not a jpeg")  # well named, not an image
    return root


def test_utkface_names_parse_and_bad_names_are_skipped_not_guessed(faces):
    tasks, items, skipped, source = read_labels(faces, "utkface", "age,gender,race")
    assert [t.name for t in tasks] == ["age", "gender", "race"]
    assert tasks[1].classes == ("male", "female") and tasks[2].classes[:2] == ("White", "Black")
    assert len(items) == 13  # the broken file parses by name; scan_multitask decodes it and skips it
    reasons = {s["file"].rsplit("/", 1)[1]: s["reason"] for s in skipped}
    assert "does not match" in reasons["61_3_20170109150557335.jpg.chip.jpg"]
    assert "gender value '7'" in reasons["30_7_1_20170101.jpg.chip.jpg"]
    path, labels = next(item for item in items if item[0].endswith("23_1_3_201701003.jpg.chip.jpg"))
    assert labels == [23.0, 1.0, 3.0]
    assert source["kind"] == "preset"


def test_a_task_subset_of_the_preset(faces):
    tasks, items, _, _ = read_labels(faces, "utkface", "gender")
    assert [t.name for t in tasks] == ["gender"] and all(len(labels) == 1 for _, labels in items)


def test_csv_labels_with_missing_cells_and_inferred_classes(tmp_path):
    root = tmp_path / "imgs"
    for i in range(4):
        make_image(root / f"{i}.png", (i * 60, 0, 0), seed=i, size=16)
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text(
        "file,size,kind\n0.png,1.5,cat\n1.png,,dog\n2.png,abc,cat\n3.png,2,\nmissing.png,1,cat\n4.png,,\n"
    )
    tasks, items, skipped, _ = read_labels(root, str(csv_path), "size:regression,kind:classification")
    assert tasks[1].classes == ("cat", "dog")
    by_name = {p.rsplit("/", 1)[1]: labels for p, labels in items}
    assert by_name["0.png"] == [1.5, 0.0]
    assert math.isnan(by_name["1.png"][0]) and by_name["1.png"][1] == 1.0
    assert math.isnan(by_name["3.png"][1])
    reasons = " | ".join(s["reason"] for s in skipped)
    assert "size value 'abc'" in reasons and "image file not found" in reasons
    assert len(skipped) == 3  # 2.png (bad value), missing.png, 4.png (file missing)


def test_csv_errors_name_the_file(tmp_path):
    (tmp_path / "imgs").mkdir()
    bad = tmp_path / "labels.csv"
    bad.write_text("name,age\na.png,3\n")
    with pytest.raises(DataError, match="labels.csv' has no file column"):
        read_labels(tmp_path / "imgs", str(bad), "age:regression")
    bad.write_text("file,age\na.png,3\n")
    with pytest.raises(DataError, match="no column for task"):
        read_labels(tmp_path / "imgs", str(bad), "gender:cls")


def test_task_specs():
    tasks = parse_tasks("age:regression,gender:male/female,kind:cls")
    assert tasks == [
        Task("age", "regression"),
        Task("gender", "classification", ("male", "female")),
        Task("kind", "classification"),
    ]
    assert (
        Task("g", "classification", ("m", "f")).encode("f") == 1.0
        and Task("g", "classification", ("m", "f")).encode("0") == 0.0
    )
    for bad in ("age", "age:regression,age:regression", "g:onlyone"):
        with pytest.raises(ConfigError):
            parse_tasks(bad)
    with pytest.raises(ConfigError, match="kind must be"):
        Task("x", "ranking")
    assert Task.from_dict(Task("g", "classification", ("m", "f")).to_dict()) == Task("g", "classification", ("m", "f"))


def test_split_keeps_byte_identical_images_on_one_side_and_reports_label_conflicts(faces):
    files = sorted(faces.glob("*_2017010*.jpg.chip.jpg"))
    for index, source in enumerate(files[:6]):  # copies under other names, some with other labels
        shutil.copy(source, faces / f"{50 + index}_{index % 2}_{(index + 1) % 5}_2018{index:02d}.jpg.chip.jpg")
    for seed in range(5):
        dataset = scan_multitask(faces, "utkface", valid_fraction=0.3, test_fraction=0.3, seed=seed)
        side = {}
        from graft.fileio import sha256_file

        for split, items in dataset.splits.items():
            for path, _ in items:
                assert side.setdefault(sha256_file(path), split) == split
        assert dataset.duplicates["groups_with_copies"] == 6
        assert len(dataset.duplicates["conflicting_labels"]) == 6
        assert sum(dataset.counts().values()) == 18
    manifest = dataset.manifest()
    assert len(manifest["skipped"]) == 3 and manifest["tasks"][0]["kind"] == "regression"
    assert any("not an image" in entry["reason"] for entry in manifest["skipped"])


def test_group_split_rejects_too_few_images(faces):
    _, items, _, _ = read_labels(faces, "utkface")
    with pytest.raises(DataError, match="too few"):
        group_split(items[:1], (0.2, 0.2))
