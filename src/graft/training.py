"""The training loop: AdamW with per-group learning rates, one-cycle schedule, validation every
epoch, the best epoch kept, early stopping.

The loop knows nothing about files: ``on_epoch_end`` receives the state after each epoch and the
run folder decides what to write. ``start`` lets the loader feed activations cached at a stage
boundary instead of images (see ``graft.cache``).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
from torch import nn

from graft.errors import TrainingError
from graft.evaluation import predict_probabilities
from graft.freeze import FreezePlan
from graft.model import TransferModel


@dataclass
class EpochRecord:
    epoch: int
    train_loss: float
    train_accuracy: float
    valid_loss: float
    valid_accuracy: float
    lr: float
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class FitState:
    """What the loop hands to ``on_epoch_end`` and returns at the end."""

    model: TransferModel
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    history: list[EpochRecord] = field(default_factory=list)
    best_epoch: int = 0
    best_state: dict[str, torch.Tensor] | None = None
    improved: bool = False
    stopped_early: bool = False

    @property
    def best_record(self) -> EpochRecord:
        return self.history[self.best_epoch - 1]


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
    patience: int = 5,
    label_smoothing: float = 0.1,
    weight_decay: float = 0.01,
    start: int = 0,
    on_epoch_end: Callable[[FitState], None] | None = None,
    progress=None,
) -> FitState:
    """Train ``model`` under ``plan`` for up to ``epochs`` epochs; the returned state holds the best weights."""
    plan.apply(model)
    criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    optimizer = torch.optim.AdamW(plan.param_groups(model, weight_decay))
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=[group["lr"] for group in optimizer.param_groups],
        total_steps=epochs * len(train_loader),
        pct_start=0.25,
    )
    state = FitState(model=model, optimizer=optimizer, scheduler=scheduler)
    epoch_task = progress.add_task("epochs", total=epochs, status="") if progress is not None else None
    since_best = 0
    for epoch in range(1, epochs + 1):
        began = time.perf_counter()
        train_loss, train_accuracy = _train_one_epoch(model, plan, train_loader, criterion, optimizer, scheduler, start, progress, epoch)
        probabilities, labels = predict_probabilities(model, valid_loader, start=start, progress=progress, description="validate")
        valid_loss = float(nn.functional.nll_loss(torch.log(torch.from_numpy(probabilities).clamp_min(1e-7)), torch.from_numpy(labels).long()))
        record = EpochRecord(
            epoch=epoch,
            train_loss=train_loss,
            train_accuracy=train_accuracy,
            valid_loss=valid_loss,
            valid_accuracy=float((probabilities.argmax(1) == labels).mean()),
            lr=float(optimizer.param_groups[0]["lr"]),
            seconds=time.perf_counter() - began,
        )
        state.improved = _is_better(record, state.best_record if state.history else None)
        state.history.append(record)
        if state.improved:
            state.best_epoch, since_best = epoch, 0
            state.best_state = copy.deepcopy(model.state_dict())
        else:
            since_best += 1
        state.stopped_early = since_best >= patience and epoch < epochs
        if epoch_task is not None:
            progress.update(epoch_task, advance=1, status=f"valid acc {record.valid_accuracy:.3f} (best {state.best_record.valid_accuracy:.3f} @ {state.best_epoch})")
        if on_epoch_end is not None:
            on_epoch_end(state)
        if state.stopped_early:
            break
    model.load_state_dict(state.best_state)
    return state


def _train_one_epoch(model, plan, loader, criterion, optimizer, scheduler, start, progress, epoch) -> tuple[float, float]:
    plan.train_mode(model)
    total_loss, correct, seen = 0.0, 0, 0
    task = progress.add_task(f"epoch {epoch}", total=len(loader), status="") if progress is not None else None
    for inputs, targets in loader:
        targets = torch.as_tensor(targets)
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


def fit_head_first(model: TransferModel, plan: FreezePlan, train_loader, valid_loader, *, epochs: int, head_epochs: int,
                   on_epoch_end: Callable[[FitState], None] | None = None, **options) -> FitState:
    """fastai's ``fine_tune``: ``head_epochs`` training the new head alone, then the rest of ``epochs`` under ``plan``.

    The head's random start would otherwise send large gradients into the pretrained stages. History
    is numbered across both phases and the best epoch of either is kept. With ``head_epochs=0`` or a
    feature-extraction plan this is :func:`fit`.
    """
    if head_epochs <= 0 or plan.is_feature_extractor or epochs <= head_epochs:
        return fit(model, plan, train_loader, valid_loader, epochs=epochs, on_epoch_end=on_epoch_end, **options)
    head_plan = dataclasses.replace(plan, trainable_from=len(plan.stages), bn_policy="frozen")
    first = fit(model, head_plan, train_loader, valid_loader, epochs=head_epochs, on_epoch_end=on_epoch_end, **options)

    def merged(state: FitState) -> FitState:
        history = first.history + [dataclasses.replace(record, epoch=record.epoch + head_epochs) for record in state.history]
        if state.history and _is_better(state.best_record, first.best_record):
            return dataclasses.replace(state, history=history, best_epoch=state.best_epoch + head_epochs)
        return dataclasses.replace(state, history=history, best_epoch=first.best_epoch, best_state=first.best_state, improved=False)

    def on_second_phase(state: FitState) -> None:
        if on_epoch_end is not None:
            on_epoch_end(merged(state))

    second = merged(fit(model, plan, train_loader, valid_loader, epochs=epochs - head_epochs, on_epoch_end=on_second_phase, **options))
    model.load_state_dict(second.best_state)
    return second
