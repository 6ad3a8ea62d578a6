"""Training you can trust: kill -9 then --resume equals an uninterrupted run; deterministic reruns are
bit-identical; NaN losses, unwritable folders, tampered run folders and pickle bombs get clear errors."""

import json
import os
import pickle
import signal
import subprocess
import sys
import time

import pytest
import torch

import graft
from graft.errors import BackboneError, ConfigError, RunFolderError, TrainingError
from tests.conftest import TINY_BACKBONE, make_image

ENV = {**os.environ, "GRAFT_ALLOCATOR": "system"}


@pytest.fixture
def slow_folder(tmp_path):
    """3 classes x 24 images: an epoch of the tiny model takes long enough to be killed in."""
    root = tmp_path / "data"
    for index, colour in enumerate(((220, 30, 30), (30, 200, 40), (30, 40, 220))):
        for i in range(24):
            make_image(root / f"c{index}" / f"{i}.png", colour, seed=index * 1000 + i, size=96)
    return root


def _command(data, run, cache):
    return [
        sys.executable,
        "-m",
        "graft",
        "train",
        str(data),
        "--out",
        str(run),
        "--backbone",
        TINY_BACKBONE,
        "--from-scratch",
        "--mode",
        "finetune",
        "--unfreeze",
        "3",
        "--head-epochs",
        "2",
        "--epochs",
        "6",
        "--batch-size",
        "8",
        "--views",
        "2",
        "--seed",
        "3",
        "--deterministic",
        "--workers",
        "0",
        "--cache-dir",
        str(cache),
        "--json",
    ]


def _epochs_done(run) -> int:
    try:
        return len(json.loads((run / "history.json").read_text()))
    except (OSError, ValueError):
        return 0


def _final(run):
    metrics = json.loads((run / "metrics.json").read_text())
    history = json.loads((run / "history.json").read_text())
    return (
        [{k: v for k, v in r.items() if k != "seconds"} for r in history],
        metrics["valid"],
        metrics["best_epoch"],
        (run / "model.safetensors").read_bytes(),
    )


