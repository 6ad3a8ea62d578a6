"""The training loop: AdamW with per-group learning rates, a one-cycle schedule, validation every
epoch, the best epoch kept, early stopping, and fastai's head-first warm-up as a first phase.

The loop knows nothing about files: ``on_epoch_end`` receives the :class:`FitState` after each epoch
(the run folder writes history, best weights and a checkpoint from it), and ``resume`` takes a state
rebuilt from such a checkpoint and carries on from the next epoch with the same optimizer and
schedule. ``start`` lets the loaders feed activations cached at a stage boundary instead of images
(see ``graft.inputs``).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from graft.errors import TrainingError
from graft.evaluation import predict_probabilities
from graft.freeze import FreezePlan
from graft.model import TransferModel

MIN_ONE_CYCLE_STEPS = 8


@dataclass
class EpochRecord:
    epoch: int
    train_loss: float
    train_accuracy: float
    valid_loss: float
    valid_accuracy: float
    lr: float
    seconds: float
    phase: str = "main"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Phase:
    """A stretch of epochs under one freeze plan, with its own optimizer and schedule."""

    name: str
    plan: FreezePlan
    epochs: int


def phases_for(plan: FreezePlan, epochs: int, head_epochs: int = 0) -> list[Phase]:
    """fastai's ``fine_tune``: ``head_epochs`` training the new head alone, then the rest under ``plan``.

    The head's random start would otherwise send large gradients into the pretrained stages. With
    ``head_epochs=0`` or a feature-extraction plan there is one phase.
    """
    if head_epochs <= 0 or plan.is_feature_extractor or epochs <= head_epochs:
        return [Phase("main", plan, epochs)]
    head_plan = dataclasses.replace(plan, trainable_from=len(plan.stages), bn_policy="frozen")
    return [Phase("head", head_plan, head_epochs), Phase("main", plan, epochs - head_epochs)]


@dataclass
class FitState:
    """Where training stands after an epoch: what ``on_epoch_end`` receives, a checkpoint holds and ``fit`` returns."""

    model: TransferModel
    history: list[EpochRecord] = field(default_factory=list)
    best_epoch: int = 0
    best_state: dict[str, torch.Tensor] | None = None
    improved: bool = False
    stopped_early: bool = False
    phase: int = 0  # index into the phases
    phase_epoch: int = 0  # epochs completed in that phase
    since_best: int = 0  # epochs of that phase since the best one
    optimizer: torch.optim.Optimizer | None = None
    scheduler: Any = None

    @property
    def epoch(self) -> int:
        return len(self.history)

    @property
    def best_record(self) -> EpochRecord:
        return self.history[self.best_epoch - 1]

    def position(self) -> dict[str, Any]:
        """The JSON-able part of the state (a checkpoint stores tensors separately)."""
        return {"history": [r.to_dict() for r in self.history], "best_epoch": self.best_epoch, "stopped_early": self.stopped_early,
                "phase": self.phase, "phase_epoch": self.phase_epoch, "since_best": self.since_best}

    @classmethod
    def from_position(cls, model: TransferModel, position: dict[str, Any], best_state: dict[str, torch.Tensor]) -> "FitState":
        return cls(model=model, history=[EpochRecord(**r) for r in position["history"]], best_epoch=position["best_epoch"], best_state=best_state,
                   stopped_early=position["stopped_early"], phase=position["phase"], phase_epoch=position["phase_epoch"], since_best=position["since_best"])


def adamw(groups: list[dict]) -> torch.optim.AdamW:
    """AdamW over parameter groups, as one fused kernel for all parameters (on a linear head 0.18 ms a
    step faster than the default per-tensor loop: ~0.4 s of a 10-epoch fit on 8,000 rows)."""
    return torch.optim.AdamW(groups, fused=True)


def one_cycle(optimizer: torch.optim.Optimizer, total_steps: int):
    """fastai's one-cycle schedule (a quarter warming up to each group's rate, then annealing), or a
    constant rate when there are too few steps for one (a handful of batches: OneCycleLR would divide by zero)."""
    if total_steps < MIN_ONE_CYCLE_STEPS:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=[group["lr"] for group in optimizer.param_groups], total_steps=total_steps, pct_start=0.25)


def _is_better(record: EpochRecord, best: EpochRecord | None) -> bool:
    if best is None:
        return True
    return (record.valid_accuracy, -record.valid_loss) > (best.valid_accuracy, -best.valid_loss)


def fit(
    model: TransferModel,
    plan: FreezePlan,
    train_loader,
    valid_loader,
    *,
    epochs: int,
    head_epochs: int = 0,
    patience: int = 5,
    label_smoothing: float = 0.1,
    weight_decay: float = 0.01,
    start: int = 0,
    on_epoch_end: Callable[[FitState], None] | None = None,
    progress=None,
    resume: FitState | None = None,
    optimizer_state: dict | None = None,
    scheduler_state: dict | None = None,
) -> FitState:
    """Train ``model`` under ``plan`` for up to ``epochs`` epochs (the first ``head_epochs`` the head alone).

    Returns the state with the best weights loaded into ``model``. With ``resume`` (and the optimizer
    and scheduler states saved with it), training continues after the epoch the state describes.
    """
    criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    state = resume if resume is not None else FitState(model=model)
    phases = phases_for(plan, epochs, head_epochs)
    epoch_task = progress.add_task("epochs", total=epochs, completed=state.epoch, status="") if progress is not None else None
    for phase_index, phase in enumerate(phases):
        if phase_index < state.phase:
            continue
        continuing = phase_index == state.phase and state.phase_epoch > 0
        if continuing and (state.stopped_early or state.phase_epoch >= phase.epochs):
            continue
        phase.plan.apply(model)
        optimizer = adamw(phase.plan.param_groups(model, weight_decay))
        scheduler = one_cycle(optimizer, phase.epochs * len(train_loader))
        if continuing:
            optimizer.load_state_dict(optimizer_state)
            scheduler.load_state_dict(scheduler_state)
        else:
            state.phase, state.phase_epoch, state.since_best, state.stopped_early = phase_index, 0, 0, False
        state.optimizer, state.scheduler = optimizer, scheduler
        while state.phase_epoch < phase.epochs and not state.stopped_early:
            _run_epoch(state, phase, train_loader, valid_loader, criterion, start, patience, progress)
            if epoch_task is not None:
                best = state.best_record
                progress.update(epoch_task, advance=1, status=f"valid acc {state.history[-1].valid_accuracy:.3f} (best {best.valid_accuracy:.3f} @ {state.best_epoch})")
            if on_epoch_end is not None:
                on_epoch_end(state)
    if state.best_state is not None:
        model.load_state_dict(state.best_state)
    return state


def _run_epoch(state: FitState, phase: Phase, train_loader, valid_loader, criterion, start: int, patience: int, progress) -> None:
    began = time.perf_counter()
    epoch = state.epoch + 1
    sampler = getattr(train_loader, "sampler", None)
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)
    model = state.model
    train_loss, train_accuracy = _train_one_epoch(model, phase.plan, train_loader, criterion, state.optimizer, state.scheduler, start, progress, epoch)
    probabilities, labels = predict_probabilities(model, valid_loader, start=start, progress=progress, description="validate")
    valid_loss = float(nn.functional.nll_loss(torch.log(torch.from_numpy(probabilities).clamp_min(1e-7)), torch.from_numpy(labels).long()))
    record = EpochRecord(
        epoch=epoch,
        train_loss=train_loss,
        train_accuracy=train_accuracy,
        valid_loss=valid_loss,
        valid_accuracy=float((probabilities.argmax(1) == labels).mean()),
        lr=float(state.optimizer.param_groups[0]["lr"]),
        seconds=time.perf_counter() - began,
        phase=phase.name,
    )
    state.improved = _is_better(record, state.best_record if state.history else None)
    state.history.append(record)
    state.phase_epoch += 1
    if state.improved:
        state.best_epoch, state.since_best = epoch, 0
        state.best_state = copy.deepcopy(model.state_dict())
    else:
        state.since_best += 1
    state.stopped_early = state.since_best >= patience and state.phase_epoch < phase.epochs


def _train_one_epoch(model, plan, loader, criterion, optimizer, scheduler, start, progress, epoch) -> tuple[float, float]:
    plan.train_mode(model)
    total_loss, correct, seen = 0.0, 0, 0
    task = progress.add_task(f"epoch {epoch}", total=len(loader), status="") if progress is not None else None
    for inputs, targets in loader:
        targets = torch.as_tensor(targets)
        if inputs.dim() == 4:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        outputs = model(inputs, start=start)
        loss = criterion(outputs, targets)
        if not math.isfinite(loss.item()):
            raise TrainingError(
                f"the training loss became {loss.item()} in epoch {epoch}",
                hint="the learning rate is probably too high: try --lr 10x smaller",
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total_loss += loss.item() * len(targets)
        correct += int((outputs.argmax(1) == targets).sum())
        seen += len(targets)
        if task is not None:
            progress.update(task, advance=1, status=f"loss {total_loss / seen:.3f}")
    if task is not None:
        progress.remove_task(task)
    return total_loss / seen, correct / seen
