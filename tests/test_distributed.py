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
from tests.test_adaptation import domains  # noqa: F401 (a fixture)


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


def test_a_mistake_under_nproc_gets_each_processs_one_line_and_graft_s_exit_code(tmp_path):
    command = [sys.executable, "-m", "graft", "train", str(tmp_path / "missing"), "--out", str(tmp_path / "r")]
    done = subprocess.run([*command, "--nproc", "2"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 3  # a DataError's, not torchrun's 1
    assert done.stderr.count("does not exist or is not a folder") == 2 and "process 1: error:" in done.stderr
    assert "Traceback" not in done.stderr and "ChildFailedError" not in done.stderr


def test_two_processes_train_like_one_and_only_rank_0_writes_the_run(class_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("GRAFT_CACHE_DIR", str(tmp_path / "cache"))
    scratch_before = set(Path(tempfile.gettempdir()).glob("graft-rank*"))
    command = [sys.executable, "-m", "graft", "train", str(class_folder), "--out", str(tmp_path / "two"), "--json"]
    command += ["--mode", "finetune", "--unfreeze", "1", "--nproc", "2", *OPTIONS]
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
        backbone=TINY_BACKBONE,
        pretrained=False,
        epochs=3,
        batch_size=8,
        seed=0,
        lr=0.05,
        quiet=True,
    )
    assert _chunks(tmp_path / "cache") == chunks  # the shared pass left the cache complete: one process adds nothing
    # The same data, batches and maths, BatchNorm of the trained stage included (its statistics are the whole
    # batch's: graft.core.whole_batch_norm); only the head's dropout masks differ. Measured:
    # validation losses within 0.25%, train losses (taken under dropout) within 2.2%; with each rank's share
    # normalised alone they drift to 1.1% and 18% by epoch 3.
    assert two["valid_accuracy"] == one["valid_accuracy"] and two["epochs_run"] == one["epochs_run"] == 3
    histories = [json.loads((tmp_path / name / "history.json").read_text()) for name in ("one", "two")]
    for single, shared in zip(*histories):
        assert shared["train_loss"] == pytest.approx(single["train_loss"], rel=0.05)
        assert shared["valid_loss"] == pytest.approx(single["valid_loss"], rel=0.006)
    written = {path.name for path in (tmp_path / "two").iterdir()}
    assert {"config.json", "model.safetensors", "history.json", "report.html"} <= written
    # rank 1's scratch copy is gone (other graft runs on the machine may come and go meanwhile)
    assert not set(Path(tempfile.gettempdir()).glob("graft-rank*")) - scratch_before
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
    folders = {"colours": str(colours), "faces": f"{faces}:utkface:gender"}
    options = dict(backbone=TINY_BACKBONE, pretrained=False, epochs=3, batch_size=8, seed=0, lr=0.05, quiet=True)
    one = graft.train_multitask(
        None, tmp_path / "one", domains=folders, mode="finetune", unfreeze=1, bn="frozen", **options
    )
    command = [sys.executable, "-m", "graft", "train", "--out", str(tmp_path / "two"), "--json", "--nproc", "2"]
    command += [arg for name, path in folders.items() for arg in ("--domain", f"{name}={path}")]
    command += ["--mode", "finetune", "--unfreeze", "1", "--bn", "frozen", *OPTIONS]
    done = subprocess.run(command, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    two = json.loads(done.stdout)
    assert two["runtime"]["processes"] == 2 and two["epochs_run"] == one["epochs_run"] == 3
    histories = [json.loads((tmp_path / name / "history.json").read_text()) for name in ("one", "two")]
    for single, shared in zip(*histories):
        # Each task's loss is the whole batch's mean (every rank's count summed), so two processes take one
        # process's step, dropout masks aside: measured, validation losses within 0.6%, task weights within
        # 0.25%, train losses within 1.4% (before, with each rank's own per-task means: 9%, 2%, and no match).
        assert shared["valid_score"] == single["valid_score"]
        assert shared["train_loss"] == pytest.approx(single["train_loss"], rel=0.03)
        for domain in folders:
            assert shared["valid"][domain]["loss"] == pytest.approx(single["valid"][domain]["loss"], rel=0.02)
            assert shared["task_weights"][domain] == pytest.approx(single["task_weights"][domain], rel=0.01)


def _two_machines(command: list[str], caches: tuple[Path, Path], timeout: float = 240) -> list:
    """``command`` (graft's arguments) run as torchrun does on two machines of one process each, here two
    launchers on this machine meeting at a local rendezvous; each "machine" with its own activation cache folder
    (or the same one). Returns both launchers' completed processes."""
    import os
    import socket

    with socket.socket() as probe:  # a free port for the rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    launchers = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes",
                "2",
                "--nproc_per_node",
                "1",
                "--node_rank",
                str(node),
                "--rdzv-backend",
                "c10d",
                "--rdzv-endpoint",
                f"127.0.0.1:{port}",
                "--rdzv-id",
                "graft-test",
                "-m",
                "graft",
                *command,
            ],
            env={**os.environ, "GRAFT_CACHE_DIR": str(cache)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for node, cache in enumerate(caches)
    ]
    finished = []
    for launcher in launchers:
        out, err = launcher.communicate(timeout=timeout)
        finished.append(subprocess.CompletedProcess(launcher.args, launcher.returncode, out, err))
    return finished


def test_two_machines_train_through_torchrun_and_must_share_the_cache(class_folder, tmp_path):
    """torchrun's usual --nnodes / --rdzv-endpoint: the run trains over both, rank 0's machine writes the run.
    Machines that do not share the activation cache get one clear error, not a crash on a missing row."""
    command = ["train", str(class_folder), "--out", str(tmp_path / "run"), "--json", "--mode", "finetune"]
    command += ["--unfreeze", "1", *OPTIONS]
    shared = tmp_path / "cache"
    done = _two_machines(command, (shared, shared))
    assert all(launcher.returncode == 0 for launcher in done), done[0].stderr[-3000:] + done[1].stderr[-3000:]
    summaries = [json.loads(launcher.stdout) for launcher in done if launcher.stdout.strip()]
    assert len(summaries) == 1 and summaries[0]["runtime"]["processes"] == 2 and summaries[0]["epochs_run"] == 3
    assert (tmp_path / "run" / "model.safetensors").is_file()
    apart = _two_machines([*command[:3], str(tmp_path / "apart"), *command[4:]], (tmp_path / "a", tmp_path / "b"))
    assert all(launcher.returncode != 0 for launcher in apart)
    said = apart[0].stderr + apart[1].stderr
    assert "the processes of a run must share the activation cache" in said and "--cache-dir" in said


def _alignment_gradients(method: str, processes: Processes) -> list:
    """The gradients of one adaptation step on a generated batch of 8 source and 8 target rows, this rank's
    share of it (the whole batch for one process), averaged over the ranks as DDP averages them, and the
    BatchNorm's running statistics after the step."""
    import torch

    from graft.adaptation.methods import method_named
    from graft.adaptation.objective import UNLABELLED, AdaptationObjective
    from graft.core.whole_batch_norm import whole_batch_norms

    torch.manual_seed(0)  # the same initial weights and batch on every rank
    bottleneck = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.BatchNorm1d(4))
    classifier = torch.nn.Linear(4, 3)
    whole_batch_norms(bottleneck)  # what Processes.wrap does to the model it hands DDP
    inputs = torch.randn(16, 6)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1] + [UNLABELLED] * 8)
    objective = AdaptationObjective(method_named(method), 1.0, 4)
    objective.processes, objective.total_steps = processes, 2
    objective.steps.fill_(1)  # halfway: the ramped terms (DANN, CORAL) weigh more than 0
    if objective.extra is not None:
        objective.extra.eval()  # the discriminator's dropout masks would differ between the ranks
    rows = processes.part(range(8)) + processes.part(range(8, 16))
    features = bottleneck(inputs[rows])
    objective.loss((classifier(features), features), labels[rows], None).backward()
    parameters = [*bottleneck.parameters(), *classifier.parameters(), *objective.parameters()]
    gradients = [parameter.grad.clone() for parameter in parameters if parameter.grad is not None]
    if processes.distributed:
        for gradient in gradients:
            torch.distributed.all_reduce(gradient)
            gradient /= processes.world
    statistics = [bottleneck[1].running_mean.clone(), bottleneck[1].running_var.clone()]
    return [tensor.numpy() for tensor in gradients + statistics]