def _kill_then_resume(command, run, epochs_before_kill: int, epochs: int, label: str) -> None:
    """Start ``command`` (a graft train writing ``run``), SIGKILL it after ``epochs_before_kill`` epochs
    (0: once its config is written, during set-up), then ``graft train --resume run``."""
    process = subprocess.Popen(command, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while _epochs_done(run) < epochs_before_kill and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    if epochs_before_kill == 0:
        while not (run / "config.json").exists() and time.time() < deadline:
            time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, f"{label}: the run finished before it could be killed"
    assert _epochs_done(run) < epochs
    resumed = subprocess.run(
        [sys.executable, "-m", "graft", "train", "--resume", str(run), "--json", "--workers", "0"],
        env=ENV,
        capture_output=True,
        text=True,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert not (run / "checkpoint.safetensors").exists()


def test_kill_9_at_several_points_then_resume_equals_an_uninterrupted_run(slow_folder, tmp_path):
    cache = tmp_path / "cache"
    reference = tmp_path / "reference"
    subprocess.run(_command(slow_folder, reference, cache), check=True, env=ENV, capture_output=True)
    expected = _final(reference)
    assert not (reference / "checkpoint.safetensors").exists()
    # kill: during set-up (before any epoch), in the head-only phase, and in the fine-tuning phase
    for label, epochs_before_kill in (("setup", 0), ("head phase", 1), ("finetune phase", 3)):
        run = tmp_path / f"killed-{label.replace(' ', '-')}"
        _kill_then_resume(_command(slow_folder, run, cache), run, epochs_before_kill, 6, label)
        assert _final(run) == expected, label


def test_a_killed_multitask_run_resumes_to_the_uninterrupted_result(tmp_path):
    """Soft sharing (three towers, learned task weights) with augmentation: order, augmentation and loss
    weights all resume."""
    faces = tmp_path / "faces"
    for i in range(60):
        age, gender = 5 + (i * 7) % 70, i % 2
        make_image(
            faces / f"{age}_{gender}_{i % 3}_20170101{i:04d}.jpg.chip.jpg",
            (200 * gender + 20, 2 * age, 200 * (1 - gender)),
            seed=i,
            size=96,
        )

    def command(run):
        return [
            sys.executable,
            "-m",
            "graft",
            "train",
            str(faces),
            "--out",
            str(run),
            "--labels",
            "utkface",
            "--tasks",
            "age,gender",
            "--sharing",
            "soft",
            "--tie",
            "0.1",
            "--mode",
            "finetune",
            "--unfreeze",
            "2",
            "--epochs",
            "5",
            "--batch-size",
            "8",
            "--backbone",
            TINY_BACKBONE,
            "--from-scratch",
            "--image-size",
            "96",
            "--seed",
            "2",
            "--deterministic",
            "--workers",
            "0",
            "--json",
        ]

    def final(run):
        history = json.loads((run / "history.json").read_text())
        return (
            [{k: v for k, v in r.items() if k != "seconds"} for r in history],
            json.loads((run / "metrics.json").read_text())["test"],
            (run / "model.safetensors").read_bytes(),
        )

    subprocess.run(command(tmp_path / "reference"), check=True, env=ENV, capture_output=True)
    expected = final(tmp_path / "reference")
    for label, epochs_before_kill in (("setup", 0), ("epoch 2", 2)):
        run = tmp_path / f"killed-{epochs_before_kill}"
        _kill_then_resume(command(run), run, epochs_before_kill, 5, label)
        assert final(run) == expected, label
    with pytest.raises(RunFolderError, match="finished run"):
        graft.resume(tmp_path / "reference", quiet=True)


def test_resume_refuses_a_folder_that_is_not_a_run(tmp_path):
    with pytest.raises(RunFolderError, match="not a graft run folder that can be resumed"):
        graft.resume(tmp_path)


def test_train_refuses_to_overwrite_an_unfinished_run(class_folder, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.safetensors").write_bytes(b"x")
    with pytest.raises(RunFolderError, match="unfinished run"):
        graft.train(class_folder, run, backbone=TINY_BACKBONE, pretrained=False, quiet=True, num_workers=0)


def _train(data, out, **kwargs):
    options = dict(
        backbone=TINY_BACKBONE, pretrained=False, epochs=2, num_workers=0, quiet=True, batch_size=8, cache=False
    )
    options.update(kwargs)
    return graft.train(data, out, **options)


def test_deterministic_reruns_give_bit_identical_metrics_and_weights(class_folder, tmp_path):
    for name in ("a", "b"):
        _train(
            class_folder,
            tmp_path / name,
            mode="finetune",
            unfreeze=2,
            augment=True,
            seed=5,
            deterministic=True,
            num_workers=2,
        )
    for name in ("history.json", "model.safetensors"):
        a, b = (tmp_path / "a" / name).read_bytes(), (tmp_path / "b" / name).read_bytes()
        if name == "history.json":
            a, b = ([{k: v for k, v in r.items() if k != "seconds"} for r in json.loads(x)] for x in (a, b))
        assert a == b, name
    metrics = [json.loads((tmp_path / n / "metrics.json").read_text()) for n in ("a", "b")]
    assert metrics[0]["valid"] == metrics[1]["valid"]


def test_a_nan_loss_names_the_learning_rate_and_keeps_the_best_weights(class_folder, tmp_path, monkeypatch):
    from graft.core.objectives import Classification

    with pytest.raises(ConfigError, match=r"--lr \(transfer.lr\) must be in \(0, 10\]; got 1e\+30"):
        _train(class_folder, tmp_path / "refused", mode="finetune", unfreeze=2, lr=1e30, epochs=3)
    assert not (tmp_path / "refused").exists()
    calls = []
    original = Classification.loss

    def diverges_in_epoch_two(self, outputs, targets, model):
        calls.append(1)
        loss = original(self, outputs, targets, model)
        return loss * float("nan") if len(calls) > 4 else loss  # 4 batches an epoch

    monkeypatch.setattr(Classification, "loss", diverges_in_epoch_two)
    with pytest.raises(TrainingError, match="learning rate") as raised:
        _train(class_folder, tmp_path / "run", mode="finetune", unfreeze=2, epochs=3, batch_size=6)
    assert "loss became nan in epoch 2" in str(raised.value) and "best weights so far are in" in str(raised.value)
    assert (tmp_path / "run" / "model.safetensors").is_file()


def test_an_unwritable_output_folder_fails_before_training(class_folder, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    began = time.perf_counter()
    with pytest.raises(RunFolderError, match="cannot write"):
        _train(class_folder, blocker / "run")
    assert time.perf_counter() - began < 5


def test_a_tampered_or_truncated_run_folder_is_a_clear_error(class_folder, tmp_path):
    _train(class_folder, tmp_path / "run", epochs=1)
    weights = tmp_path / "run" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: len(weights.read_bytes()) // 2])
    with pytest.raises(RunFolderError, match="damaged or truncated"):
        graft.load(tmp_path / "run")
    _train(class_folder, tmp_path / "run2", epochs=1)
    (tmp_path / "run2" / "config.json").write_text('{"classes": 3}')
    with pytest.raises(RunFolderError, match="damaged"):
        graft.load(tmp_path / "run2")


class _Bomb:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/graft-pickle-bomb",))


def test_a_pickle_bomb_pth_is_refused_without_running_it(tmp_path):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as handle:
        pickle.dump({"conv.weight": _Bomb()}, handle)
    if os.path.exists("/tmp/graft-pickle-bomb"):
        os.unlink("/tmp/graft-pickle-bomb")
    with pytest.raises(BackboneError, match="unpickle"):
        graft.create_backbone(TINY_BACKBONE, weights=path)
    assert not os.path.exists("/tmp/graft-pickle-bomb")


def test_a_builtin_weight_file_with_the_wrong_sha256_is_refused(tmp_path, monkeypatch):
    from graft.image.backbones import get_spec
    from graft.image.backbones.registry import PackagedWeights

    spec = get_spec("tf_efficientnet_lite0")
    fake = tmp_path / "models" / "efficientnet-lite0.pth"
    fake.parent.mkdir()
    torch.save({"w": torch.zeros(1)}, fake)
    monkeypatch.setattr(PackagedWeights, "locate", lambda self: fake)
    with pytest.raises(BackboneError, match="sha256"):
        graft.create_backbone(spec.name)


def test_a_full_disk_is_detected_before_training(class_folder, tmp_path, monkeypatch):
    import collections
    import shutil

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(RunFolderError, match="MB free"):
        _train(class_folder, tmp_path / "run")
    assert not (tmp_path / "run" / "history.json").exists()


def test_a_full_disk_under_the_activation_cache_is_a_clear_error_not_a_crash(class_folder, tmp_path, monkeypatch):
    import errno

    def no_space(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", no_space)
    with pytest.raises(ConfigError, match="activation cache folder .* is full") as raised:
        _train(class_folder, tmp_path / "run", cache=True, cache_dir=tmp_path / "cache")
    assert "--no-cache" in raised.value.hint
    assert not list((tmp_path / "cache").rglob("*.tmp"))  # the half-made chunk is removed


def test_interrupting_training_says_how_to_resume(class_folder, tmp_path, monkeypatch):
    from graft.core import fit as training
    from graft.errors import TrainingInterrupted

    original = training._run_epoch
    calls = []

    def interrupted_in_epoch_two(state, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(state, *args, **kwargs)

    monkeypatch.setattr(training, "_run_epoch", interrupted_in_epoch_two)
    with pytest.raises(TrainingInterrupted, match="interrupted") as raised:
        _train(class_folder, tmp_path / "run", epochs=3)
    assert f"graft train --resume {tmp_path / 'run'}" in raised.value.hint
    monkeypatch.setattr(training, "_run_epoch", original)
    summary = graft.resume(tmp_path / "run", num_workers=0, quiet=True)
    assert summary["epochs_run"] == 3
    with pytest.raises(RunFolderError, match="finished run"):
        graft.resume(tmp_path / "run")


def test_the_cache_space_is_checked_before_the_frozen_pass(class_folder, tmp_path, monkeypatch):
    import collections
    import shutil

    usage = collections.namedtuple("usage", "total used free")
    real = shutil.disk_usage
    cache = str(tmp_path / "cache")
    monkeypatch.setattr(
        shutil,
        "disk_usage",
        lambda path: usage(10**9, 10**9 - 5000, 5000) if str(path).startswith(cache) else real(path),
    )
    with pytest.raises(ConfigError, match=r"has 0 MB free; this run's frozen pass needs about") as raised:
        _train(
            class_folder,
            tmp_path / "run",
            cache=True,
            cache_dir=tmp_path / "cache",
            mode="finetune",
            unfreeze=1,
            views=4,
        )
    assert "--views" in raised.value.hint
    assert not list((tmp_path / "cache").rglob("chunk-*"))  # refused before any row was computed
