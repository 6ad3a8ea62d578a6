"""graft's public functions: ``classify``, ``check``, ``train``, ``resume``, ``load``, ``evaluate``, ``predict``.

Each is a thin composition of the modules (config, modalities, the pipeline, run folders); the CLI
calls exactly these and adds nothing but formatting. Arguments and paths are checked before torch
and the backbones are imported (several seconds), so a mistake is answered in well under a second.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from graft.core.config import DEFAULT_BACKBONE, RunConfig, check_workers, validate
from graft.core.run_files import require_run_folder, run_modality
from graft.errors import ConfigError, DataError, RunFolderError

if TYPE_CHECKING:
    from graft.core.runs import TrainedRun

__all__ = [
    "DEFAULT_BACKBONE",
    "adapt",
    "check",
    "classify",
    "evaluate",
    "export",
    "load",
    "predict",
    "resume",
    "train",
    "train_multitask",
]


def export(
    run: str | os.PathLike | TrainedRun,
    out: str | os.PathLike,
    format: str = "onnx",
    samples: int = 64,
    int8: bool = False,
    max_drop: float = 1.0,
) -> dict[str, Any]:
    """Export a run to ``out`` (``format="onnx"``: one file with the preprocessing, labels and graft version
    in its metadata), written only if ONNX Runtime matches torch on up to ``samples`` images of the run's
    valid split (rtol 1e-3, atol 1e-5, every top-1 class the same). ``int8``: static per-channel
    quantisation calibrated on the run's training images, refused when it loses more than ``max_drop``
    accuracy points on the valid split. Returns the file, its size and the parity (and int8) figures."""
    if format != "onnx":
        raise ConfigError(f"--format must be onnx; got {format!r}")
    trained = load(run) if isinstance(run, (str, os.PathLike)) else run
    from graft.deploy.onnx import export_onnx

    return export_onnx(trained, out, samples=samples, int8=int8, max_drop=max_drop)


def load(run: str | os.PathLike) -> TrainedRun:
    """Load a run folder (the only loader): ``graft.load("runs/signs").predict(["a.jpg"])``."""
    require_run_folder(run)
    from graft.core.runs import load_run

    return load_run(run)


def require_folder(path: str | os.PathLike, what: str = "data folder") -> None:
    """A clear error, at once, when ``path`` is not an existing folder."""
    if not Path(path).is_dir():
        raise DataError(f"{what} '{path}' does not exist or is not a folder")


def require_paths(paths: Sequence[str | os.PathLike]) -> None:
    """A clear error, at once, naming the first of ``paths`` that does not exist."""
    for path in paths:
        if not Path(path).exists():
            raise DataError(f"'{path}' does not exist")


def check(
    data: str | os.PathLike,
    valid_fraction: float | None = None,
    seed: int = 0,
    labels: str | None = None,
    tasks: str | None = None,
    text_column: str | None = None,
    label_column: str | None = None,
) -> dict[str, Any]:
    """Inspect data as ``train`` would, without training: images (or texts), usable, skipped (file, reason),
    warnings (file, message: duplicates, missing classes, odd names) and errors that would stop training.
    With ``labels`` (and ``tasks``), the folder is read as ``train --labels`` reads it: names or rows that
    do not parse are skipped with the reason, and byte-identical copies with conflicting labels are warned about.
    Text (a table, or class folders of ``.txt``): lines not UTF-8, empty texts, missing labels, texts in two
    splits or under two labels (exactly or after normalisation), and texts longer than the encoder reads."""
    if not Path(data).exists():
        require_folder(data)  # answered before anything heavy is imported
    from graft.text.data import is_text_data

    if is_text_data(data) or text_column is not None or label_column is not None:
        if labels is not None:  # several tasks: a column each
            from graft.text.tasks import scan_text_tasks

            fraction = 0.15 if valid_fraction is None else valid_fraction
            return _check_tasks(
                data, lambda: scan_text_tasks(data, labels, tasks, fraction, 0.15, seed, text_column=text_column)
            )
        if tasks is not None:
            raise ConfigError("--tasks needs --labels columns (a text table's label columns, one per task)")
        from graft.text.checking import check_report as check_texts

        return check_texts(
            data,
            valid_fraction=0.2 if valid_fraction is None else valid_fraction,
            seed=seed,
            text_column=text_column,
            label_column=label_column,
        )
    require_folder(data)
    from graft.audio.data import is_audio_data
    from graft.image.checking import check_report

    errors: list[str] = []
    if is_audio_data(data):
        if labels is not None or tasks is not None:
            raise ConfigError("--labels and --tasks are for images; sound files are labelled by their class folders")
        from graft.audio.data import scan_sounds

        dataset = scan_sounds(
            data, valid_fraction=0.2 if valid_fraction is None else valid_fraction, seed=seed, errors=errors
        )
        return check_report(dataset, errors)
    if labels is None:
        if tasks is not None:
            raise ConfigError("--tasks (data.tasks) needs --labels (where the tasks' labels come from)")
        from graft.image.data import scan_folder

        dataset = scan_folder(
            data, valid_fraction=0.2 if valid_fraction is None else valid_fraction, seed=seed, errors=errors
        )
        return check_report(dataset, errors)
    from graft.multitask.tasks import scan_multitask

    fraction = 0.15 if valid_fraction is None else valid_fraction
    return _check_tasks(data, lambda: scan_multitask(data, labels, tasks, fraction, 0.15, seed))


def _check_tasks(data, scan) -> dict[str, Any]:
    """``graft check`` of several tasks' labels: what ``scan()`` read, skipped and warned about."""
    from graft.core.dataset import summarise

    errors: list[str] = []
    try:
        found = scan()
    except DataError as error:
        errors.append(error.message)
        return {
            "data": str(data),
            "layout": "multitask",
            "classes": {},
            "counts": {},
            "images": 0,
            "usable": 0,
            "skipped": [],
            "skipped_by_reason": {},
            "warnings": [],
            "errors": errors,
            "ok": False,
        }
    conflicts = found.duplicates.get("conflicting_labels", [])
    warnings = [
        {
            "file": group["files"][0],
            "message": f"byte-identical to {len(group['files']) - 1} other file(s) with other labels "
            f"{group['labels']} (label noise; kept on one side of the split)",
        }
        for group in conflicts
    ]
    usable = sum(len(items) for items in found.splits.values())
    return {
        "data": str(data),
        "layout": "multitask",
        "tasks": [task.to_dict() for task in found.tasks],
        "classes": {task.name: list(task.classes) for task in found.tasks if task.is_classification},
        "counts": found.counts(),
        "images": usable + len(found.skipped),
        "usable": usable,
        "skipped": found.skipped,
        "skipped_by_reason": summarise(found.skipped),
        "warnings": warnings,
        "errors": errors,
        "ok": True,
    }


