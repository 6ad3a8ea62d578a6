"""Pictures people would rather look at: learning curves and confusion matrices (PNG)."""

from __future__ import annotations

import io
from collections.abc import Sequence

from graft.fileio import atomic_write_bytes


def pyplot():
    """matplotlib on the non-interactive backend, imported when a plot is drawn (it pulls in Pillow,
    which the modality-free core must not import)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure, path) -> None:
    plt = pyplot()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    atomic_write_bytes(path, buffer.getvalue())


def _epoch_axes(figure, axes, title: str) -> None:
    """Whole epochs on the x axis (a 2-epoch run must not show 1.2, 1.4, ...), a light grid, and the
    title above the panels' own titles (constrained layout keeps them apart)."""
    from matplotlib.ticker import MaxNLocator

    for axis in axes:
        axis.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=8))
        axis.grid(alpha=0.3)
    if title:
        figure.suptitle(title)


def learning_curve(history: list[dict], path, title: str = "") -> None:
    epochs = [row["epoch"] for row in history]
    figure, (loss_axis, accuracy_axis) = pyplot().subplots(1, 2, figsize=(10, 3.8), layout="constrained")
    loss_axis.plot(epochs, [r["train_loss"] for r in history], "o-", label="train")
    loss_axis.plot(epochs, [r["valid_loss"] for r in history], "o-", label="valid")
    loss_axis.set(xlabel="epoch", ylabel="loss", title="loss")
    accuracy_axis.plot(epochs, [r["train_accuracy"] for r in history], "o-", label="train")
    accuracy_axis.plot(epochs, [r["valid_accuracy"] for r in history], "o-", label="valid")
    accuracy_axis.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    for axis in (loss_axis, accuracy_axis):
        axis.legend()
    _epoch_axes(figure, (loss_axis, accuracy_axis), title)
    save_figure(figure, path)


def confusion_figure(matrix: Sequence[Sequence[int]], classes: Sequence[str], title: str = "confusion matrix"):
    """A confusion matrix as a matplotlib figure, counts written in the cells."""
    size = max(4.0, 0.55 * len(classes) + 2)
    figure, axis = pyplot().subplots(figsize=(size, size))
    axis.imshow(matrix, cmap="Blues")
    axis.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    axis.set_yticks(range(len(classes)), classes)
    axis.set(xlabel="predicted", ylabel="true", title=title)
    peak = max(max(row) for row in matrix) or 1
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            axis.text(j, i, str(value), ha="center", va="center", color="white" if value > peak / 2 else "black")
    return figure


def confusion_matrix(
    matrix: Sequence[Sequence[int]], classes: Sequence[str], path, title: str = "confusion matrix"
) -> None:
    save_figure(confusion_figure(matrix, classes, title), path)


def task_curves(history: list[dict], path, title: str = "") -> None:
    """Multi-task runs: training loss and each task's validation metric (accuracy, or MAE) per epoch."""
    epochs = [row["epoch"] for row in history]
    names = list(history[0]["valid"]) if history else []
    columns = min(3, 1 + len(names))  # at most three panels a row, so titles and ticks keep their room
    rows = -(-(1 + len(names)) // columns)
    figure, axes = pyplot().subplots(
        rows, columns, figsize=(4.2 * columns, 3.4 * rows), squeeze=False, layout="constrained"
    )
    panels = list(axes.flat)
    panels[0].plot(epochs, [r["train_loss"] for r in history], "o-")
    panels[0].set(xlabel="epoch", title="training loss (weighted)")
    for axis, name in zip(panels[1:], names):
        key = "accuracy" if history[0]["valid"][name]["kind"] == "classification" else "mae"
        axis.plot(epochs, [r["valid"][name][key] for r in history], "o-")
        axis.set(xlabel="epoch", title=f"{name}: valid {key}")
    for axis in panels[1 + len(names) :]:
        axis.set_visible(False)
    _epoch_axes(figure, panels[: 1 + len(names)], title)
    save_figure(figure, path)
