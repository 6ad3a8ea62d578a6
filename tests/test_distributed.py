"""A run over several processes (torchrun, DistributedDataParallel on gloo): each batch split between the
ranks, the frozen pass sharded, rank 0 alone writing the run; and what is refused for now."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import graft
from graft.core.config import RunConfig
from graft.core.distributed import Processes
from graft.core.reproducibility import EpochSampler
from graft.core.runtime import Runtime
from graft.errors import ConfigError
from tests.conftest import TINY_BACKBONE


def _chunks(cache: Path) -> list[int]:
    """Chunk files per namespace of the activation cache."""
    return [len(list(index.parent.glob("chunk-*.npy"))) for index in sorted(cache.glob("*/index.json"))]


OPTIONS = [
    "--backbone",
    TINY_BACKBONE,
    "--from-scratch",
    "--epochs",
    "3",
    "--batch-size",
    "8",
    "--seed",
    "0",
    "--lr",
    "0.05",
]


def test_every_batch_is_split_between_the_ranks_and_nothing_else_changes():
    whole = list(EpochSampler(21, seed=3, batch_size=8))
    parts = [list(EpochSampler(21, seed=3, batch_size=8, processes=Processes(rank, 2))) for rank in (0, 1)]
    assert len(parts[0]) == len(parts[1]) == len(whole) == 3  # every rank steps as often as one process would
    for batch, first, second in zip(whole, *parts):
        assert sorted(first + second) == sorted(batch) and not set(first) & set(second)
    lonely = Processes(1, 4).part([(1, 7)])  # a last batch smaller than the world: no rank is left without a row
    assert lonely == [(1, 7)]


def test_each_epoch_draws_a_new_order_whether_the_sampler_is_a_sampler_or_a_batch_sampler():
    import torch

    from graft.core.fit import set_epoch

    class Keys(torch.utils.data.Dataset):  # what each (epoch, index) key names: the index
        def __getitem__(self, key):
            return key[1]

    def batches(loader, epoch: int) -> list:
        set_epoch(loader, epoch)
        return [list(map(int, batch)) for batch in loader]

    one = torch.utils.data.DataLoader(Keys(), batch_size=8, sampler=EpochSampler(21, seed=3))
    shared = EpochSampler(21, seed=3, batch_size=8, processes=Processes(0, 2))
    several = torch.utils.data.DataLoader(Keys(), batch_sampler=shared)
    for loader in (one, several):  # several processes: the EpochSampler is the batch_sampler (the bug of 5f9c33d)
        first, second = batches(loader, 1), batches(loader, 2)
        assert first != second and batches(loader, 1) == first


def test_what_several_processes_do_not_do_yet_is_refused():
    from graft.core.classifier import KIND
    from graft.core.trainer import _refuse_in_several_processes

    several = Runtime(processes=Processes(0, 2))
    for changes, message in (
        ({"mode": "auto"}, "--mode auto trains in one process"),
        ({"mode": "fewshot"}, "--mode fewshot trains in one process"),
        ({"mode": "finetune", "greedy_epochs": 1, "pretrained": False}, "--greedy-epochs"),
    ):
        with pytest.raises(ConfigError, match=message):
            _refuse_in_several_processes(RunConfig(data="d", **changes), KIND, several)
    _refuse_in_several_processes(RunConfig(data="d", mode="auto"), KIND, Runtime())  # one process: anything goes
    from graft.adaptation.run import KIND as ADAPTATION
    from graft.multitask.run import KIND as MULTITASK

    with pytest.raises(ConfigError, match="adaptation runs train in one process"):
        _refuse_in_several_processes(RunConfig(data="d", target="t", mode="finetune"), ADAPTATION, several)
    _refuse_in_several_processes(RunConfig(data="d", labels="utkface", mode="finetune"), MULTITASK, several)


def test_nproc_refuses_what_does_not_apply(class_folder, tmp_path):
    from typer.testing import CliRunner

    from graft.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["train", str(class_folder), "--out", str(tmp_path / "r"), "--nproc", "0"])
    assert result.exit_code == 2 and "--nproc must be at least 1" in result.output
    result = runner.invoke(app, ["train", str(class_folder), "--resume", str(tmp_path / "r"), "--nproc", "1"])
    assert result.exit_code == 2 and "DATA cannot be changed" in result.output  # --nproc itself may go with --resume


def test_two_processes_train_like_one_and_only_rank_0_writes_the_run(class_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("GRAFT_CACHE_DIR", str(tmp_path / "cache"))
    scratch_before = set(Path(tempfile.gettempdir()).glob("graft-rank*"))
    command = [sys.executable, "-m", "graft", "train", str(class_folder), "--out", str(tmp_path / "two"), "--json"]
    command += ["--mode", "finetune", "--unfreeze", "1", "--bn", "frozen", "--nproc", "2", *OPTIONS]
    done = subprocess.run(command, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    two = json.loads(done.stdout)  # one summary: rank 1 prints none
    chunks = _chunks(tmp_path / "cache")
    assert chunks and all(count == 2 for count in chunks)  # each rank computed its share of every namespace
    one = graft.train(
        class_folder,
        tmp_path / "one",
        mode="finetune",
        unfreeze=1,
        bn="frozen",
        backbone=TINY_BACKBONE,
        pretrained=False,
        epochs=3,
        batch_size=8,
        seed=0,
        lr=0.05,
        quiet=True,
    )
    assert _chunks(tmp_path / "cache") == chunks  # the shared pass left the cache complete: one process adds nothing
    # the same data, batches and maths (dropout masks aside): the same scores, losses within 2% (0.3% measured)
    assert two["valid_accuracy"] == one["valid_accuracy"] and two["epochs_run"] == one["epochs_run"] == 3
    histories = [json.loads((tmp_path / name / "history.json").read_text()) for name in ("one", "two")]
    for single, shared in zip(*histories):
        assert shared["train_loss"] == pytest.approx(single["train_loss"], rel=0.02)
        assert shared["valid_loss"] == pytest.approx(single["valid_loss"], rel=0.02)
    written = {path.name for path in (tmp_path / "two").iterdir()}
    assert {"config.json", "model.safetensors", "history.json", "report.html"} <= written
    assert set(Path(tempfile.gettempdir()).glob("graft-rank*")) == scratch_before  # rank 1's scratch copy is gone
    assert graft.load(tmp_path / "two").predict([str(next(class_folder.rglob("*.png")))])[0]["label"]


def test_a_multi_domain_run_trains_in_two_processes_like_in_one(tmp_path, monkeypatch):
    """Each rank's share of a batch can hold no row of a domain: its head is then out of that rank's loss
    (DDP looks for unused parameters), and the task weights, outside DDP, are averaged by hand."""
    from tests.conftest import COLOURS, make_image
    from tests.test_multitask import make_faces

    monkeypatch.setenv("GRAFT_CACHE_DIR", str(tmp_path / "cache"))
    colours = tmp_path / "colours"
    for index, (name, colour) in enumerate(COLOURS.items()):
        for i in range(8):
            make_image(colours / name / f"{i}.png", colour, seed=index * 50 + i, size=32)
    faces = make_faces(tmp_path / "faces")
    domains = {"colours": str(colours), "faces": f"{faces}:utkface:gender"}
    options = dict(backbone=TINY_BACKBONE, pretrained=False, epochs=3, batch_size=8, seed=0, lr=0.05, quiet=True)
    one = graft.train_multitask(
        None, tmp_path / "one", domains=domains, mode="finetune", unfreeze=1, bn="frozen", **options
    )
    command = [sys.executable, "-m", "graft", "train", "--out", str(tmp_path / "two"), "--json", "--nproc", "2"]
    command += [arg for name, path in domains.items() for arg in ("--domain", f"{name}={path}")]
    command += ["--mode", "finetune", "--unfreeze", "1", "--bn", "frozen", *OPTIONS]
    done = subprocess.run(command, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    two = json.loads(done.stdout)
    assert two["runtime"]["processes"] == 2 and two["epochs_run"] == one["epochs_run"] == 3
    histories = [json.loads((tmp_path / name / "history.json").read_text()) for name in ("one", "two")]
    for single, shared in zip(*histories):
        # What the ranks learn matches (validation losses within 12%: 9% measured after epoch 1, 2% after
        # epoch 3; task weights within 5%). The train loss does not: each rank's loss sums the tasks its share
        # holds rows of, so a share without a domain reports (and weighs) one term fewer than the batch would.
        assert shared["valid_score"] == single["valid_score"]
        for domain in domains:
            assert shared["valid"][domain]["loss"] == pytest.approx(single["valid"][domain]["loss"], rel=0.12)
            assert shared["task_weights"][domain] == pytest.approx(single["task_weights"][domain], rel=0.05)


def _rank_process(rank: int) -> int | None:
    """The pid of this machine's graft process that torchrun started as ``rank``."""
    for entry in Path("/proc").iterdir():
        try:
            command = (entry / "cmdline").read_bytes().split(b"\0")
            environ = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if b"graft" in command and b"train" in command and f"RANK={rank}".encode() in environ:
            return int(entry.name)
    return None


