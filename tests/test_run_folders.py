"""Run folders are never overwritten, never written by two processes, never left empty by an early error."""

import fcntl
import json
import os

import pytest

import graft
from graft.errors import DataError, RunFolderError
from tests.conftest import TINY_BACKBONE

OPTIONS = dict(backbone=TINY_BACKBONE, pretrained=False, epochs=1, num_workers=0, quiet=True, batch_size=8, cache=False)


def test_a_finished_run_is_never_overwritten_and_overwrite_moves_it_aside(class_folder, tmp_path):
    run = tmp_path / "run"
    graft.train(class_folder, run, **OPTIONS)
    weights = (run / "model.safetensors").read_bytes()
    with pytest.raises(RunFolderError, match="already holds a finished run") as raised:
        graft.train(class_folder, run, **OPTIONS, seed=1)
    assert "--overwrite" in raised.value.hint
    assert (run / "model.safetensors").read_bytes() == weights  # untouched
    summary = graft.train(class_folder, run, **OPTIONS, seed=1, overwrite=True)
    aside = summary["moved_aside"]
    assert os.path.basename(aside).startswith("run.replaced-")
    with open(os.path.join(aside, "model.safetensors"), "rb") as handle:
        assert handle.read() == weights  # the old run is kept whole
    assert json.loads((run / "config.json").read_text())["options"]["runtime"]["seed"] == 1
    assert not (run / ".graft.lock").exists()


def test_a_folder_with_other_files_is_refused(class_folder, tmp_path):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "thesis.tex").write_text("precious")
    with pytest.raises(RunFolderError, match="already holds files"):
        graft.train(class_folder, folder, **OPTIONS)
    assert sorted(p.name for p in folder.iterdir()) == ["thesis.tex"]


def test_an_early_error_leaves_no_empty_run_folder(tmp_path):
    empty = tmp_path / "empty-data"
    empty.mkdir()
    with pytest.raises(DataError):
        graft.train(empty, tmp_path / "run", **OPTIONS)
    assert not (tmp_path / "run").exists()


def test_one_process_at_a_time_writes_a_run(class_folder, tmp_path):
    run = tmp_path / "run"
    graft.train(class_folder, run, **{**OPTIONS, "epochs": 2})
    (run / "metrics.json").unlink()  # as if killed: unfinished, resumable
    with open(run / ".graft.lock", "a+") as held:  # another process training there
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("4242")
        held.flush()
        with pytest.raises(RunFolderError, match=r"being written by another graft process \(pid 4242\)"):
            graft.resume(run, quiet=True)
    assert graft.resume(run, quiet=True, num_workers=0)["epochs_run"] == 2  # lock released: resume goes on


def test_a_tampered_preprocessing_is_refused_not_allocated(class_folder, tmp_path):
    run = tmp_path / "run"
    graft.train(class_folder, run, **OPTIONS)
    config = json.loads((run / "config.json").read_text())
    for field, value, message in (
        ("input_size", 100000, "input_size"),
        ("input_size", -1, "input_size"),
        ("std", [0, 0, 0], "std"),
    ):
        tampered = {**config, "preprocessing": {**config["preprocessing"], field: value}}
        (run / "config.json").write_text(json.dumps(tampered))
        with pytest.raises(RunFolderError, match=message):
            graft.load(run)


def test_a_full_disk_under_the_run_folder_is_a_message_naming_the_file(class_folder, tmp_path, monkeypatch):
    import errno

    from graft import fileio

    original = fileio.atomic_write_bytes

    def full_for_history(path, data):
        if str(path).endswith("history.json"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(path, data)

    monkeypatch.setattr(fileio, "atomic_write_bytes", full_for_history)
    with pytest.raises(RunFolderError, match=r"cannot write '.*history.json': No space left on device") as raised:
        graft.train(class_folder, tmp_path / "run", **OPTIONS)
    assert "--resume" in raised.value.hint


def test_half_written_files_of_a_killed_run_are_cleaned_and_files_share_one_mode(class_folder, tmp_path):
    run = tmp_path / "run"
    graft.train(class_folder, run, **{**OPTIONS, "epochs": 2})
    modes = {path.name: path.stat().st_mode & 0o777 for path in run.iterdir() if path.is_file()}
    assert len(set(modes.values())) == 1, modes  # report.html like every other file
    (run / "metrics.json").unlink()
    (run / ".history.json.abc123.tmp").write_bytes(b"")  # what kill -9 mid-write leaves
    graft.resume(run, quiet=True, num_workers=0)
    assert not list(run.glob("*.tmp"))


def test_a_class_with_one_image_is_named(tmp_path):
    from tests.conftest import make_image

    for name, count in (("cat", 5), ("dog", 5), ("lonely", 1)):
        for i in range(count):
            make_image(tmp_path / "data" / name / f"{i}.png", (40 * i, 80, 120), seed=i)
    with pytest.raises(DataError, match="class 'lonely'"):
        graft.train(tmp_path / "data", tmp_path / "run", **OPTIONS)


@pytest.mark.skipif(os.getuid() != 0, reason="giving a folder to another user needs root")
def test_a_resumed_run_does_not_write_into_a_cache_folder_of_another_user(class_folder, tmp_path, monkeypatch):
    foreign = tmp_path / "their-cache"
    run = tmp_path / "run"
    graft.train(class_folder, run, **{**OPTIONS, "cache": True, "cache_dir": foreign, "epochs": 2})
    (run / "metrics.json").unlink()  # unfinished: resume starts over and computes its rows again
    for path in [foreign, *foreign.rglob("*")]:
        os.chown(path, 12345, 12345)
    before = sorted(str(p) for p in foreign.rglob("*"))
    monkeypatch.setenv("GRAFT_CACHE_DIR", str(tmp_path / "mine"))
    graft.resume(run, quiet=True, num_workers=0)
    assert sorted(str(p) for p in foreign.rglob("*")) == before
    assert list((tmp_path / "mine").rglob("chunk-*.npy"))


def test_checkpoints_are_skipped_while_they_would_cost_more_than_a_tenth_of_training(tmp_path, monkeypatch):
    """Short epochs (a head on cached features) must not pay a checkpoint each: after one that took
    50 ms, the next is written once ten times that has passed, and the first epoch always leaves one."""
    import time
    from types import SimpleNamespace

    from graft.core import runs

    written = []

    def slow_checkpoint(path, state):
        time.sleep(0.05)
        written.append(len(state.history))

    monkeypatch.setattr(runs, "save_checkpoint", slow_checkpoint)
    run = runs.RunFolder(tmp_path / "run")
    run.prepare()
    saver = runs.SaveEveryEpoch(run, plot=lambda history: None)
    state = SimpleNamespace(history=[], improved=False)
    for epoch in range(1, 6):  # five quick epochs: only the first is checkpointed
        state.history.append({"epoch": epoch})
        saver.after_epoch(state)
    time.sleep(0.5)  # then an epoch past ten times the checkpoint's cost
    state.history.append({"epoch": 6})
    saver.after_epoch(state)
    assert written == [1, 6]
    assert len(json.loads((tmp_path / "run" / "history.json").read_text())) == 6  # the history after every epoch
