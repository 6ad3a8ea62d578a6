"""The graft command: JSON on stdout only, clear errors with exit codes, no tracebacks."""

import json
import os
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

import graft
from graft import perf
from graft.cli import app
from tests.conftest import TINY_BACKBONE

runner = CliRunner()


def test_train_json_then_predict_and_evaluate_json(split_folder, tmp_path):
    run = tmp_path / "run"
    result = runner.invoke(
        app,
        [
            "train",
            str(split_folder),
            "--out",
            str(run),
            "--backbone",
            TINY_BACKBONE,
            "--from-scratch",
            "--epochs",
            "1",
            "--workers",
            "0",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["run"] == str(run) and summary["best_epoch"] == 1
    assert isinstance(summary["valid_accuracy"], float) and isinstance(summary["seconds"], float)

    result = runner.invoke(app, ["predict", str(run), str(split_folder / "test" / "red"), "--json"])
    assert result.exit_code == 0, result.output
    predictions = json.loads(result.stdout)
    assert [set(p) for p in predictions] == [{"image", "label", "prob", "probs"}] * 3

    result = runner.invoke(app, ["evaluate", str(run), str(split_folder), "--json"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    assert metrics["n"] == 9 and len(metrics["confusion_matrix"]) == 3


def test_bad_data_folder_is_a_message_not_a_traceback(tmp_path):
    env = {**os.environ, "GRAFT_ALLOCATOR": "system"}
    completed = subprocess.run(
        [sys.executable, "-m", "graft", "train", str(tmp_path / "missing"), "--out", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        env=env,
    )
    assert completed.returncode == 3
    assert "does not exist" in completed.stderr and "Traceback" not in completed.stderr
    assert completed.stdout == ""


def test_unknown_backbone_exit_code_and_hint(class_folder, tmp_path):
    result = runner.invoke(app, ["train", str(class_folder), "--out", str(tmp_path / "run"), "--backbone", "resnet5O"])
    assert result.exit_code == 4
    assert "unknown backbone" in result.output and "did you mean" in result.output


def test_negative_workers_is_a_message_before_any_work(class_folder, tmp_path):
    import graft
    from graft.errors import ConfigError

    result = runner.invoke(
        app,
        [
            "train",
            str(class_folder),
            "--out",
            str(tmp_path / "run"),
            "--backbone",
            TINY_BACKBONE,
            "--from-scratch",
            "--workers",
            "-1",
        ],
    )
    assert result.exit_code != 0 and "--workers must be 0 or more" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "run").exists()  # refused before the run folder or the data were touched
    with pytest.raises(ConfigError, match="--workers"):
        graft.resume(tmp_path / "run", num_workers=-2)
    with pytest.raises(ConfigError, match="--workers"):
        graft.train_multitask(class_folder, tmp_path / "mt", labels="utkface", tasks="gender", num_workers=-1)


def test_bf16_mixed_precision_trains_the_same_run_to_nearly_the_same_losses_and_the_run_says_so(class_folder, tmp_path):
    import json

    options = dict(mode="finetune", unfreeze=1, backbone=TINY_BACKBONE, pretrained=False, epochs=2, quiet=True)
    runs = {p: graft.train(class_folder, tmp_path / p, precision=p, **options) for p in ("fp32", "bf16")}
    assert runs["bf16"]["runtime"] == {"device": "cpu", "precision": "bf16", "processes": 1}
    assert runs["fp32"]["runtime"]["precision"] == "fp32"
    losses = {p: [e["train_loss"] for e in json.loads((tmp_path / p / "history.json").read_text())] for p in runs}
    assert losses["bf16"] != losses["fp32"]  # the forward pass did run in bf16 (8 bits of mantissa)
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=0.05)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_a_cuda_device_on_a_machine_without_one_is_a_message_before_any_work(class_folder, tmp_path):
    for args in (["--device", "cuda"], ["--device", "cuda:1", "--labels", "utkface", "--tasks", "gender"]):
        result = runner.invoke(
            app,
            [
                "train",
                str(class_folder),
                "--out",
                str(tmp_path / "run"),
                "--backbone",
                TINY_BACKBONE,
                "--from-scratch",
                *args,
            ],
        )
        assert result.exit_code == 2 and "sees no CUDA GPU" in result.output and "Traceback" not in result.output, (
            result.output
        )
        assert not (tmp_path / "run").exists()


KEPT_AFTER_FREE = """
import sys
import numpy as np
from graft import perf
if sys.argv[1] == "tuned":
    assert perf.should_tune() and perf.tune_allocator() and perf.allocator_tuned()
def resident() -> int:
    return int(open("/proc/self/statm").read().split()[1]) * 4096
block = np.ones(200_000_000, dtype=np.uint8)
before = resident()
del block
print(before - resident())
"""


@pytest.mark.skipif(not perf.should_tune({}), reason="the thresholds are glibc's")
@pytest.mark.parametrize("allocator", ["system", "tuned"])
def test_tuned_allocator_keeps_freed_blocks_in_the_process(allocator):
    """With graft's thresholds a freed 200 MB block stays mapped for the next batch; glibc's default returns it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GRAFT_ALLOCATOR"}
    completed = subprocess.run(
        [sys.executable, "-c", KEPT_AFTER_FREE, allocator], capture_output=True, text=True, env=env, check=True
    )
    returned = int(completed.stdout)
    assert (returned < 10_000_000) if allocator == "tuned" else (returned > 150_000_000), returned
    assert not perf.should_tune({**env, "MALLOC_MMAP_THRESHOLD_": "1", "MALLOC_TRIM_THRESHOLD_": "1"})
    assert not perf.should_tune({**env, "GRAFT_ALLOCATOR": "system"})


@pytest.mark.parametrize(
    "code, expected_status, expected_stderr", [(None, 0, ""), (3, 3, ""), ("stopped: reason", 1, "stopped: reason\n")]
)
def test_the_command_ends_without_teardown_keeping_its_exit_status_and_output(code, expected_status, expected_stderr):
    """graft's process ends with os._exit after a command (no 1.7 s of module teardown): buffered
    output must still arrive and SystemExit's code must become the exit status."""
    script = (
        "import sys; from graft.perf import exit_without_teardown; sys.stdout.write('buffered, no newline'); "
        f"exit_without_teardown({code!r})"
    )
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert (completed.returncode, completed.stdout, completed.stderr) == (
        expected_status,
        "buffered, no newline",
        expected_stderr,
    )