def test_killing_one_rank_stops_the_run_and_resume_in_two_processes_finishes_it(tmp_path, monkeypatch):
    import os
    import signal
    import time

    from tests.test_resume import _epochs_done, make_image

    monkeypatch.setenv("GRAFT_CACHE_DIR", str(tmp_path / "cache"))
    data = tmp_path / "data"
    for index, colour in enumerate(((220, 30, 30), (30, 200, 40), (30, 40, 220))):
        for i in range(24):
            make_image(data / f"c{index}" / f"{i}.png", colour, seed=index * 1000 + i, size=96)
    run = tmp_path / "run"
    command = [sys.executable, "-m", "graft", "train", str(data), "--out", str(run), "--nproc", "2", *OPTIONS]
    command += ["--mode", "finetune", "--unfreeze", "3", "--epochs", "12", "--patience", "20", "--workers", "0"]
    started = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 180
    while _epochs_done(run) < 2 and started.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    victim = _rank_process(1)
    assert victim is not None and started.poll() is None, "the run finished before rank 1 could be killed"
    os.kill(victim, signal.SIGKILL)
    started.wait(timeout=120)
    assert started.returncode != 0 and _epochs_done(run) < 12 and (run / "checkpoint.safetensors").exists()
    before = json.loads((run / "history.json").read_text())
    resumed = subprocess.run(
        [sys.executable, "-m", "graft", "train", "--resume", str(run), "--nproc", "2", "--json"],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    history = json.loads((run / "history.json").read_text())
    assert len(history) == 12 and json.loads(resumed.stdout)["epochs_run"] == 12
    assert history[0]["train_loss"] == before[0]["train_loss"]  # kept (the first epoch always leaves a checkpoint)
    assert not (run / "checkpoint.safetensors").exists()