def _alignment_rank(rank: int, store: str, results: str) -> None:
    import numpy as np
    import torch

    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        found = {method: _alignment_gradients(method, Processes(rank, 2)) for method in ("coral", "dann", "mcc")}
    finally:
        torch.distributed.destroy_process_group()
    if rank == 0:
        np.savez(results, **{f"{method}.{i}": g for method, grads in found.items() for i, g in enumerate(grads)})


def test_the_alignment_term_is_the_whole_batchs_over_two_processes(tmp_path):
    """A covariance (CORAL) or class confusion (MCC) of half a batch is not half the whole batch's, nor are
    BatchNorm's statistics: the ranks gather their rows and sum their statistics, and the step two processes
    take is the one process's, to float rounding."""
    import numpy as np
    import torch.multiprocessing

    from graft.core.distributed import SINGLE

    results = tmp_path / "two.npz"
    torch.multiprocessing.spawn(_alignment_rank, args=(str(tmp_path / "store"), str(results)), nprocs=2)
    two = np.load(results)
    for method in ("coral", "dann", "mcc"):
        single = _alignment_gradients(method, SINGLE)
        assert len(single) == len([key for key in two.files if key.startswith(method + ".")]) >= 8
        for index, gradient in enumerate(single):
            np.testing.assert_allclose(two[f"{method}.{index}"], gradient, rtol=1e-4, atol=1e-6)


