"""A newcomer's first hour: fast answers to mistakes, results on stdout, JSON errors, --version,
check --labels, test-time augmentation, the report's options and worst mistakes, readable plots."""

import json
import os
import subprocess
import sys
import time

import pytest

import graft
from graft.errors import ConfigError
from tests.conftest import TINY_BACKBONE


def _graft(*args: str, columns: str | None = None, **kwargs) -> subprocess.CompletedProcess:
    """The installed command as a user runs it (the allocator re-exec included)."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    if columns:
        environ["COLUMNS"] = columns
    return subprocess.run([sys.executable, "-m", "graft", *args], capture_output=True, text=True, env=environ, **kwargs)


@pytest.mark.parametrize(
    "args,message,code",
    [
        (["train", "/nonexistent", "--out", "RUN"], "data folder '/nonexistent' does not exist", 3),
        (["train", "DATA", "--out", "RUN", "--epochs", "0"], "--epochs (budget.epochs) must be in [1, 10,000]", 2),
        (["predict", "/nonexistent-run", "x.jpg"], "run folder '/nonexistent-run' does not exist", 5),
        (["evaluate", "/nonexistent-run"], "run folder '/nonexistent-run' does not exist", 5),
        (["check", "/nonexistent"], "data folder '/nonexistent' does not exist", 3),
        (["classify", "/nonexistent.jpg"], "'/nonexistent.jpg' does not exist", 3),
    ],
)
def test_a_mistake_is_answered_in_well_under_a_second_without_importing_torch(tmp_path, args, message, code):
    args = [str(tmp_path / "data") if a == "DATA" else str(tmp_path / "run") if a == "RUN" else a for a in args]
    (tmp_path / "data").mkdir()
    began = time.perf_counter()
    result = _graft(*args)
    seconds = time.perf_counter() - began
    assert result.returncode == code, result.stderr
    assert message in " ".join(result.stderr.split())
    assert seconds < 1.5, f"{seconds:.2f}s to say: {result.stderr}"  # the target is 1 s quiet; CI machines are busy


def test_version_and_help_answer_at_once():
    result = _graft("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"graft {graft.__version__}"


def test_with_json_an_error_is_a_json_object_on_stdout_with_the_same_exit_code(tmp_path):
    result = _graft("train", str(tmp_path / "missing"), "--out", str(tmp_path / "run"), "--json")
    assert result.returncode == 3
    error = json.loads(result.stdout)
    assert error["exit_code"] == 3 and "does not exist" in error["error"] and "hint" in error


def test_results_go_to_stdout_and_progress_to_stderr(split_folder, tmp_path):
    run = tmp_path / "run"
    graft.train(split_folder, run, backbone=TINY_BACKBONE, pretrained=False, epochs=1, num_workers=0, quiet=True)
    predicted = _graft("predict", str(run), str(split_folder / "test" / "red"))
    assert predicted.returncode == 0, predicted.stderr
    lines = predicted.stdout.strip().splitlines()
    assert len(lines) == 3 and all(
        line.split("\t")[2].endswith(".png") for line in lines
    )  # label, prob, path: one line each
    evaluated = _graft("evaluate", str(run))
    assert "accuracy" in evaluated.stdout and "per class" in evaluated.stdout
    listed = _graft("backbones")
    assert "tf_efficientnet_lite0" in listed.stdout and "mobilenetv2_100" in listed.stdout


def test_check_with_labels_reads_the_folder_as_train_does(tmp_path):
    from tests.conftest import make_image

    faces = tmp_path / "faces"
    for i in range(12):
        make_image(
            faces / f"{20 + i}_{i % 2}_0_2017010100{i:02d}.jpg.chip.jpg", (200 * (i % 2), 40, 90), seed=i, size=32
        )
    (faces / "no_label_here.jpg").write_bytes((faces / "20_0_0_201701010000.jpg.chip.jpg").read_bytes())
    result = graft.check(faces, labels="utkface", tasks="age,gender")
    assert result["ok"] and result["layout"] == "multitask" and result["classes"] == {"gender": ["male", "female"]}
    assert any("no_label_here.jpg" in entry["file"] for entry in result["skipped"])
    with pytest.raises(ConfigError, match="--tasks .* needs --labels"):
        graft.check(faces, tasks="age")


def test_test_time_augmentation_averages_seeded_views_and_is_refused_where_it_does_not_apply(split_folder, tmp_path):
    run = tmp_path / "run"
    graft.train(split_folder, run, backbone=TINY_BACKBONE, pretrained=False, epochs=1, num_workers=0, quiet=True)
    plain, augmented = graft.evaluate(run), graft.evaluate(run, tta=2)
    assert augmented["tta"] == 2 and augmented == graft.evaluate(run, tta=2)  # seeded: the same numbers again
    assert augmented["loss"] != plain["loss"]
    with pytest.raises(ConfigError, match="--tta"):
        graft.evaluate(run, tta=-1)


def test_the_report_shows_the_options_the_date_and_the_worst_mistakes_with_their_images(split_folder, tmp_path):
    run = tmp_path / "run"
    graft.train(
        split_folder, run, backbone=TINY_BACKBONE, pretrained=False, epochs=1, num_workers=0, quiet=True, seed=3
    )
    metrics = json.loads((run / "metrics.json").read_text())
    html = (run / "report.html").read_text()
    assert "<h2>Options</h2>" in html and "seed" in html and "created" in html and str(split_folder) in html
    worst = metrics["test"]["worst"]
    matrix = metrics["test"]["confusion_matrix"]
    mistakes = sum(map(sum, matrix)) - sum(matrix[i][i] for i in range(len(matrix)))
    assert len(worst) == min(8, mistakes)  # every mistake up to eight, and nothing that was right
    assert all(entry["predicted"] != entry["true"] for entry in worst)
    assert [entry["prob_true"] for entry in worst] == sorted(entry["prob_true"] for entry in worst)
    assert "Worst mistakes (test)" in html
    assert html.count("data:image/jpeg;base64,") == len(worst)


def test_a_short_runs_learning_curve_counts_whole_epochs(tmp_path, monkeypatch):
    from graft.core import plots

    figures = []
    monkeypatch.setattr(plots, "save_figure", lambda figure, path: figures.append(figure))
    history = [
        {"epoch": e, "train_loss": 1.0 / e, "valid_loss": 1.2 / e, "train_accuracy": 0.5, "valid_accuracy": 0.4}
        for e in (1, 2)
    ]
    plots.learning_curve(history, tmp_path / "curve.png", title="two epochs")
    for axis in figures[0].axes:
        ticks = [tick for tick in axis.get_xticks() if 1 <= tick <= 2]
        assert ticks and all(float(tick).is_integer() for tick in ticks)


def test_at_80_columns_the_backbones_table_keeps_what_one_types_whole():
    result = _graft("backbones", columns="80")
    assert result.returncode == 0
    rows = [line.split("│") for line in result.stdout.splitlines() if line.startswith("│")]
    names, packages = [row[1] for row in rows], [row[4] for row in rows]
    assert {"tf_efficientnet_lite0", "mobilenetv2_100"} <= {name.strip() for name in names}
    assert not any("…" in cell for cell in names + packages)  # folded onto the next line, never cut


def test_json_output_is_valid_utf8_whatever_the_file_names():
    from graft.console import printable

    name = b"caf\xe9.jpg".decode("utf-8", "surrogateescape")  # a Latin-1 name read on a UTF-8 system
    shown = printable({"file": name, "ok": ["plain"]})
    assert shown["file"] == "caf\\xe9.jpg" and shown["ok"] == ["plain"]
    shown["file"].encode("utf-8")  # no lone surrogate left
    assert json.loads(json.dumps(shown, ensure_ascii=False)) == shown
