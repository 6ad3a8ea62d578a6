"""Callbacks around the one loop (fastai's idea): progress bars, writing the run folder after each
epoch, logging to TensorBoard. The loop calls every hook of every callback in order; a callback
overrides the hooks it needs. ``after_loss`` may return a changed loss (an extra term)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    import torch

    from graft.core.fit import FitState


class Callback:
    def before_fit(self, state: "FitState", epochs: int) -> None: ...
    def before_epoch(self, state: "FitState", batches: int) -> None: ...
    def after_loss(self, state: "FitState", loss: "torch.Tensor") -> "torch.Tensor":
        return loss
    def after_batch(self, state: "FitState", mean_loss: float) -> None: ...
    def before_validate(self, state: "FitState", batches: int) -> None: ...
    def after_validate_batch(self) -> None: ...
    def after_epoch(self, state: "FitState") -> None: ...
    def after_fit(self, state: "FitState") -> None: ...


class CallbackList(Callback):
    """Several callbacks called as one, in order."""

    def __init__(self, callbacks: Sequence[Callback]):
        self.callbacks = list(callbacks)

    def before_fit(self, state, epochs):
        for callback in self.callbacks:
            callback.before_fit(state, epochs)

    def before_epoch(self, state, batches):
        for callback in self.callbacks:
            callback.before_epoch(state, batches)

    def after_loss(self, state, loss):
        for callback in self.callbacks:
            loss = callback.after_loss(state, loss)
        return loss

    def after_batch(self, state, mean_loss):
        for callback in self.callbacks:
            callback.after_batch(state, mean_loss)

    def before_validate(self, state, batches):
        for callback in self.callbacks:
            callback.before_validate(state, batches)

    def after_validate_batch(self):
        for callback in self.callbacks:
            callback.after_validate_batch()

    def after_epoch(self, state):
        for callback in self.callbacks:
            callback.after_epoch(state)

    def after_fit(self, state):
        for callback in self.callbacks:
            callback.after_fit(state)


class ProgressBars(Callback):
    """Rich progress: one bar for the epochs (with the objective's status line), one per epoch's batches and validation."""

    def __init__(self, progress: Any):
        self.progress = progress
        self.epochs = self.batches = None

    def before_fit(self, state, epochs):
        self.epochs = self.progress.add_task("epochs", total=epochs, completed=state.epoch, status="")

    def before_epoch(self, state, batches):
        self.batches = self.progress.add_task(f"epoch {state.epoch + 1}", total=batches, status="")

    def after_batch(self, state, mean_loss):
        self.progress.update(self.batches, advance=1, status=f"loss {mean_loss:.3f}")

    def before_validate(self, state, batches):
        self.progress.remove_task(self.batches)
        self.batches = self.progress.add_task("validate", total=batches, status="")

    def after_validate_batch(self):
        self.progress.advance(self.batches)

    def after_epoch(self, state):
        self.progress.remove_task(self.batches)
        best = state.best_record
        self.progress.update(self.epochs, advance=1, status=f"{state.objective.status(state.history[-1])} (best @ {state.best_epoch}: {state.objective.status(best)})")
