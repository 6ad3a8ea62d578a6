"""The one training loop: AdamW with per-group learning rates, a one-cycle schedule, validation
every epoch, the best epoch kept, early stopping, a time budget, and fastai's head-first warm-up
as a first phase.

What is learned and how an epoch is judged come from an *objective* (:mod:`graft.core.objectives`);
everything around the loop (progress bars, writing the run folder, logging) is a *callback*
(:mod:`graft.core.callbacks`); where tensors live is the *runtime* (:mod:`graft.core.runtime`).
``start`` lets the loaders feed activations cached at a stage boundary instead of raw inputs (see
``graft.core.inputs``). ``resume`` takes a state rebuilt from a checkpoint (:mod:`graft.core.checkpoint`)
and carries on from the next epoch with the same optimizer and schedule.

A model for this loop has ``forward(inputs, start=k)`` and ``trunks()``: the named
:class:`~graft.core.model.TransferModel` parts a freeze plan applies to (one for a single trunk, one per
tower for soft sharing).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from graft.core.callbacks import Callback, CallbackList
from graft.core.evaluation import collect_outputs
from graft.core.freeze import FreezePlan
from graft.core.objectives import Objective
from graft.core.runtime import CPU, Runtime
from graft.errors import TrainingError

MIN_ONE_CYCLE_STEPS = 8


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
    """Where training stands after an epoch: what callbacks receive, a checkpoint holds and ``fit`` returns.
    ``history`` holds one record (a JSON-able dict) per epoch."""

    model: nn.Module
    objective: Objective
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0
    best_state: dict[str, torch.Tensor] | None = None
    improved: bool = False
    stopped_early: bool = False  # this phase stopped for want of progress (a next phase still runs)
    stopped: str = ""  # why training ended before its last epoch, if it did
    phase: int = 0  # index into the phases
    phase_epoch: int = 0  # epochs completed in that phase
    since_best: int = 0  # epochs of that phase since the best one
    optimizer: torch.optim.Optimizer | None = None
    scheduler: Any = None

    @property
    def epoch(self) -> int:
        return len(self.history)

    @property
    def best_record(self) -> dict[str, Any]:
        return self.history[self.best_epoch - 1]

    def position(self) -> dict[str, Any]:
        """The JSON-able part of the state (a checkpoint stores tensors separately)."""
        return {
            "history": self.history,
            "best_epoch": self.best_epoch,
            "stopped_early": self.stopped_early,
            "stopped": self.stopped,
            "phase": self.phase,
            "phase_epoch": self.phase_epoch,
            "since_best": self.since_best,
        }

    def restore(self, position: dict[str, Any], best_state: dict[str, torch.Tensor] | None) -> None:
        self.history = list(position["history"])
        self.best_epoch, self.stopped_early, self.stopped = (
            position["best_epoch"],
            position["stopped_early"],
            position["stopped"],
        )
        self.phase, self.phase_epoch, self.since_best = (
            position["phase"],
            position["phase_epoch"],
            position["since_best"],
        )
        self.best_state = best_state


def adamw(groups: list[dict]) -> torch.optim.AdamW:
    """AdamW over parameter groups, as one fused kernel for all parameters (on a linear head 0.18 ms a
    step faster than the default per-tensor loop: ~0.4 s of a 10-epoch fit on 8,000 rows)."""
    return torch.optim.AdamW(groups, fused=True)


def one_cycle(optimizer: torch.optim.Optimizer, total_steps: int):
    """fastai's one-cycle schedule (a quarter warming up to each group's rate, then annealing), or a
    constant rate when there are too few steps for one (a handful of batches: OneCycleLR would divide by zero)."""
    if total_steps < MIN_ONE_CYCLE_STEPS:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=[group["lr"] for group in optimizer.param_groups], total_steps=total_steps, pct_start=0.25
    )


def apply_plan(plan: FreezePlan, model: nn.Module) -> None:
    """``plan`` on every trunk of ``model`` (``requires_grad`` per stage)."""
    for trunk in model.trunks().values():
        plan.apply(trunk)


def param_groups(plan: FreezePlan, model: nn.Module, objective: Objective, weight_decay: float) -> list[dict[str, Any]]:
    """The optimizer's groups: each trunk's (named ``trunk.group`` when there are several) and the objective's."""
    trunks = model.trunks()
    groups = []
    for name, trunk in trunks.items():
        for group in plan.param_groups(trunk, weight_decay):
            groups.append({**group, "name": f"{name}.{group['name']}"} if len(trunks) > 1 or name else group)
    return groups + objective.param_groups(plan.lr)