def classify(
    images: Sequence[str | os.PathLike],
    backbone: str | None = None,
    top: int = 5,
    weights: str | None = None,
    classes: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Use a pretrained network as is: the ImageNet classifier's ``top`` labels with probabilities for
    each image; or, with ``classes``, zero-shot classification of texts (or text files) by a sentence
    encoder (``{"text", "top"}`` per text; see :mod:`graft.text.zero_shot`)."""
    if top < 1:
        raise ConfigError(f"--top must be at least 1; got {top}")
    if classes is not None:
        if weights is not None:
            raise ConfigError("--weights does not apply to zero-shot text classification", hint="drop --weights")
        from graft.text.data import expand_inputs
        from graft.text.encoders import DEFAULT_TEXT_BACKBONE
        from graft.text.zero_shot import classify_texts

        return classify_texts(expand_inputs([str(i) for i in images]), classes, backbone or DEFAULT_TEXT_BACKBONE, top)
    backbone = backbone or DEFAULT_BACKBONE
    require_paths(images)
    import torch
    from timm.data import ImageNetInfo

    from graft.image.backbones import create_backbone
    from graft.image.data import collect_image_paths
    from graft.image.decoded import ImageDataset

    paths = collect_image_paths(images)
    loaded = create_backbone(backbone, weights=weights)
    info = ImageNetInfo()
    loader = torch.utils.data.DataLoader(
        ImageDataset([(p, -1) for p in paths], loaded.preprocessing.eval_transform()), batch_size=16
    )
    results = []
    with torch.inference_mode():
        for inputs, _ in loader:
            probabilities = torch.softmax(loaded.model(inputs), dim=1)
            values, indices = probabilities.topk(min(top, probabilities.shape[1]), dim=1)
            for row_values, row_indices in zip(values, indices):
                results.append(
                    {
                        "image": paths[len(results)],
                        "top": [
                            {"label": info.index_to_description(int(i)), "index": int(i), "prob": float(v)}
                            for v, i in zip(row_values, row_indices)
                        ],
                    }
                )
    return results


def train(
    data: str | os.PathLike | None,
    out: str | os.PathLike,
    *,
    mode: str = "extract",
    backbone: str | None = None,
    weights: str | os.PathLike | None = None,
    pretrained: bool = True,
    unfreeze: int | None = None,
    epochs: int | None = None,
    lr: float | None = None,
    backbone_lr_mult: float | None = None,
    bn: str | None = None,
    head: str = "linear",
    head_epochs: int | None = None,
    greedy_epochs: int | None = None,
    batch_size: int = 32,
    augment: bool | None = None,
    views: int | None = None,
    cache: bool = True,
    cache_dir: str | os.PathLike | None = None,
    image_size: int | None = None,
    patience: int = 5,
    time_budget: float | None = None,
    seed: int = 0,
    deterministic: bool = False,
    device: str = "auto",
    precision: str = "auto",
    log: str | None = None,
    labels: str | None = None,
    tasks: str | Sequence[str] | None = None,
    domains: dict[str, str] | None = None,
    sharing: str | None = None,
    tie: float | None = None,
    task_weighting: str | None = None,
    valid_fraction: float | None = None,
    test_fraction: float | None = None,
    limit: int | None = None,
    text_column: str | None = None,
    label_column: str | None = None,
    target: str | os.PathLike | None = None,
    method: str | None = None,
    strength: float | None = None,
    reweight: str | os.PathLike | None = None,
    weight_estimator: str | None = None,
    num_workers: int | None = None,
    quiet: bool = False,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train by transfer from a pretrained backbone and write a run folder; returns the ``train`` JSON summary.

    What is learned:
        data: a folder of class folders (``DATA/<class>/`` or ``DATA/{train,valid,test}/<class>/``): one
            classifier; with ``labels``, a folder of images with several labels each. Text: a CSV, TSV or
            JSON Lines file (or ``train``/``valid``/``test`` ones in a folder) with ``text_column`` and
            ``label_column`` (default ``text`` and ``label``), or class folders of ``.txt`` files.
        labels: where several tasks' labels come from: ``"utkface"`` (file names), a CSV file, or
            ``"re:PATTERN"`` with a named group per task; ``tasks`` picks and types them
            (``"age,gender"`` or ``"size:regression,kind:a/b"``).
        domains: ``{name: path}`` for several domains in one model (a head per domain), instead of ``data``.
        target, method, strength: domain adaptation to a folder of unlabelled ``target`` images (see :func:`adapt`).
        reweight: sample-selection bias: a folder of unlabelled images drawn like the world; each training
            example's loss is weighted by p_world(x) / p_sample(x), estimated on frozen features by
            ``weight_estimator`` (``"classifier"``, default, ``"kliep"``, ``"labelshift"``, or ``"none"``: every
            weight 1, the same run uncorrected), and epochs are judged by importance-weighted validation
            accuracy; in extract mode with a linear head, the head is then refit with the weights.
            ``"labelshift"``'s weights (one per class) shift the class priors in the logits instead of
            weighting the examples (:mod:`graft.adaptation.reweighted`).
        valid_fraction, test_fraction: held-out shares (default 0.2 for one classifier; 0.15 and 0.15
            for several tasks); limit: a seeded subset of that many images (several tasks).

    How much is transferred:
        mode: ``"extract"`` (frozen backbone, new head), ``"finetune"`` (also the last ``unfreeze``
            stages, at ``lr * backbone_lr_mult``), or ``"auto"`` (``graft.advise`` measures the data and
            picks, and on small data a race of candidate plans on folds of the data decides (``graft.core.race``);
            options given explicitly win; the advice is saved as ``advice.json``).
        backbone, weights, pretrained: the source network (default: the modality's, EfficientNet-Lite0 for
            images, all-MiniLM-L6-v2 for text; a built-in, timm or Hugging Face name; a weights file;
            ``pretrained=False`` for a from-scratch baseline).
        bn: BatchNorm statistics of trained stages (``"train"`` or ``"frozen"``); head: ``"linear"`` or
            ``"mlp"``; head_epochs: epochs training the new head alone first (fastai's ``fine_tune``).
        greedy_epochs: from scratch, greedy layer-wise pre-training first (each stage this many epochs with
            its own classifier, the earlier ones frozen), then the whole network (see :func:`pretrain`).
        sharing, tie, task_weighting: several tasks: one trunk (``"hard"``) or a tower per task tied by
            ``tie`` (``"soft"``); learned (``"uncertainty"``) or ``"equal"`` task weights.

    Inputs, budget and runtime:
        batch_size; augment (default: finetune yes, extract no); views: augmented views per training
            image computed through the frozen stages once and cached (default 4); cache, cache_dir:
            the activation cache (``cache=False`` recomputes the frozen part every epoch); image_size:
            instead of the backbone's input size.
        epochs (default 10), patience (epochs without a better validation score), time_budget (seconds;
            ``mode="auto"``: half of it bounds the race of plans on small data).
        seed, deterministic (identical numbers on a rerun on the same CPU), device (``"auto"``: CUDA when
            torch sees a GPU; ``"cpu"``, ``"cuda"``, ``"cuda:N"``), precision (``"auto"``: bf16 mixed precision on a
            GPU that has it, fp32 elsewhere; ``"fp32"``; ``"bf16"``), num_workers (processes of the frozen pass
            and of image decoding), quiet; log: ``"tensorboard"`` writes every epoch's scalars and the
            confusion matrices to ``RUN/tensorboard/`` (``tensorboard --logdir RUN``).

    ``out`` must be new or empty: graft never writes a run over anything. ``overwrite=True`` moves what
    it holds aside to ``OUT.replaced-TIME`` first (never deletes it); an unfinished run is never replaced
    (``resume`` it). One process at a time writes a run folder.

    Every option is checked before any work (:mod:`graft.core.config`); one that does not apply to the
    run (e.g. ``tie`` without soft sharing, ``unfreeze`` with ``mode="extract"``) is refused.
    """
    config = RunConfig(
        data=_text(data),
        text_column=text_column,
        label_column=label_column,
        labels=labels,
        tasks=",".join(tasks) if isinstance(tasks, (list, tuple)) else tasks,
        domains=domains,
        target=_text(target),
        method=method,
        strength=strength,
        reweight=_text(reweight),
        weight_estimator=weight_estimator,
        valid_fraction=valid_fraction,
        test_fraction=test_fraction,
        limit=limit,
        mode=mode,
        backbone=backbone,
        weights=_text(weights),
        pretrained=pretrained,
        unfreeze=unfreeze,
        lr=lr,
        backbone_lr_mult=backbone_lr_mult,
        bn=bn,
        head=head,
        head_epochs=head_epochs,
        greedy_epochs=greedy_epochs,
        sharing=sharing,
        tie=tie,
        task_weighting=task_weighting,
        batch_size=batch_size,
        augment=augment,
        views=views,
        cache=cache,
        cache_dir=_text(cache_dir),
        image_size=image_size,
        epochs=epochs,
        patience=patience,
        time_budget=time_budget,
        seed=seed,
        deterministic=deterministic,
        device=device,
        precision=precision,
        log=log,
    )
    validate(config)
    check_workers(num_workers)
    _require_inputs(config)
    predecoding = _start_predecoding(config)
    try:
        from graft.core import trainer

        return trainer.train(config, out, num_workers=num_workers, quiet=quiet, overwrite=overwrite)
    finally:
        if predecoding:
            from graft.image import predecode

            predecode.stop_running()


def _start_predecoding(config: RunConfig) -> bool:
    """Before torch and timm are imported: decode the images of a cached run with a built-in image backbone
    on the idle core (:mod:`graft.image.predecode`; a folder without images, text or audio, starts nothing).
    True if a child was started."""
    if not config.cache or config.data is None:
        return False
    from graft.image import predecode
    from graft.image.backbones import get_spec
    from graft.perf import process_seconds

    spec = get_spec(config.backbone or DEFAULT_BACKBONE)
    if spec is None:
        return False
    preprocessing = spec.preprocessing
    if config.image_size is not None:
        import dataclasses

        preprocessing = dataclasses.replace(preprocessing, input_size=config.image_size)
    return predecode.start(config.data, preprocessing, process_age=process_seconds()) is not None


def pretrain(
    data: str | os.PathLike,
    out: str | os.PathLike,
    *,
    arch: str | None = None,
    greedy: bool = False,
    greedy_epochs: int | None = None,
    unlabelled: bool = False,
    epochs: int = 5,
    lr: float = 2e-3,
    batch_size: int = 128,
    image_size: int | None = None,
    seed: int = 0,
    deterministic: bool = False,
    device: str = "auto",
    num_workers: int | None = None,
    quiet: bool = False,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Pre-train a source network from nothing on a large labelled set; the run folder is then a backbone
    (``train(TARGET, backbone=RUN)``, ``advise(TARGET, backbone=RUN)``).

    data: image class folders, an ``.npz`` file (Keras's ``mnist.npz`` layout: ``x_train``, ``y_train``,
        ``x_test``, ``y_test``) or a folder of MNIST-named IDX files (:mod:`graft.image.arrays`).
    arch: ``graft_cnn`` (default, a plain CNN) or ``graft_resnet`` (a small residual network), for 32 px
        inputs; any timm architecture name works too (trained at its own input size unless ``image_size``).
    greedy: greedy supervised layer-wise pre-training (each stage ``greedy_epochs`` epochs, default 2, with its
        own classifier, the earlier stages frozen), then the whole network ``epochs`` epochs; without it the
        whole network trains end to end. Everything trains at ``lr`` (no smaller rate for the "backbone":
        nothing in it is pretrained).
    unlabelled: self-taught learning: the labels of ``data`` (if any) are not used; the network learns
        features as a denoising autoencoder (:mod:`graft.pretraining.self_taught`).
    """
    from graft.image.backbones import stage_names
    from graft.image.backbones.registry import DEFAULT_ARCHITECTURE

    if greedy_epochs is not None and not greedy:
        raise ConfigError("--greedy-epochs only applies with --greedy", hint="add --greedy, or drop --greedy-epochs")
    arch = arch or DEFAULT_ARCHITECTURE
    stages = len(stage_names(arch))  # an unknown name is refused here, before any data is read
    if unlabelled:
        if greedy:
            raise ConfigError("--greedy trains with labels; it does not apply with --unlabelled", hint="drop one")
        from graft.pretraining.self_taught import self_taught

        check_workers(num_workers)
        if not Path(data).exists():
            raise DataError(f"data '{data}' does not exist")
        return self_taught(
            str(data),
            str(out),
            arch=arch,
            epochs=epochs,
            lr=lr,
            batch_size=batch_size,
            image_size=image_size,
            seed=seed,
            deterministic=deterministic,
            device=device,
            num_workers=num_workers,
            quiet=quiet,
            overwrite=overwrite,
        )

    return train(
        data,
        out,
        mode="finetune",
        backbone=arch,
        pretrained=False,
        unfreeze=stages,
        backbone_lr_mult=1.0,
        greedy_epochs=(greedy_epochs or 2) if greedy else None,
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        augment=False,
        image_size=image_size,
        seed=seed,
        deterministic=deterministic,
        device=device,
        num_workers=num_workers,
        quiet=quiet,
        overwrite=overwrite,
    )


def curve(
    target: str | os.PathLike,
    out: str | os.PathLike,
    *,
    sources: str = "scratch,imagenet",
    per_class: str | None = None,
    by_depth: bool = False,
    repeats: int | None = None,
    seed: int = 0,
    batch_size: int = 32,
    num_workers: int | None = None,
    quiet: bool = False,
) -> dict[str, Any]:
    """When transfer pays on ``target`` (:mod:`graft.pretraining.curve`): accuracy against examples per class
    for each of ``sources`` (``scratch``, ``imagenet``, run folders, backbone names; ``:finetune`` or
    ``:extract`` after one picks the mode), ``repeats`` seeded draws each (default 3), with verdicts in words;
    or with ``by_depth``, the layer table of the one run folder in ``sources`` at the one ``per_class`` size
    (default all; repeats default 1). ``per_class`` defaults to ``1,5,10,25,50,all``. Writes ``curve.json``
    and ``curve.png`` in ``out``; a killed curve resumes where it stopped."""
    from graft.pretraining.curve import depth_curve, parse_sizes, parse_sources, per_class_curve

    check_workers(num_workers)
    if not Path(target).exists():
        raise DataError(f"target '{target}' does not exist")
    sizes = parse_sizes(per_class or ("all" if by_depth else "1,5,10,25,50,all"))
    if by_depth:
        runs = [entry for entry in sources.split(",") if entry.strip() not in ("scratch", "imagenet", "")]
        if len(runs) != 1 or len(sizes) != 1:
            raise ConfigError(
                "--by-depth takes one run folder in --from and one --per-class size",
                hint="e.g. graft curve TARGET --by-depth --from runs/mnist --per-class 10",
            )
        return depth_curve(target, out, runs[0].strip(), sizes[0], repeats or 1, seed, batch_size, num_workers, quiet)
    return per_class_curve(
        target, out, sizes, parse_sources(sources), repeats or 3, seed, batch_size, num_workers, quiet
    )


def _require_inputs(config: RunConfig) -> None:
    """The data, label file, domains and weights a config names exist (before anything slow)."""
    if config.data is not None and not Path(config.data).exists():
        raise DataError(f"data folder '{config.data}' does not exist or is not a folder")
    for name, spec in (config.domains or {}).items():
        path = spec.split(":")[0] if spec.count(":") == 2 else spec
        if not Path(path).is_dir():
            raise DataError(f"--domain {name}: '{path}' does not exist or is not a folder")
    if config.labels and config.labels.lower().endswith(".csv") and not Path(config.labels).is_file():
        raise DataError(f"labels file '{config.labels}' does not exist")
    if config.reweight is not None and not Path(config.reweight).is_dir():
        raise DataError(f"--reweight folder '{config.reweight}' does not exist or is not a folder")
    if config.weights is not None and not Path(config.weights).is_file():
        raise ConfigError(f"--weights file '{config.weights}' does not exist")


def adapt(
    source: str | os.PathLike,
    target: str | os.PathLike,
    out: str | os.PathLike,
    *,
    method: str | None = None,
    strength: float | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Unsupervised domain adaptation: a classifier for the ``target`` domain (a folder of unlabelled images;
    class folders there are read for the report only) from the labelled ``source`` (class folders).

    method: ``"auto"`` (default: each candidate trained on the same cached rows, the one with the best
        unsupervised validator kept; see :mod:`graft.adaptation.auto`), ``"source-only"`` (the baseline),
        ``"adabn"``, ``"coral"``, ``"dann"``, ``"mcc"``, or ``"adabn+coral"``/``"adabn+dann"``/``"adabn+mcc"``.
    strength: the weight of the alignment term (default: the method's).
    options: as :func:`train` (mode ``"extract"`` or ``"finetune"``, epochs, seed, ...). Returns the
    ``train`` JSON summary with the method, the target's unsupervised scores, the proxy A-distance
    before and after, and the target accuracy when the target folder has class folders.
    """
    if target is None:
        raise ConfigError("graft adapt needs TARGET, a folder of the target domain's images")
    if not Path(target).is_dir():
        raise DataError(f"target folder '{target}' does not exist or is not a folder")
    return train(source, out, target=target, method=method, strength=strength, **options)


def train_multitask(data: str | os.PathLike | None, out: str | os.PathLike, **options: Any) -> dict[str, Any]:
    """:func:`train` for several tasks (``labels=...``) or domains (``domains=...``): the same options,
    and a clear error when neither is given."""
    if options.get("labels") is None and options.get("domains") is None:
        raise ConfigError(
            "multi-task training needs --labels (a preset such as utkface, a CSV file, or re:PATTERN), or --domain "
            "NAME=PATH per domain"
        )
    return train(data, out, **options)


def _text(value: str | os.PathLike | None) -> str | None:
    return None if value is None else str(value)


def resume(run: str | os.PathLike, *, num_workers: int | None = None, quiet: bool = False) -> dict[str, Any]:
    """Continue a killed or interrupted run of any kind from its last completed epoch (same plan,
    optimizer, schedule and random state); returns the ``train`` JSON summary."""
    check_workers(num_workers)
    if not Path(run).is_dir():
        raise RunFolderError(f"'{run}' is not a graft run folder that can be resumed (it does not exist)")
    from graft.core import trainer

    return trainer.resume(run, num_workers=num_workers, quiet=quiet)


def evaluate(
    run: str | os.PathLike | TrainedRun, data: str | os.PathLike | None = None, batch_size: int = 32, tta: int = 0
) -> dict[str, Any]:
    """Metrics of a run on labelled data: loss, accuracy, per-class precision/recall/F1 and a confusion
    matrix PNG (a multi-task run: every task, accuracy/F1 or MAE). Without ``data``: the run's held-out
    test split (valid if it has none). ``tta``: test-time augmentation, the mean over the clean view and
    ``tta`` seeded augmented views (single-task runs)."""
    if isinstance(run, (str, os.PathLike)):
        require_run_folder(run)  # a wrong run answers before a wrong DATA, and before torch loads
    if data is not None:  # labelled images are a folder or arrays; labelled texts may be a table file
        if _is_text_run(run) or Path(data).suffix == ".npz":
            require_paths([data])
        else:
            require_folder(data)
    trained = load(run) if isinstance(run, (str, os.PathLike)) else run
    return trained.evaluate(data, batch_size=batch_size, tta=tta)


def _is_text_run(run: str | os.PathLike | TrainedRun) -> bool:
    """Whether ``run`` (a folder, read without torch, or a loaded run) was trained on text."""
    if isinstance(run, (str, os.PathLike)):
        return run_modality(run) == "text"
    return getattr(getattr(run, "modality", None), "name", None) == "text"


def predict(
    run: str | os.PathLike | TrainedRun, images: Sequence[str | os.PathLike], tta: int = 0
) -> list[dict[str, Any]]:
    """Predictions for each input, from a trained run of any kind (``tta``: as in :func:`evaluate`). A text
    run takes texts, or files of them (a table's text column, a ``.txt`` file, a folder of ``.txt`` files)."""
    if isinstance(run, (str, os.PathLike)):
        require_run_folder(run)  # a wrong run answers before a wrong image, and before torch loads
    if not _is_text_run(run):  # an argument that is not a file is a text to a text run
        require_paths(images)
    trained = load(run) if isinstance(run, (str, os.PathLike)) else run
    return trained.predict(images, tta=tta)