def test_an_adaptation_run_trains_in_two_processes(domains, tmp_path, monkeypatch):  # noqa: F811
    """AdaBN's statistics (rank 0's), the sharded frozen rows of both domains, mixed batches split between the
    ranks, MCC and the head's BatchNorm on the whole batch: the run completes with one summary and rank 0's
    run folder. What it learns is close, not equal: the head's dropout masks differ, which on 7 validation
    images of a random network moves the scores by whole images (the step's exactness: the test above;
    1 against 2 processes on PACS: bench/distributed.py --adapt)."""
    from tests.test_adaptation import _adapt

    monkeypatch.setenv("GRAFT_CACHE_DIR", str(tmp_path / "cache"))
    source, target = domains
    command = [sys.executable, "-m", "graft", "adapt", str(source), str(target), "--out", str(tmp_path / "two")]
    command += ["--method", "adabn+mcc", "--nproc", "2", "--workers", "0", "--json", *OPTIONS]
    done = subprocess.run(command, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    two = json.loads(done.stdout)  # one summary: rank 1 prints none
    assert two["runtime"]["processes"] == 2 and two["method"] == "adabn+mcc" and two["epochs_run"] == 3
    chunks = _chunks(tmp_path / "cache")
    assert chunks and all(count % 2 == 0 for count in chunks)  # each rank computed its share of every pass
    one = _adapt(source, target, tmp_path / "one", method="adabn+mcc", epochs=3, seed=0, lr=0.05)
    assert _chunks(tmp_path / "cache") == chunks  # the shared passes left the cache complete
    assert json.loads((tmp_path / "two" / "history.json").read_text())[-1]["epoch"] == one["epochs_run"] == 3
    assert two["target_accuracy"] is not None and (tmp_path / "two" / "domain_statistics.safetensors").is_file()


def test_a_reweighted_run_trains_in_two_processes_with_rank_0s_weights(domains, tmp_path, monkeypatch):  # noqa: F811
    """Sample-selection bias over two processes: both share the frozen pass of the pooled features, rank 0
    estimates the importance weights and the others take them; a one-process run on the same cached rows
    estimates the very same weights."""
    monkeypatch.setenv("GRAFT_CACHE_DIR", str(tmp_path / "cache"))
    source, target = domains
    command = [sys.executable, "-m", "graft", "train", str(source), "--reweight", str(target), "--out"]
    command += [str(tmp_path / "two"), "--nproc", "2", "--workers", "0", "--json", *OPTIONS]
    done = subprocess.run(command, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    two = json.loads(done.stdout)
    assert two["kind"] == "reweighted" and two["runtime"]["processes"] == 2 and two["epochs_run"] == 3
    chunks = _chunks(tmp_path / "cache")
    assert chunks and all(count % 2 == 0 for count in chunks)  # the pooled features' pass was shared too
    graft.train(source, tmp_path / "one", reweight=target, backbone=TINY_BACKBONE, pretrained=False, epochs=1,
                batch_size=8, seed=0, num_workers=0, quiet=True)  # fmt: skip
    weights = [json.loads((tmp_path / name / "importance_weights.json").read_text()) for name in ("one", "two")]
    assert weights[1]["train"] == pytest.approx(weights[0]["train"], rel=1e-6)


def _rank_process(run: Path, rank: int) -> int | None:
    """The pid of the graft process that torchrun started as ``rank`` of the run writing ``run`` (only that run's:
    another graft run on the machine, a benchmark's, must not be the one killed)."""
    for entry in Path("/proc").iterdir():
        try:
            command = (entry / "cmdline").read_bytes().split(b"\0")
            environ = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if b"graft" in command and str(run).encode() in command and f"RANK={rank}".encode() in environ:
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
    victim = _rank_process(run, 1)
    assert victim is not None and started.poll() is None, "the run finished before rank 1 could be killed"
    os.kill(victim, signal.SIGKILL)
    started.wait(timeout=120)
    assert started.returncode != 0 and _epochs_done(run) < 12 and (run / "checkpoint.safetensors").exists()
    said = started.stderr.read().decode()  # the launcher says what happened (rank 0 may be stopped before it can)
    assert "process 1 of the run ended by signal SIGKILL" in said and "graft train --resume" in said
    assert "Traceback" not in said
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