def fit(
    model: nn.Module,
    objective: Objective,
    plan: FreezePlan,
    train_loader,
    valid_loader,
    *,
    epochs: int,
    head_epochs: int = 0,
    patience: int = 5,
    weight_decay: float = 0.01,
    start: int = 0,
    time_budget: float | None = None,
    callbacks: Sequence[Callback] = (),
    runtime: Runtime = CPU,
    resume: FitState | None = None,
    optimizer_state: dict | None = None,
    scheduler_state: dict | None = None,
) -> FitState:
    """Train ``model`` under ``plan`` for up to ``epochs`` epochs (the first ``head_epochs`` the head alone).

    ``time_budget`` (seconds of epochs) stops after the epoch that exceeds it. Returns the state with
    the best weights loaded into ``model``. With ``resume`` (and the optimizer and scheduler states
    saved with it), training continues after the epoch the state describes.
    """
    state = resume if resume is not None else FitState(model=model, objective=objective)
    objective.processes = runtime.processes
    if runtime.processes.rank > 0:  # its own dropout masks: the same ones as rank 0's would tie rows together
        torch.manual_seed(torch.initial_seed() + runtime.processes.rank)
    hooks = CallbackList(callbacks)
    phases = phases_for(plan, epochs, head_epochs)
    hooks.before_fit(state, epochs)
    for phase_index, phase in enumerate(phases):
        if state.stopped and not state.stopped_early:
            break
        if phase_index < state.phase:
            continue
        continuing = phase_index == state.phase and state.phase_epoch > 0
        if continuing and (state.stopped_early or state.phase_epoch >= phase.epochs):
            continue
        apply_plan(phase.plan, model)
        # wrapped after requires_grad is set: DDP registers what trains when built (graft.core.distributed)
        trained = runtime.processes.wrap(model, runtime.device, find_unused=objective.leaves_outputs_unused)
        optimizer = adamw(param_groups(phase.plan, model, objective, weight_decay))
        scheduler = one_cycle(optimizer, phase.epochs * len(train_loader))
        if continuing:
            optimizer.load_state_dict(optimizer_state)
            scheduler.load_state_dict(scheduler_state)
        else:
            state.phase, state.phase_epoch, state.since_best, state.stopped_early, state.stopped = (
                phase_index,
                0,
                0,
                False,
                "",
            )
        state.optimizer, state.scheduler = optimizer, scheduler
        while state.phase_epoch < phase.epochs and not state.stopped:
            _run_epoch(
                state, trained, phase, train_loader, valid_loader, start, patience, time_budget, epochs, runtime, hooks
            )
            hooks.after_epoch(state)
    if state.best_state is not None:
        model.load_state_dict(state.best_state)
    hooks.after_fit(state)
    return state


def set_epoch(loader, epoch: int) -> None:
    """Tell the loader's :class:`EpochSampler` which epoch's order to draw: it is the loader's sampler
    in one process and its batch_sampler under several (each rank yields its share of whole batches)."""
    for sampler in (getattr(loader, "sampler", None), getattr(loader, "batch_sampler", None)):
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)


def _run_epoch(
    state: FitState,
    trained: nn.Module,
    phase: Phase,
    train_loader,
    valid_loader,
    start: int,
    patience: int,
    time_budget: float | None,
    total_epochs: int,
    runtime: Runtime,
    hooks: CallbackList,
) -> None:
    began = time.perf_counter()
    epoch = state.epoch + 1
    set_epoch(train_loader, epoch)
    train_fields = _train_one_epoch(state, trained, phase.plan, train_loader, start, epoch, runtime, hooks)
    hooks.before_validate(state, len(valid_loader))
    outputs, targets = collect_outputs(
        state.model, valid_loader, start=start, runtime=runtime, on_batch=hooks.after_validate_batch
    )
    record = {
        "epoch": epoch,
        **train_fields,
        **state.objective.validate(outputs, targets, state.model),
        "lr": float(state.optimizer.param_groups[0]["lr"]),
        "seconds": time.perf_counter() - began,
        "phase": phase.name,
    }
    record = runtime.processes.from_main(record)  # every rank decides as rank 0 does
    state.improved = not state.history or state.objective.rank(record) > state.objective.rank(state.best_record)
    state.history.append(record)
    state.phase_epoch += 1
    if state.improved:
        state.best_epoch, state.since_best = epoch, 0
        # a copy of each tensor (clone, not deepcopy: deepcopy's per-tensor bookkeeping cost more than the copying)
        state.best_state = {
            name: value.detach().clone() if isinstance(value, torch.Tensor) else copy.deepcopy(value)
            for name, value in state.model.state_dict().items()
        }
    else:
        state.since_best += 1
    if state.since_best >= patience and state.phase_epoch < phase.epochs:
        state.stopped_early, state.stopped = True, f"no better validation score for {patience} epochs"
    elif time_budget is not None and sum(r["seconds"] for r in state.history) >= time_budget and epoch < total_epochs:
        state.stopped = f"time budget of {time_budget:.0f}s used"


def _train_one_epoch(
    state: FitState,
    trained: nn.Module,
    plan: FreezePlan,
    loader,
    start: int,
    epoch: int,
    runtime: Runtime,
    hooks: CallbackList,
) -> dict[str, float]:
    """One pass over ``loader``; ``trained`` is the model, or its DistributedDataParallel wrapper."""
    model, objective, optimizer, scheduler = state.model, state.objective, state.optimizer, state.scheduler
    for trunk in model.trunks().values():
        plan.train_mode(trunk)
    total_loss, seen, sums = 0.0, 0, {}
    hooks.before_epoch(state, len(loader))
    for inputs, targets in loader:
        inputs, targets = runtime.put(inputs), runtime.put(torch.as_tensor(targets))
        with runtime.autocast():
            outputs = trained(inputs, start=start)
            loss = hooks.after_loss(state, objective.loss(outputs, targets, model))
        value = loss.item()
        if not math.isfinite(value):
            raise TrainingError(
                f"the training loss became {value} in epoch {epoch}",
                hint="the learning rate is probably too high: try a 10x smaller --lr",
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        runtime.processes.average_gradients(objective.parameters())
        optimizer.step()
        scheduler.step()
        rows = len(targets)
        total_loss += value * rows
        seen += rows
        for key, amount in objective.train_sums(outputs, targets).items():
            sums[key] = sums.get(key, 0.0) + amount
        hooks.after_batch(state, total_loss / seen)
    totals = runtime.processes.total({"loss": total_loss, "seen": seen, **{f"sum.{k}": v for k, v in sums.items()}})
    seen = max(totals["seen"], 1)
    return {
        "train_loss": totals["loss"] / seen,
        **{key[4:]: amount / seen for key, amount in totals.items() if key.startswith("sum.")},
    }
