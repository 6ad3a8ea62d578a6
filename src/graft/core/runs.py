"""A run is one folder: config, freeze plan, class names, preprocessing, safetensors weights,
history, metrics, data manifest, plots and an HTML report. ``load_run`` is the only loader and
every kind of run trains and resumes through :mod:`graft.core.trainer`: both look the run's kind
(config.json's ``kind``) up in a small registry, so a new kind of run plugs in without editing them.

Like Hugging Face's ``save_pretrained`` folders, a run can be moved and loaded anywhere; nothing
in it is pickled, and every file is written atomically.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch

from graft.core.callbacks import Callback
from graft.core.checkpoint import save_checkpoint
from graft.core.freeze import FreezePlan
from graft.core.registry import Registry
from graft.core.run_files import (
    CHECKPOINT,
    CONFIG,
    HISTORY,
    LOCK,
    MANIFEST,
    METRICS,
    PLAN,
    WEIGHTS,
    require_run_folder,
)
from graft.errors import GraftError, RunFolderError, TrainingInterrupted
from graft.fileio import atomic_save_tensors, atomic_write_bytes, atomic_write_json, load_tensors, read_json


class RunFolder:
    """Paths and atomic writers for one run folder, and the rules that keep it safe: a new run never
    writes into a folder that holds anything (``--overwrite`` moves the old contents aside, never deletes
    them), one process at a time writes a run (a lock naming its pid), and a run that fails before it
    wrote its config leaves no empty folder behind."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.created = False
        self.moved_aside: Path | None = None
        self._lock = None

    def claim(self, overwrite: bool = False) -> None:
        """Make the folder a new run's own: refuse one that holds files (an unfinished run: say how to resume
        it; anything else: unless ``overwrite``, which renames it to ``NAME.replaced-TIME``), then create,
        check and lock it."""
        if self.path.exists() and not self.path.is_dir():
            raise RunFolderError(f"'{self.path}' is a file, not a run folder", hint="choose another --out")
        if self.path.is_dir() and any(entry.name != LOCK for entry in self.path.iterdir()):
            self.refuse_unfinished()
            what = "a finished run" if (self / METRICS).is_file() else "files"
            if not overwrite:
                raise RunFolderError(
                    f"'{self.path}' already holds {what}; graft never writes a run over anything",
                    hint="choose another --out, or pass --overwrite (the old contents are moved aside, not deleted)",
                )
            self.lock()  # nobody may be writing it while it is moved
            self.release()
            stamp = time.strftime("%Y%m%d-%H%M%S")
            self.moved_aside = self.path.with_name(f"{self.path.name}.replaced-{stamp}")
            os.rename(self.path, self.moved_aside)
        self.created = not self.path.exists()
        self.prepare()
        self.lock()

    def lock(self) -> None:
        """Hold the folder's lock (released by :meth:`release`, or when the process ends), or fail naming
        the process that holds it."""
        import fcntl

        handle = open(self / LOCK, "a+")  # noqa: SIM115 (held until release)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise RunFolderError(
                f"'{self.path}' is being written by another graft process (pid {holder})",
                hint="wait for it to finish, or stop it and continue with graft train --resume",
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._lock = handle
        for stale in self.path.glob("*.tmp"):  # half-written files of a process killed mid-write (no writer now)
            stale.unlink(missing_ok=True)

    def release(self) -> None:
        """Let go of the lock (the lock file goes too)."""
        if self._lock is not None:
            (self / LOCK).unlink(missing_ok=True)
            self._lock.close()
            self._lock = None

    def abandon(self) -> None:
        """After an error before the run's config was written: remove the folder if this run created it."""
        if self.created and not (self / CONFIG).is_file():
            import shutil

            self.release()
            shutil.rmtree(self.path, ignore_errors=True)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def config_to_resume(self) -> dict[str, Any]:
        """The config of an unfinished run that ``--resume`` can continue; a clear error for anything else."""
        if not (self / CONFIG).is_file() or not (self / MANIFEST).is_file():
            raise RunFolderError(
                f"'{self.path}' is not a graft run folder that can be resumed (no config.json or manifest.json)",
                hint="start it with graft train DATA --out RUN",
            )
        config = read_config(self.path)
        if "options" not in config:
            raise RunFolderError(
                f"'{self.path}' was written without its training options (an older graft); it cannot be resumed"
            )
        if not (self / CHECKPOINT).is_file() and (self / METRICS).is_file():
            raise RunFolderError(
                f"'{self.path}' is a finished run; there is nothing to resume",
                hint=f"graft evaluate {self.path}, or train again with another --out",
            )
        return config

    def refuse_unfinished(self) -> None:
        """Training afresh into a killed run's folder would destroy what ``--resume`` can continue."""
        if (self / CHECKPOINT).is_file():
            raise RunFolderError(
                f"'{self.path}' holds an unfinished run",
                hint=f"continue it with: graft train --resume {self.path} (or choose another --out)",
            )

    def interrupted(self) -> TrainingInterrupted:
        """The error for Ctrl-C during training: every completed epoch is in this folder."""
        return TrainingInterrupted(
            f"interrupted; every completed epoch is saved in '{self.path}'",
            hint=f"continue with: graft train --resume {self.path}",
        )

    def prepare(self) -> None:
        """Create the folder and prove it is writable now, not after an hour of training."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / ".write-test"
            probe.write_bytes(b"x" * 65536)
            probe.unlink()
        except OSError as error:
            raise RunFolderError(
                f"cannot write to run folder '{self.path}': {error.strerror or error}", hint="choose another --out"
            ) from None

    def require_space(self, model: torch.nn.Module) -> None:
        """Fail now if the disk cannot hold the weights and checkpoints this run will write."""
        import shutil

        parameter_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        needed = parameter_bytes * 6 + (16 << 20)  # weights, checkpoint (current + best + two Adam moments), plots
        free = shutil.disk_usage(self.path).free
        if free < needed:
            raise RunFolderError(
                f"only {free / 1e6:.0f} MB free where '{self.path}' lives; this run needs about {needed / 1e6:.0f} MB",
                hint="free some space or choose another --out",
            )

    @contextlib.contextmanager
    def writing(self, name: str) -> Iterator[None]:
        """A failed write (a full disk, a folder made read-only mid-run) is a clear error naming the file;
        the previous version of the file is intact (every write is atomic)."""
        try:
            yield
        except OSError as error:
            raise RunFolderError(
                f"cannot write '{self.path / name}': {error.strerror or error}; "
                "the previous version of the file is intact",
                hint=f"free some space (or restore write access), then continue with graft train --resume {self.path}"
                if (self / CONFIG).is_file()
                else "free some space, or choose another --out",
            ) from None

    def write_json(self, name: str, obj: Any) -> None:
        with self.writing(name):
            atomic_write_json(self.path / name, obj)

    def write_text(self, name: str, text: str) -> None:
        with self.writing(name):
            atomic_write_bytes(self.path / name, text.encode("utf-8"))

    def write_weights(self, state: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
        # safetensors writes several metadata keys in an order that changes from process to process: one key
        # (as the checkpoint has) keeps the same weights the same bytes, whichever process wrote them
        packed = {"graft": json.dumps(metadata, sort_keys=True)} if metadata else None
        with self.writing(WEIGHTS):
            atomic_save_tensors(self.path / WEIGHTS, state, packed)


class SaveEveryEpoch(Callback):
    """After each epoch: history, the best weights (when they improved) and a checkpoint, each written
    atomically; the learning curve too, at most every ``plot_every`` seconds (a live curve for long
    runs; short epochs would pay more for plots than for training).

    The checkpoint (the model, the best weights, the optimizer's moments: several times the weights) is
    skipped after an epoch that follows the last one by less than ``checkpoint_cost`` times what writing it
    took: its cost stays under about a tenth of training, and a run killed in between loses at most that much
    training when it resumes (on cached features EfficientNet-Lite0's epochs take 15 ms, its checkpoint 50 ms).
    The first epoch always leaves one; an epoch longer than that always does."""

    def __init__(
        self, run: RunFolder, plot: Callable[[list[dict]], None], plot_every: float = 30.0, checkpoint_cost: float = 10
    ):
        self.run, self.plot, self.plot_every, self.checkpoint_cost = run, plot, plot_every, checkpoint_cost
        self.last_plot = time.perf_counter()
        self.last_checkpoint, self.checkpoint_seconds = time.perf_counter(), 0.0

    def after_epoch(self, state) -> None:
        self.run.write_json(HISTORY, state.history)
        if state.improved:
            self.run.write_weights(state.model.state_dict(), {"epoch": str(state.best_epoch)})
        if time.perf_counter() - self.last_checkpoint >= self.checkpoint_cost * self.checkpoint_seconds:
            began = time.perf_counter()
            with self.run.writing(CHECKPOINT):
                save_checkpoint(self.run / CHECKPOINT, state)
            self.last_checkpoint = time.perf_counter()
            self.checkpoint_seconds = self.last_checkpoint - began
        if time.perf_counter() - self.last_plot > self.plot_every:
            self.plot(state.history)
            self.last_plot = time.perf_counter()


class TrainedRun(Protocol):
    """What a loaded run of any kind offers (export and serving build on this): the model, how inputs
    are prepared, predictions, evaluation (default: the run's own held-out split) and an example input."""

    model: torch.nn.Module
    preprocessing: Any
    config: dict[str, Any]
    path: Path

    def predict(self, inputs: Sequence[str | os.PathLike], batch_size: int = 32) -> list[dict[str, Any]]: ...

    def evaluate(self, data: str | os.PathLike | None = None, batch_size: int = 32) -> dict[str, Any]: ...

    def example_input(self) -> Any: ...


# Run kinds (config.json's "kind") and where each kind's :class:`graft.core.trainer.RunKind` lives, as
# "module:object" names rather than imports, so this module depends on no kind (Hugging Face's
# auto-class mappings work the same way). A new kind calls register_run_kind.
RUN_KINDS = Registry(
    "run kind",
    RunFolderError,
    {
        "classifier": "graft.core.classifier:KIND",
        "multitask": "graft.multitask.run:KIND",
        "adaptation": "graft.adaptation.run:KIND",
        "reweighted": "graft.adaptation.reweighted:KIND",
        "self-taught": "graft.pretraining.self_taught:FEATURES_ONLY",
    },
)


def register_run_kind(kind: str, where: str) -> None:
    """Make runs of ``kind`` train, load and resume through the RunKind object at ``where`` ("module:name")."""
    RUN_KINDS.register(kind, where)


def run_kind(kind: str) -> Any:
    """The RunKind object of ``kind`` (see :class:`graft.core.trainer.RunKind`)."""
    return RUN_KINDS.get(kind)


def read_config(folder: Path) -> dict[str, Any]:
    """A run folder's config.json, or a clear error."""
    try:
        config = read_json(folder / CONFIG)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise RunFolderError(f"'{folder / CONFIG}' cannot be read as JSON ({type(error).__name__}: {error})") from None
    if not isinstance(config, dict):
        raise RunFolderError(f"'{folder / CONFIG}' is not a graft run config (not a JSON object)")
    return config


def kind_of(config: dict[str, Any]) -> str:
    """A run's kind; runs written before kinds were recorded are single-task classifiers."""
    return str(config.get("kind", "classifier"))


def load_run(path: str | os.PathLike) -> TrainedRun:
    """Load a run folder of any kind. Raises :class:`RunFolderError` if it is incomplete or damaged."""
    folder = require_run_folder(path)
    config = read_config(folder)
    return run_kind(kind_of(config)).load_trained(folder, config)


def load_weights(model: torch.nn.Module, folder: Path) -> None:
    """Load the run's safetensors weights into ``model`` (strictly), or raise :class:`RunFolderError`."""
    try:
        state = load_tensors(folder / WEIGHTS)
    except Exception as error:
        raise RunFolderError(f"'{folder / WEIGHTS}' is damaged or truncated: {error}") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise RunFolderError(
            f"'{folder / WEIGHTS}' does not match the config's model: {str(error).splitlines()[0]}"
        ) from None


def load_plan(path: str | os.PathLike) -> FreezePlan:
    try:
        return FreezePlan.from_dict(read_json(Path(path) / PLAN))
    except (OSError, json.JSONDecodeError, KeyError, GraftError) as error:
        raise RunFolderError(f"cannot read the freeze plan of '{path}': {error}") from None
