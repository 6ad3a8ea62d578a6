"""When does transfer pay? ``graft curve`` measures it on the user's own data.

``--per-class``: test accuracy against labelled examples per class, for each source (``scratch``: the
same network from random weights; ``imagenet``: the default pretrained backbone; a run folder, e.g. one
``graft pretrain`` wrote; any backbone name), with seeded repeats (mean and spread), and says in words
where transfer helps, where it stops mattering and where it hurts (negative transfer).

``--by-depth``: Yosinski et al.'s layer table for one source run: transfer its first ``n`` stages (the
rest start from random weights) for every ``n``, kept frozen or fine-tuned with the rest.

Every point is an ordinary ``graft train`` on a folder of links to the sampled files (so the activation
cache, keyed by file contents, serves every point after the first), judged on one fixed held-out split
and selected on another. Points are saved as they finish (``curve.json``): a killed curve resumes.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from graft.console import progress, progress_task
from graft.errors import ConfigError
from graft.fileio import atomic_write_json, read_json

STEPS = 150  # optimiser steps a point trains for at least (small samples get more epochs)
MIN_EPOCHS, MAX_EPOCHS = 10, 60
MARGIN = 1.0  # accuracy points below which a difference "does not matter", unless the spread is larger
SELECT_PER_CLASS, JUDGE_PER_CLASS = 50, 500  # a point is validated every epoch: the splits stay small
RESULT, PLOT = "curve.json", "curve.png"


@dataclass(frozen=True)
class Source:
    """One line of the curve: what the network starts from and how much of it trains."""

    label: str
    backbone: str | None
    pretrained: bool
    mode: str
    weights: str | None = None
    image_size: int | None = None
    unfreeze: int | None = None


def parse_sources(text: str, scratch_arch: str | None = None) -> list[Source]:
    """``scratch``, ``imagenet``, a run folder or a backbone name, each optionally ``:extract`` or ``:finetune``
    (default: extract for pretrained sources; scratch always trains everything)."""
    from graft.core.config import DEFAULT_BACKBONE
    from graft.core.source_runs import is_run_folder, resolve_source
    from graft.image.backbones.registry import DEFAULT_ARCHITECTURE

    sources = []
    entries = [entry.strip() for entry in text.split(",") if entry.strip()]
    runs = [resolve_source(entry.rsplit(":", 1)[0], None, None) for entry in entries if is_run_folder(_name(entry))]
    arch = scratch_arch or (runs[0].backbone if runs else DEFAULT_ARCHITECTURE)
    for entry in entries:
        name, mode = _name(entry), _mode(entry)
        if name == "scratch":
            if mode == "extract":
                raise ConfigError("--from scratch:extract does not apply: a random network must train", hint="scratch")
            size = runs[0].image_size if runs and arch == runs[0].backbone else None
            sources.append(Source("scratch", arch, False, "finetune", image_size=size))
        else:  # labelled by name, and by mode when one is given (a run may be both frozen and fine-tuned)
            label = "imagenet" if name == "imagenet" else Path(name).name if is_run_folder(name) else name
            backbone = DEFAULT_BACKBONE if name == "imagenet" else name
            sources.append(Source(f"{label}:{mode}" if mode else label, backbone, True, mode or "extract"))
    if not sources:
        raise ConfigError("--from names no source", hint="e.g. --from scratch,imagenet,runs/mnist")
    labels = [source.label for source in sources]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"--from names a source twice ({', '.join(labels)})")
    return sources


def _name(entry: str) -> str:
    head, _, tail = entry.rpartition(":")
    return head if head and tail in ("extract", "finetune") else entry


def _mode(entry: str) -> str | None:
    head, _, tail = entry.rpartition(":")
    return tail if head and tail in ("extract", "finetune") else None


def parse_sizes(text: str) -> list[int | None]:
    """``1,5,10,all`` -> ``[1, 5, 10, None]`` (None: every example)."""
    sizes: list[int | None] = []
    for entry in (part.strip() for part in text.split(",") if part.strip()):
        if entry == "all":
            sizes.append(None)
        elif entry.isdigit() and int(entry) >= 1:
            sizes.append(int(entry))
        else:
            raise ConfigError(f"--per-class takes whole numbers from 1, or all; got '{entry}'", hint="1,5,10,25,all")
    if not sizes:
        raise ConfigError("--per-class names no size", hint="1,5,10,25,all")
    return sorted(set(sizes), key=lambda size: math.inf if size is None else size)


@dataclass
class Splits:
    """The target split three ways: the pool examples are drawn from, the split each point is selected
    on (its best epoch), and the split every point is judged on."""

    classes: list[str]
    pool: list[tuple[str, int]]
    select: list[tuple[str, int]]
    judge: list[tuple[str, int]]
    judged_on: str


def target_splits(target: str, seed: int) -> Splits:
    """The pool (the target's training split), the selection split (its valid split, or half of it when the
    target has no test split) and the judged split (test, or the other half); at most SELECT_PER_CLASS and
    JUDGE_PER_CLASS examples of each class in the last two (a seeded draw), so a point costs seconds."""
    from graft.core.modality import modality_for

    source = modality_for(target, None)
    dataset = source.scan(target, valid_fraction=0.2, seed=seed)
    valid = list(dataset.split("valid"))
    if dataset.split("test"):
        select, judge, judged_on = valid, list(dataset.split("test")), "test"
    else:
        order = np.random.default_rng(seed).permutation(len(valid))
        half = len(valid) // 2
        select, judge = [valid[i] for i in sorted(order[:half])], [valid[i] for i in sorted(order[half:])]
        judged_on = "half of valid"
    select, judge = sample(select, SELECT_PER_CLASS, 0, seed), sample(judge, JUDGE_PER_CLASS, 0, seed)
    return Splits(dataset.classes, dataset.split("train"), select, judge, judged_on)


def sample(pool: list[tuple[str, int]], per_class: int | None, repeat: int, seed: int) -> list[tuple[str, int]]:
    """``per_class`` examples of each class (all of them for None), the same draw for every source; the
    draws of one repeat are nested (10 per class holds the 5)."""
    rng = np.random.default_rng([seed, repeat])
    by_class: dict[int, list[tuple[str, int]]] = {}
    for item in pool:
        by_class.setdefault(item[1], []).append(item)
    chosen = []
    for label in sorted(by_class):
        items = by_class[label]
        order = rng.permutation(len(items))
        chosen.extend(items[i] for i in order[: per_class or len(items)])
    return chosen


def link_folder(folder: Path, classes: list[str], splits: dict[str, list[tuple[str, int]]]) -> None:
    """``folder/<split>/<class>/`` holding links to the chosen files (graft's usual layout)."""
    for split, items in splits.items():
        for index, (path, label) in enumerate(items):
            where = folder / split / classes[label]
            where.mkdir(parents=True, exist_ok=True)
            os.symlink(os.path.abspath(path), where / f"{index:06d}{Path(path).suffix}")


def train_point(
    source: Source, classes: list[str], items: dict[str, list], repeat: int, seed: int, batch_size: int, workers
) -> dict[str, Any]:
    """One ``graft train`` on the drawn examples; returns its judged accuracy and time."""
    import graft

    began = time.perf_counter()
    steps_per_epoch = math.ceil(len(items["train"]) / batch_size)
    epochs = max(MIN_EPOCHS, min(MAX_EPOCHS, math.ceil(STEPS / steps_per_epoch)))
    with tempfile.TemporaryDirectory(prefix="graft-curve-") as scratch:
        data, run = Path(scratch) / "data", Path(scratch) / "run"
        link_folder(data, classes, items)
        options: dict[str, Any] = {"mode": source.mode, "backbone": source.backbone, "pretrained": source.pretrained}
        if source.weights is not None:
            options["weights"] = source.weights
        if source.image_size is not None:
            options["image_size"] = source.image_size
        if source.mode == "finetune":
            options["unfreeze"] = source.unfreeze or len(_stage_names(source))
            options["backbone_lr_mult"] = 1.0 if not source.pretrained or source.weights else None
            options["augment"] = False
        summary = graft.train(
            data,
            run,
            epochs=epochs,
            patience=epochs,
            seed=seed + repeat,
            batch_size=batch_size,
            quiet=True,
            num_workers=workers,
            **{key: value for key, value in options.items() if value is not None},
        )
    return {
        "accuracy": float(summary["test_accuracy"]),
        "valid_accuracy": float(summary["valid_accuracy"]),
        "epochs": epochs,
        "best_epoch": summary["best_epoch"],
        "seconds": round(time.perf_counter() - began, 2),
    }


def _stage_names(source: Source) -> list[str]:
    """The stages of a source's network (a run folder's: its architecture's)."""
    from graft.core.source_runs import resolve_source
    from graft.image.backbones import stage_names

    return stage_names(resolve_source(source.backbone, source.weights, None).backbone)


def per_class_curve(
    target: str | os.PathLike,
    out: str | os.PathLike,
    sizes: list[int | None],
    sources: list[Source],
    repeats: int = 3,
    seed: int = 0,
    batch_size: int = 32,
    workers: int | None = None,
    quiet: bool = False,
) -> dict[str, Any]:
    """Accuracy against examples per class for every source; ``curve.json`` and ``curve.png`` in ``out``."""
    if not 1 <= repeats <= 100:
        raise ConfigError(f"--repeats must be from 1 to 100; got {repeats}")
    for source in sources:  # a wrong name is answered now, not after the points before its first one
        _stage_names(source)
    splits = target_splits(str(target), seed)
    biggest = min(sum(1 for _, label in splits.pool if label == c) for c in range(len(splits.classes)))
    for size in sizes:
        if size is not None and size > biggest:
            raise ConfigError(
                f"--per-class {size} is more than the smallest class's {biggest} training examples",
                hint=f"sizes up to {biggest}, or all",
            )
    grid = [(source, size, repeat) for size in sizes for repeat in range(repeats) for source in sources]
    result = _resume(out, "per-class", target, sources, seed, {"sizes": sizes, "repeats": repeats})
    result["judged_on"] = splits.judged_on
    done = {(p["source"], p["per_class"], p["repeat"]) for p in result["points"]}
    with progress(quiet) as bars, progress_task(bars, "curve points", len(grid)) as advance:
        advance(len(done))
        for source, size, repeat in grid:
            if (source.label, size, repeat) in done:
                continue
            items = {"train": sample(splits.pool, size, repeat, seed), "valid": splits.select, "test": splits.judge}
            point = train_point(source, splits.classes, items, repeat, seed, batch_size, workers)
            result["points"].append({"source": source.label, "per_class": size, "repeat": repeat, **point})
            _save(out, result)
            advance(1)
    result["table"] = _table(result["points"], "per_class")
    result["verdicts"], result["summary"] = _verdicts(result["table"], [s.label for s in sources], sizes)
    _plot_per_class(result, Path(out) / PLOT, Path(str(target)).name, biggest)
    _save(out, result)
    return result


def depth_curve(
    target: str | os.PathLike,
    out: str | os.PathLike,
    run: str,
    per_class: int | None = None,
    repeats: int = 1,
    seed: int = 0,
    batch_size: int = 32,
    workers: int | None = None,
    quiet: bool = False,
) -> dict[str, Any]:
    """Yosinski's table: the first ``n`` stages of ``run`` transferred (frozen, or fine-tuned), the rest
    from random weights, for every ``n``."""
    from graft.core.source_runs import is_run_folder, resolve_source

    if not is_run_folder(run):
        raise ConfigError(f"--by-depth needs one run folder in --from; got '{run}'", hint="--from runs/mnist")
    resolved = resolve_source(run, None, None)
    from graft.image.backbones import stage_names

    names = stage_names(resolved.backbone)
    splits = target_splits(str(target), seed)
    result = _resume(out, "by-depth", target, [], seed, {"run": str(run), "per_class": per_class, "repeats": repeats})
    result["judged_on"], result["stages"] = splits.judged_on, names
    grid = [
        (n, variant, r) for n in range(len(names) + 1) for variant in ("frozen", "fine-tuned") for r in range(repeats)
    ]
    grid = [(n, v, r) for n, v, r in grid if not (n == 0 and v == "fine-tuned")]  # n = 0: scratch, once
    done = {(p["depth"], p["variant"], p["repeat"]) for p in result["points"]}
    with progress(quiet) as bars, progress_task(bars, "layer table", len(grid)) as advance:
        advance(len(done))
        for depth, variant, repeat in grid:
            if (depth, variant, repeat) in done:
                continue
            weights = _first_stages(resolved.weights, names[:depth], Path(out))
            trained = len(names) if variant == "fine-tuned" else len(names) - depth
            source = Source(
                f"{depth} {variant}",
                resolved.backbone,
                depth > 0,
                "finetune" if trained else "extract",
                weights=weights if depth > 0 else None,
                image_size=resolved.image_size,
                unfreeze=trained or None,
            )
            items = {
                "train": sample(splits.pool, per_class, repeat, seed),
                "valid": splits.select,
                "test": splits.judge,
            }
            point = train_point(source, splits.classes, items, repeat, seed, batch_size, workers)
            result["points"].append({"depth": depth, "variant": variant, "repeat": repeat, **point})
            _save(out, result)
            advance(1)
    rows = {}
    for point in result["points"]:
        key = "scratch" if point["depth"] == 0 else point["variant"]
        rows.setdefault(key, {}).setdefault(point["depth"], []).append(point["accuracy"])
    result["table"] = {key: {depth: _stats(values) for depth, values in cells.items()} for key, cells in rows.items()}
    result["summary"] = _depth_words(result["table"], names)
    _plot_depth(result, Path(out) / PLOT, Path(str(target)).name, names)
    _save(out, result)
    return result


def _first_stages(weights: str, stages: list[str], out: Path) -> str | None:
    """A weights file holding the source run's first ``stages`` only (the others start at random)."""
    if not stages:
        return None
    from graft.fileio import atomic_save_tensors, load_tensors

    path = out / "weights" / f"first-{len(stages)}.safetensors"
    if not path.is_file():
        kept = tuple(f"stages.{name}." for name in stages)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_save_tensors(path, {k: v for k, v in load_tensors(weights).items() if k.startswith(kept)})
    return str(path)


def _resume(out, kind: str, target, sources: list[Source], seed: int, settings: dict) -> dict[str, Any]:
    """The points of an earlier, interrupted curve with the same settings, or a new result."""
    fresh = {
        "kind": kind,
        "target": str(target),
        "sources": [asdict(source) for source in sources],
        "seed": seed,
        "settings": settings,
        "points": [],
    }
    path = Path(out) / RESULT
    if path.is_file():
        earlier = read_json(path)
        if all(earlier.get(key) == fresh[key] for key in ("kind", "target", "sources", "seed", "settings")):
            return {**fresh, "points": earlier.get("points", [])}
        raise ConfigError(
            f"'{path}' holds a curve with other settings", hint="pick another --out, or delete that folder"
        )
    Path(out).mkdir(parents=True, exist_ok=True)
    return fresh


def _save(out, result: dict[str, Any]) -> None:
    atomic_write_json(Path(out) / RESULT, result)


def _stats(values: list[float]) -> dict[str, Any]:
    return {"mean": float(np.mean(values)), "std": float(np.std(values)), "values": values}


def _table(points: list[dict], axis: str) -> dict[str, dict[str, dict]]:
    cells: dict[str, dict[str, list[float]]] = {}
    for point in points:
        cells.setdefault(point["source"], {}).setdefault(_size_key(point[axis]), []).append(point["accuracy"])
    return {source: {size: _stats(values) for size, values in row.items()} for source, row in cells.items()}


def _size_key(size: int | None) -> str:
    return "all" if size is None else str(size)


def _verdicts(table: dict, labels: list[str], sizes: list[int | None]) -> tuple[dict, list[str]]:
    """Each source against the baseline (scratch when measured, else the first source), size by size:
    helps, no difference (within MARGIN points or the spread), or hurts; and those facts in words."""
    baseline = "scratch" if "scratch" in labels else labels[0]
    verdicts, words = {}, []
    for label in labels:
        if label == baseline:
            continue
        rows = []
        for size in map(_size_key, sizes):
            ours, theirs = table[label][size], table[baseline][size]
            difference = 100 * (ours["mean"] - theirs["mean"])
            margin = max(MARGIN, 100 * max(ours["std"], theirs["std"]))
            verdict = "helps" if difference > margin else "hurts" if difference < -margin else "no difference"
            rows.append({"per_class": size, "difference_points": round(difference, 2), "verdict": verdict})
        verdicts[label] = rows
        words.append(_sentence(label, baseline, rows))
    return verdicts, words


def _sentence(label: str, baseline: str, rows: list[dict]) -> str:
    def sizes(verdict: str) -> list[str]:
        return [row["per_class"] for row in rows if row["verdict"] == verdict]

    def span(names: list[str]) -> str:
        return names[0] if len(names) == 1 else f"{names[0]}-{names[-1]}"

    def points(verdict: str) -> str:
        return ", ".join(f"{r['difference_points']:+.1f} at {r['per_class']}" for r in rows if r["verdict"] == verdict)

    helps, hurts, same = sizes("helps"), sizes("hurts"), sizes("no difference")
    parts = []
    if helps:
        parts.append(f"helps at {span(helps)} per class ({points('helps')} points)")
    if hurts:
        parts.append(f"hurts at {span(hurts)} per class: negative transfer ({points('hurts')} points)")
    if same:
        tail = (
            " from there on"
            if same[0] != rows[0]["per_class"] and same == [r["per_class"] for r in rows[-len(same) :]]
            else ""
        )
        parts.append(f"makes no difference at {span(same)} per class{tail}")
    return f"{label} against {baseline}: " + "; ".join(parts) + "."


def _depth_words(table: dict, names: list[str]) -> list[str]:
    """Each variant's row in words, and the depth from which every deeper transfer is worse than scratch
    (where, for this data, the source's features stop being general), if there is one."""
    scratch = table.get("scratch", {}).get(0, {}).get("mean")
    words = []
    for variant in ("frozen", "fine-tuned"):
        row = table.get(variant, {})
        if not row or scratch is None:
            continue
        depths = sorted(row)
        cells = ", ".join(f"{n} {100 * row[n]['mean']:.1f}" for n in depths)
        worse = [100 * (row[n]["mean"] - scratch) < -MARGIN for n in depths]
        onward = next((depths[i] for i in range(len(depths)) if all(worse[i:])), None)
        words.append(
            f"{variant}: first n stages transferred -> accuracy {cells} (scratch {100 * scratch:.1f})"
            + (
                f"; worse than scratch from n = {onward} ({names[onward - 1]}) on: the source's features stop "
                "being general for this data there"
                if onward is not None
                else "; never worse than scratch all the way down"
                if not any(worse)
                else ""
            )
            + "."
        )
    return words


def _plot_per_class(result: dict, path: Path, target: str, biggest: int) -> None:
    from graft.core.plots import pyplot, save_figure

    figure, axis = pyplot().subplots(figsize=(7, 4.2), layout="constrained")
    for label, row in result["table"].items():
        keys = list(row)
        xs = [biggest * 1.6 if key == "all" else int(key) for key in keys]
        means = [100 * row[key]["mean"] for key in keys]
        spreads = [100 * row[key]["std"] for key in keys]
        axis.errorbar(xs, means, yerr=spreads, marker="o", capsize=3, label=label)
        if "all" in keys:
            axis.annotate("all", (xs[-1], means[-1]), textcoords="offset points", xytext=(4, -12), fontsize=8)
    axis.set_xscale("log")
    axis.set_xlabel("labelled examples per class")
    axis.set_ylabel(f"accuracy on {result['judged_on']} (%)")
    axis.set_title(f"When transfer pays: {target}")
    axis.grid(alpha=0.3)
    axis.legend()
    save_figure(figure, path)


def _plot_depth(result: dict, path: Path, target: str, names: list[str]) -> None:
    from graft.core.plots import pyplot, save_figure

    figure, axis = pyplot().subplots(figsize=(7, 4.2), layout="constrained")
    scratch = result["table"].get("scratch", {}).get(0)
    for variant in ("frozen", "fine-tuned"):
        row = result["table"].get(variant, {})
        if row:
            depths = sorted(row)
            axis.errorbar(
                depths,
                [100 * row[d]["mean"] for d in depths],
                yerr=[100 * row[d]["std"] for d in depths],
                marker="o",
                capsize=3,
                label=f"first n stages transferred, {variant}",
            )
    if scratch is not None:
        axis.axhline(100 * scratch["mean"], color="grey", linestyle="--", label="from scratch")
    axis.set_xticks(range(len(names) + 1), ["0"] + [f"{i}\n{name}" for i, name in enumerate(names, 1)])
    axis.set_xlabel("stages transferred from the source run")
    axis.set_ylabel(f"accuracy on {result['judged_on']} (%)")
    axis.set_title(f"Where features stop being general: {target}")
    axis.grid(alpha=0.3)
    axis.legend()
    save_figure(figure, path)
