"""The ``graft`` command: a thin Typer layer over ``graft.api``.

Results go to stdout (human-readable, or one JSON document with ``--json``); progress and logs go to
stderr. Users' mistakes (``GraftError``) become a message, a hint and an exit code, never a traceback;
with ``--json`` the error is also a JSON object on stdout (``{"error", "hint", "exit_code"}``).
Commands import torch only after their arguments and paths are checked (``graft.api``).
"""

from __future__ import annotations

import functools
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Optional

import typer

from graft import perf

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Transfer learning from pretrained networks, fast on a CPU and offline.",
)

JsonOption = Annotated[
    bool, typer.Option("--json", help="Print one JSON document on stdout (progress stays on stderr).")
]
BackboneOption = Annotated[
    str, typer.Option("--backbone", "-b", help="Backbone name (graft backbones lists the offline ones).")
]
WeightsOption = Annotated[
    Optional[Path], typer.Option("--weights", help="Weights file (safetensors, or a .pth state dict) for the backbone.")
]
NprocOption = Annotated[
    Optional[int],
    typer.Option(
        "--nproc",
        help="Train in this many processes on this machine (launches torchrun --standalone --nproc_per_node N; "
        "several machines: torchrun's --nnodes / --rdzv-endpoint with -m graft train or -m graft adapt).",
    ),
]


def _show_version(value: bool) -> None:
    if value:
        from graft import __version__

        print(f"graft {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_show_version, is_eager=True, help="Print graft's version and exit."),
    ] = False,
) -> None:
    """Transfer learning from pretrained networks, fast on a CPU and offline."""


def _first_process() -> bool:
    """Whether this process speaks for the command: always, but under torchrun only rank 0 (every rank hits
    the same error; one JSON answer, not one per process)."""
    return os.environ.get("RANK", "0") == "0"


def _handle_errors(command: Callable) -> Callable:
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        from graft.console import stderr
        from graft.errors import GraftError

        try:
            return command(*args, **kwargs)
        except GraftError as error:
            # under torchrun every process meets the same error: each line says whose it is
            whose = "" if _first_process() else f"process {os.environ['RANK']}: "
            stderr.print(f"[bold red]{whose}error:[/] {error.message}", highlight=False, soft_wrap=True)
            if error.hint:
                stderr.print(f"[dim]hint:[/] {error.hint}", highlight=False, soft_wrap=True)
            if kwargs.get("json_output") and _first_process():
                from graft.console import emit_json

                emit_json({"error": error.message, "hint": error.hint, "exit_code": error.exit_code})
            raise typer.Exit(error.exit_code) from None
        except KeyboardInterrupt:
            stderr.print("[yellow]interrupted[/]")
            if kwargs.get("json_output") and _first_process():
                from graft.console import emit_json

                emit_json({"error": "interrupted", "hint": None, "exit_code": 130})
            raise typer.Exit(130) from None

    return wrapper


def _default_backbone() -> str:
    return "tf_efficientnet_lite0"


@app.command()
@_handle_errors
def backbones(json_output: JsonOption = False):
    """List the built-in backbones (weights ship in pip packages, so they work offline)."""
    from graft.console import emit_json, stdout, table
    from graft.image.backbones import get_spec, list_backbones

    rows = []
    for name in list_backbones():
        spec = get_spec(name)
        try:
            spec.weights.locate()
            installed = True
        except Exception:
            installed = False
        rows.append(
            {
                "name": name,
                "description": spec.description,
                "input_size": spec.preprocessing.input_size,
                "license": spec.license,
                "package": spec.weights.pip_name,
                "installed": installed,
            }
        )
    if json_output:
        emit_json(rows)
    else:
        listing = table(
            "built-in backbones",
            ["name", "installed", "description", "weights package"],
            [[r["name"], "yes" if r["installed"] else "no", r["description"], r["package"]] for r in rows],
        )
        listing.columns[0].no_wrap = True  # the name is what one types: never cut or wrapped
        listing.columns[3].overflow = "fold"  # and so is the package: folded onto the next line, never cut
        stdout.print(listing)
        stdout.print("Any other timm model name works when online, or with --weights FILE.")


@app.command()
@_handle_errors
def classify(
    images: Annotated[list[str], typer.Argument(help="Image files or folders (with --classes: texts or text files).")],
    backbone: Annotated[
        Optional[str],
        typer.Option("--backbone", "-b", help="Default: tf_efficientnet_lite0 (images), all-MiniLM-L6-v2 (--classes)."),
    ] = None,
    weights: WeightsOption = None,
    top: Annotated[int, typer.Option("--top", help="How many labels to show per input.")] = 5,
    classes: Annotated[
        Optional[str],
        typer.Option("--classes", help="Zero-shot text classification into these comma-separated class names."),
    ] = None,
    json_output: JsonOption = False,
):
    """Use a pretrained network as is: the ImageNet classifier's top-k labels, or (--classes) zero-shot
    text classification by a sentence encoder."""
    from graft.api import classify as run_classify
    from graft.console import emit_json, stdout

    results = run_classify(
        images,
        backbone=backbone,
        top=top,
        weights=str(weights) if weights else None,
        classes=classes.split(",") if classes is not None else None,
    )
    if json_output:
        emit_json(results)
        return
    for result in results:
        stdout.print(f"[bold]{_subject(result)}[/]", highlight=False)
        for entry in result["top"]:
            stdout.print(f"  {entry['prob']:7.2%}  {entry['label']}")


@app.command()
@_handle_errors
def train(
    context: typer.Context,
    data: Annotated[
        Optional[Path],
        typer.Argument(
            help="DATA/<class>/... or DATA/{train,valid,test}/<class>/... (multi-task: a folder of images with "
            "--labels)."
        ),
    ] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Run folder to write (required).")] = None,
    mode: Annotated[
        str,
        typer.Option(
            "--mode",
            help="extract (frozen backbone, new head), finetune (also train the last K stages), or auto (graft advise "
            "decides; on small data a race of plans on folds of the data; saved as advice.json).",
        ),
    ] = "extract",
    backbone: Annotated[
        Optional[str],
        typer.Option(
            "--backbone",
            "-b",
            help="Backbone name (default: tf_efficientnet_lite0 for images, all-MiniLM-L6-v2 for text).",
        ),
    ] = None,
    text_column: Annotated[
        Optional[str], typer.Option("--text-column", help="Text tables: the column holding the text (default: text).")
    ] = None,
    label_column: Annotated[
        Optional[str],
        typer.Option("--label-column", help="Text tables: the column holding the label (default: label)."),
    ] = None,
    weights: WeightsOption = None,
    from_scratch: Annotated[
        bool, typer.Option("--from-scratch", help="Random initial weights instead of pretrained ones (a baseline).")
    ] = False,
    unfreeze: Annotated[
        Optional[int],
        typer.Option("--unfreeze", help="finetune: how many of the last stages train (default: a third)."),
    ] = None,
    epochs: Annotated[Optional[int], typer.Option("--epochs", help="Maximum epochs (default 10).")] = None,
    lr: Annotated[
        Optional[float],
        typer.Option("--lr", help="Head learning rate; trained backbone stages get lr x --backbone-lr-mult."),
    ] = None,
    backbone_lr_mult: Annotated[
        Optional[float],
        typer.Option(
            "--backbone-lr-mult", help="Learning-rate multiplier of the trained backbone stages (default 0.1)."
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size")] = 32,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    head: Annotated[str, typer.Option("--head", help="linear or mlp.")] = "linear",
    bn: Annotated[
        Optional[str],
        typer.Option("--bn", help="BatchNorm statistics of trained stages: train (update, default) or frozen."),
    ] = None,
    head_epochs: Annotated[
        Optional[int],
        typer.Option(
            "--head-epochs",
            help="finetune: epochs training the new head alone before unfreezing (default 0; auto decides).",
        ),
    ] = None,
    greedy_epochs: Annotated[
        Optional[int],
        typer.Option(
            "--greedy-epochs",
            help="--from-scratch --mode finetune: greedy layer-wise pre-training first, this many epochs a stage.",
        ),
    ] = None,
    patience: Annotated[
        int, typer.Option("--patience", help="Stop after this many epochs without a better validation score.")
    ] = 5,
    augment: Annotated[
        Optional[bool],
        typer.Option(
            "--augment/--no-augment",
            help="Random crops, flips and colour jitter while training (default: finetune yes, extract no).",
            show_default=False,
        ),
    ] = None,
    views: Annotated[
        Optional[int],
        typer.Option(
            "--views",
            help="Augmented views per training image computed through the frozen stages and cached (with --augment; "
            "default 4).",
        ),
    ] = None,
    cache: Annotated[
        bool,
        typer.Option(
            "--cache/--no-cache",
            help="Compute the frozen stages once per image and view and keep them on disk; --no-cache recomputes them "
            "every epoch.",
        ),
    ] = True,
    cache_dir: Annotated[
        Optional[Path],
        typer.Option("--cache-dir", help="Where cached activations live (default $GRAFT_CACHE_DIR or ~/.cache/graft)."),
    ] = None,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite",
            help="If --out holds a finished run or other files, move them aside (never deleted) and train anew.",
        ),
    ] = False,
    resume: Annotated[
        Optional[Path],
        typer.Option(
            "--resume",
            help="Continue a killed or interrupted run folder from its last completed epoch (other options come from "
            "the run).",
        ),
    ] = None,
    workers: Annotated[
        Optional[int],
        typer.Option(
            "--workers",
            help="Worker processes: those of the frozen pass (default: one per core, each decoding and running the "
            "frozen stages) and, without the cache, image decoding (default: 0 on <= 2 cores).",
        ),
    ] = None,
    deterministic: Annotated[
        bool, typer.Option("--deterministic", help="Deterministic kernels: identical numbers on a rerun.")
    ] = False,
    device: Annotated[
        str, typer.Option("--device", help="auto (a CUDA GPU when torch sees one), cpu, cuda or cuda:N.")
    ] = "auto",
    precision: Annotated[
        str,
        typer.Option(
            "--precision",
            help="auto (bf16 mixed precision on a GPU that has it, else fp32), fp32 or bf16: the trainable part's "
            "forward pass; weights and the optimizer stay fp32.",
        ),
    ] = "auto",
    log: Annotated[
        Optional[str],
        typer.Option(
            "--log",
            help="tensorboard: every epoch's scalars and the confusion matrices in RUN/tensorboard/ (tensorboard "
            "--logdir RUN).",
        ),
    ] = None,
    labels: Annotated[
        Optional[str],
        typer.Option(
            "--labels",
            help="Multi-task labels: utkface (file-name preset), a CSV (file column + one column per task), "
            "re:PATTERN with named groups, or columns (a text table: one column per task).",
            rich_help_panel="Multi-task / multi-domain",
        ),
    ] = None,
    tasks: Annotated[
        Optional[str],
        typer.Option(
            "--tasks",
            help="Tasks to learn: age,gender,race (preset names) or "
            "age:regression,gender:male/female,kind:classification.",
            rich_help_panel="Multi-task / multi-domain",
        ),
    ] = None,
    domain: Annotated[
        Optional[list[str]],
        typer.Option(
            "--domain",
            help="Multi-domain: NAME=PATH (class folders) or NAME=PATH:LABELS:TASK; repeat per domain; a head per "
            "domain on one backbone.",
            rich_help_panel="Multi-task / multi-domain",
        ),
    ] = None,
    sharing: Annotated[
        Optional[str],
        typer.Option(
            "--sharing",
            help="hard (one trunk, a head per task; default) or soft (a tower per task, tied by --tie).",
            rich_help_panel="Multi-task / multi-domain",
        ),
    ] = None,
    tie: Annotated[
        Optional[float],
        typer.Option(
            "--tie",
            help="Soft sharing: weight of the squared L2 distance between the towers' trained parameters (default 0).",
            rich_help_panel="Multi-task / multi-domain",
        ),
    ] = None,
    task_weighting: Annotated[
        Optional[str],
        typer.Option(
            "--task-weighting",
            help="uncertainty (learned per-task weights; default) or equal (regression targets are standardised "
            "either way).",
            rich_help_panel="Multi-task / multi-domain",
        ),
    ] = None,
    valid_fraction: Annotated[
        Optional[float],
        typer.Option(
            "--valid-fraction",
            help="Share of the images held out for validation when DATA has no valid/ (default 0.2; several tasks "
            "0.15).",
        ),
    ] = None,
    test_fraction: Annotated[
        Optional[float],
        typer.Option(
            "--test-fraction",
            help="Share held out for the final test (default 0.15).",
            rich_help_panel="Multi-task / multi-domain",
        ),
    ] = None,
    image_size: Annotated[
        Optional[int],
        typer.Option(
            "--image-size",
            help="Input size instead of the backbone's (smaller is faster; small source images lose nothing).",
        ),
    ] = None,
    limit: Annotated[
        Optional[int],
        typer.Option(
            "--limit",
            help="Use a seeded random subset of this many images (per domain: training images).",
            rich_help_panel="Multi-task / multi-domain",
        ),
    ] = None,
    time_budget: Annotated[
        Optional[float],
        typer.Option(
            "--time-budget",
            help="Stop after the epoch that passes this many seconds of training (--mode auto: half of it bounds the "
            "race of plans on small data, the rest the final training).",
        ),
    ] = None,
    reweight: Annotated[
        Optional[Path],
        typer.Option(
            "--reweight",
            help="Sample-selection bias: a folder of unlabelled images drawn like the world; training examples are "
            "weighted by p_world/p_sample (estimated on frozen features).",
            rich_help_panel="Distribution shift",
        ),
    ] = None,
    weight_estimator: Annotated[
        Optional[str],
        typer.Option(
            "--weight-estimator",
            help="With --reweight: classifier (a domain classifier; default), kliep, labelshift (the bias drew "
            "some classes more often than others: the pool's class frequencies by EM, applied as a shift of the "
            "class priors in the logits), or none (every weight 1: "
            "the same run uncorrected, to see what the weights do).",
            rich_help_panel="Distribution shift",
        ),
    ] = None,
    nproc: NprocOption = None,
    json_output: JsonOption = False,
):
    """Train a classifier on a folder of class folders by transfer from a pretrained backbone (or several
    tasks or domains at once)."""
    from graft.errors import ConfigError

    if nproc is not None:
        _launch_processes(nproc)  # returns only for --nproc 1
    from graft.api import train as run_train
    from graft.console import emit_json

    if resume is not None:
        from graft.api import resume as run_resume

        given = [
            name
            for name in context.params
            if name not in ("resume", "workers", "json_output", "nproc")
            and getattr(context.get_parameter_source(name), "name", "DEFAULT") not in ("DEFAULT", "DEFAULT_MAP")
        ]
        if given:
            flags = ", ".join("DATA" if name == "data" else "--" + name.replace("_", "-") for name in given)
            raise ConfigError(
                f"--resume continues a run with the options it was started with; {flags} cannot be changed",
                hint=f"drop {flags} (only --workers, --nproc and --json go with --resume), or start a new run "
                "with --out",
            )
        summary = run_resume(resume, num_workers=workers)
        if json_output and _first_process():
            emit_json(summary)
        return
    if out is None:
        raise ConfigError(
            "graft train needs --out RUN_FOLDER", hint="graft train DATA --out runs/NAME (or --resume RUN)"
        )
    domains = {}
    for entry in domain or []:
        name, sep, path = entry.partition("=")
        if not sep or not name or not path:
            raise ConfigError(
                f"--domain '{entry}' must be NAME=PATH",
                hint="e.g. --domain signs=data/signs --domain faces=utkface/images:utkface:gender",
            )
        domains[name] = path
    summary = run_train(
        data,
        out,
        mode=mode,
        backbone=backbone,
        weights=weights,
        pretrained=not from_scratch,
        unfreeze=unfreeze,
        epochs=epochs,
        lr=lr,
        backbone_lr_mult=backbone_lr_mult,
        bn=bn,
        head=head,
        head_epochs=head_epochs,
        greedy_epochs=greedy_epochs,
        batch_size=batch_size,
        augment=augment,
        views=views,
        cache=cache,
        cache_dir=cache_dir,
        image_size=image_size,
        patience=patience,
        time_budget=time_budget,
        seed=seed,
        deterministic=deterministic,
        device=device,
        precision=precision,
        log=log,
        labels=labels,
        tasks=tasks,
        domains=domains or None,
        sharing=sharing,
        tie=tie,
        task_weighting=task_weighting,
        valid_fraction=valid_fraction,
        test_fraction=test_fraction,
        limit=limit,
        text_column=text_column,
        label_column=label_column,
        reweight=reweight,
        weight_estimator=weight_estimator,
        num_workers=workers,
        overwrite=overwrite,
    )
    if json_output and _first_process():  # one summary, from the rank that wrote the run
        emit_json(summary)


def _launch_processes(count: int) -> None:
    """``graft train|adapt --nproc N``: this same command again under torchrun in N processes, which this
    process waits for; its exit code is theirs. Refuses what does not apply; returns for ``--nproc 1``."""
    from graft.core.distributed import launched_by_torchrun
    from graft.errors import ConfigError

    if count < 1:
        raise ConfigError(f"--nproc must be at least 1; got {count}")
    if launched_by_torchrun():
        raise ConfigError("--nproc launches torchrun; this process is already one of torchrun's", hint="drop --nproc")
    if count == 1:
        return
    arguments, skip = [], False
    for argument in sys.argv[1:]:
        if skip:
            skip = False
        elif argument == "--nproc":
            skip = True
        elif not argument.startswith("--nproc="):
            arguments.append(argument)
    raise typer.Exit(_torchrun(["--standalone", f"--nproc_per_node={count}", "-m", "graft", *arguments]))


def _torchrun(arguments: list[str]) -> int:
    """Run torchrun with ``arguments`` in this process and return the exit code of its processes. A failed
    process has said why itself (graft's one-line error); torchrun's own traceback and failure table, which
    would bury that line, are not printed, and a process that died without a word (a signal) is named."""
    import logging

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    from graft.console import stderr

    os.environ.setdefault("OMP_NUM_THREADS", "1")  # torchrun's own default, set here without its banner
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        run(parse_args(arguments))
    except ChildFailedError as failed:
        # A process killed by a signal is the cause (the others then fail to reach it) and printed nothing;
        # torchrun itself then stops the rest with SIGTERM.
        rank, failure = min(
            failed.failures.items(),
            key=lambda item: (item[1].exitcode >= 0, item[1].exitcode == -signal.SIGTERM, item[0]),
        )
        if failure.exitcode < 0:
            stderr.print(f"[bold red]error:[/] process {rank} of the run ended by signal {failure.signal_name()}")
            stderr.print("[dim]hint:[/] graft train --resume RUN_FOLDER continues from the last checkpoint")
            return 128 - failure.exitcode
        return failure.exitcode
    return 0


@app.command()
@_handle_errors
def pretrain(
    data: Annotated[
        Path,
        typer.Argument(
            help="A large labelled set: image class folders, an .npz (x_train, y_train, x_test, y_test, as Keras's "
            "mnist.npz) or a folder of MNIST-named IDX files."
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder to write; it is then a backbone.")],
    arch: Annotated[
        Optional[str],
        typer.Option("--arch", help="graft_cnn (default, plain CNN), graft_resnet (small ResNet), or a timm name."),
    ] = None,
    greedy: Annotated[
        bool,
        typer.Option("--greedy", help="Greedy layer-wise: one stage at a time, the earlier ones frozen, then all."),
    ] = False,
    greedy_epochs: Annotated[
        Optional[int], typer.Option("--greedy-epochs", help="With --greedy: epochs for each stage (default 2).")
    ] = None,
    unlabelled: Annotated[
        bool,
        typer.Option(
            "--unlabelled",
            help="Self-taught: learn features without labels (a denoising autoencoder); DATA's labels are unused.",
        ),
    ] = False,
    epochs: Annotated[int, typer.Option("--epochs", help="Epochs of the whole network (after --greedy's stages).")] = 5,
    lr: Annotated[float, typer.Option("--lr", help="Learning rate (one-cycle peak).")] = 2e-3,
    batch_size: Annotated[int, typer.Option("--batch-size")] = 128,
    image_size: Annotated[
        Optional[int], typer.Option("--image-size", help="Input size instead of the architecture's (32 px).")
    ] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    deterministic: Annotated[
        bool, typer.Option("--deterministic", help="Deterministic kernels: identical numbers on a rerun.")
    ] = False,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")] = "auto",
    workers: Annotated[Optional[int], typer.Option("--workers", help="Image-decoding worker processes.")] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Move what --out holds aside (never deleted) and train anew.")
    ] = False,
    json_output: JsonOption = False,
):
    """Pre-train a source network from nothing (end to end or --greedy); then graft train TARGET --backbone RUN."""
    from graft.api import pretrain as run_pretrain
    from graft.console import emit_json

    summary = run_pretrain(
        data,
        out,
        arch=arch,
        greedy=greedy,
        greedy_epochs=greedy_epochs,
        unlabelled=unlabelled,
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        image_size=image_size,
        seed=seed,
        deterministic=deterministic,
        device=device,
        num_workers=workers,
        overwrite=overwrite,
    )
    if json_output:
        emit_json(summary)


@app.command()
@_handle_errors
def curve(
    target: Annotated[Path, typer.Argument(help="The user's labelled data (class folders, .npz or IDX files).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for curve.json and curve.png (resumable).")],
    sources: Annotated[
        str,
        typer.Option(
            "--from",
            help="Sources, comma-separated: scratch, imagenet, run folders, backbone names; NAME:finetune to "
            "fine-tune (default: extract; scratch trains everything).",
        ),
    ] = "scratch,imagenet",
    per_class: Annotated[
        Optional[str],
        typer.Option(
            "--per-class", help="Labelled examples per class to try (default 1,5,10,25,50,all; --by-depth: all)."
        ),
    ] = None,
    by_depth: Annotated[
        bool,
        typer.Option(
            "--by-depth",
            help="Yosinski's layer table: the first n stages of the one run in --from transferred (frozen, "
            "fine-tuned), for every n, at one --per-class size.",
        ),
    ] = False,
    repeats: Annotated[
        Optional[int], typer.Option("--repeats", help="Seeded draws per point (default 3; --by-depth 1).")
    ] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    batch_size: Annotated[int, typer.Option("--batch-size")] = 32,
    workers: Annotated[Optional[int], typer.Option("--workers", help="Worker processes of the frozen pass.")] = None,
    json_output: JsonOption = False,
):
    """When transfer pays on your data: accuracy against examples per class, or stage by stage (--by-depth)."""
    from graft.api import curve as run_curve
    from graft.console import emit_json, stdout

    result = run_curve(
        target,
        out,
        sources=sources,
        per_class=per_class,
        by_depth=by_depth,
        repeats=repeats,
        seed=seed,
        batch_size=batch_size,
        num_workers=workers,
    )
    if json_output:
        emit_json(result)
        return
    for line in result["summary"]:
        stdout.print(line)
    stdout.print(f"table and plot: {Path(out) / 'curve.json'}, {Path(out) / 'curve.png'}")


@app.command()
@_handle_errors
def adapt(
    source: Annotated[Path, typer.Argument(help="The labelled source domain: SOURCE/<class>/... (as graft train).")],
    target: Annotated[
        Path,
        typer.Argument(
            help="The target domain: a folder of unlabelled images (class sub-folders, if any, are used only to "
            "report the target's accuracy)."
        ),
    ],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Run folder to write (required).")] = None,
    method: Annotated[
        Optional[str],
        typer.Option(
            "--method",
            help="auto (default: every candidate trained, the best by an unsupervised validator kept), source-only, "
            "adabn, coral, dann, mcc, adabn+coral, adabn+dann or adabn+mcc.",
        ),
    ] = None,
    strength: Annotated[
        Optional[float], typer.Option("--strength", help="Weight of the method's alignment term (default: its own).")
    ] = None,
    mode: Annotated[
        str, typer.Option("--mode", help="extract (frozen backbone; default) or finetune (also the last K stages).")
    ] = "extract",
    backbone: Annotated[Optional[str], typer.Option("--backbone", "-b", help="Backbone name.")] = None,
    weights: WeightsOption = None,
    from_scratch: Annotated[
        bool, typer.Option("--from-scratch", help="Random initial weights instead of pretrained ones (a baseline).")
    ] = False,
    unfreeze: Annotated[
        Optional[int], typer.Option("--unfreeze", help="finetune: how many of the last stages train.")
    ] = None,
    epochs: Annotated[Optional[int], typer.Option("--epochs", help="Epochs (default 20).")] = None,
    lr: Annotated[Optional[float], typer.Option("--lr", help="Head learning rate.")] = None,
    batch_size: Annotated[
        int, typer.Option("--batch-size", help="Source rows per batch (and as many target rows).")
    ] = 32,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    valid_fraction: Annotated[
        Optional[float], typer.Option("--valid-fraction", help="Share of the source held out (default 0.2).")
    ] = None,
    cache_dir: Annotated[Optional[Path], typer.Option("--cache-dir", help="Where cached activations live.")] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Move what --out holds aside (never deleted) and train anew.")
    ] = False,
    workers: Annotated[Optional[int], typer.Option("--workers", help="Processes of the frozen pass.")] = None,
    deterministic: Annotated[bool, typer.Option("--deterministic", help="Identical numbers on a rerun.")] = False,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")] = "auto",
    nproc: NprocOption = None,
    json_output: JsonOption = False,
):
    """Adapt a classifier to a new domain: labelled SOURCE images, unlabelled TARGET images with the same
    classes. Reports whether it helped without target labels (validator, proxy A-distance, a t-SNE
    picture); graft train --resume, evaluate, predict and export work on the run folder."""
    from graft.api import adapt as run_adapt
    from graft.console import emit_json
    from graft.errors import ConfigError

    if out is None:
        raise ConfigError("graft adapt needs --out RUN_FOLDER", hint="graft adapt SOURCE TARGET --out runs/NAME")
    if nproc is not None:
        _launch_processes(nproc)  # returns only for --nproc 1
    summary = run_adapt(
        source,
        target,
        out,
        method=method,
        strength=strength,
        mode=mode,
        backbone=backbone,
        weights=weights,
        pretrained=not from_scratch,
        unfreeze=unfreeze,
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        seed=seed,
        valid_fraction=valid_fraction,
        cache_dir=cache_dir,
        deterministic=deterministic,
        device=device,
        num_workers=workers,
        overwrite=overwrite,
    )
    if json_output and _first_process():  # one summary, from the rank that wrote the run
        emit_json(summary)


@app.command()
@_handle_errors
def advise(
    data: Annotated[Path, typer.Argument(help="DATA/<class>/... or DATA/{train,valid,test}/<class>/...")],
    backbone: BackboneOption = "tf_efficientnet_lite0",
    backbones: Annotated[
        Optional[str],
        typer.Option(
            "--backbones",
            help="Comma-separated backbones to rank by LogME on frozen features, e.g. "
            "tf_efficientnet_lite0,mobilenetv2_100.",
        ),
    ] = None,
    weights: WeightsOption = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the image subsample measured.")] = 0,
    per_class: Annotated[
        Optional[int], typer.Option("--per-class", help="Images per class measured (default 8-32, by class count).")
    ] = None,
    target: Annotated[
        Optional[Path],
        typer.Option(
            "--target",
            help="A folder of unlabelled images of another domain (paintings for photos): say how far apart DATA "
            "and it are and whether graft adapt is likely to be worth it.",
        ),
    ] = None,
    per_domain: Annotated[
        Optional[int], typer.Option("--per-domain", help="With --target: images of each domain measured (default 256).")
    ] = None,
    json_output: JsonOption = False,
):
    """Measure data size and domain similarity; advise a scenario (1-4) and a training plan (or rank --backbones,
    or with --target say whether domain adaptation is likely to pay)."""
    from graft.console import emit_json, stdout, table
    from graft.core.advisor import LOGME_MEANING, rank_backbones
    from graft.core.advisor import advise as run_advise
    from graft.errors import ConfigError

    if target is not None:
        for given, name in ((backbones, "--backbones"), (per_class, "--per-class")):
            if given is not None:
                raise ConfigError(f"{name} does not apply with --target", hint="--per-domain sets the images measured")
        _advise_domains(data, target, backbone, weights, seed, per_domain, json_output)
        return
    if per_domain is not None:
        raise ConfigError("--per-domain only applies with --target TARGET_FOLDER")
    if backbones:
        ranking = rank_backbones(
            data, [name.strip() for name in backbones.split(",") if name.strip()], seed=seed, per_class=per_class
        )
        if json_output:
            emit_json({"ranking": ranking, "best": ranking[0]["backbone"], "score": "logme", "meaning": LOGME_MEANING})
            return
        stdout.print(
            table(
                "backbones ranked by LogME on frozen features (higher is better)",
                ["rank", "backbone", "LogME", "similarity", "scenario", "seconds"],
                [
                    [
                        e["rank"],
                        e["backbone"],
                        f"{e['logme']:.3f}",
                        f"{e['advice']['similarity']:.2f}",
                        e["advice"]["scenario"],
                        f"{e['advice']['seconds']:.1f}",
                    ]
                    for e in ranking
                ],
            )
        )
        stdout.print(LOGME_MEANING)
        return
    advice = run_advise(
        data, backbone=backbone, weights=str(weights) if weights else None, seed=seed, per_class=per_class
    )
    if json_output:
        emit_json(advice.to_dict())
        return
    evidence = advice.evidence
    stdout.print(
        table(
            f"evidence ({backbone}, {evidence['sample_images']} images measured in {advice.seconds:.1f}s)",
            ["stage", "BatchNorm drift (KL)", "LogME of frozen features"],
            [
                [
                    name,
                    f"{evidence['bn_drift'][name]:.3f}" if name in evidence["bn_drift"] else "-",
                    f"{evidence['logme'][name]:.3f}",
                ]
                for name in evidence["stages"]
            ],
        )
    )
    if evidence["head_confidence"] is not None:
        stdout.print(
            f"ImageNet head on these images: mean top-1 probability {evidence['head_confidence']:.3f}, normalised "
            f"entropy {evidence['head_entropy']:.3f}"
        )
    stdout.print(
        f"[bold]scenario {advice.scenario}[/]  similarity {advice.similarity:.2f}  "
        f"images {advice.size['images']}  classes {advice.size['classes']}  smallest class "
        f"{advice.size['min_per_class']}"
    )
    for reason in advice.reasons:
        stdout.print(f"- {reason}")
    plan = advice.plan
    command = f"graft train {data} --out RUN --mode {plan.mode}" + (
        f" --unfreeze {plan.unfreeze} --head-epochs {plan.head_epochs} --backbone-lr-mult {plan.backbone_lr_mult}"
        if plan.mode == "finetune"
        else ""
    )
    stdout.print(f"plan: {command} --epochs {plan.epochs} --lr {plan.lr:g}   (or simply: --mode auto)")


def _advise_domains(data, target, backbone, weights, seed, per_domain, json_output) -> None:
    """``graft advise DATA --target TARGET``'s measurement and its table."""
    from graft.adaptation.advice import SAMPLE, advise_domains
    from graft.console import emit_json, stdout, table

    found = advise_domains(
        data,
        target,
        backbone=backbone,
        weights=str(weights) if weights else None,
        seed=seed,
        per_domain=SAMPLE if per_domain is None else per_domain,
    )
    if json_output:
        emit_json(found)
        return
    images = found["images"]
    stdout.print(
        table(
            f"source vs target ({backbone}, {images['source']} + {images['target']} images in {found['seconds']:.1f}s)",
            ["stage", "proxy A-distance (0: alike, 2: always told apart)"],
            [[name, f"{found['proxy_a_distance'][name]:.2f}"] for name in found["stages"]],
        )
    )
    alone, similarity = found["source_only"], found["similarity_to_pretraining"]
    if alone["source_confidence"] is not None:
        stdout.print(
            f"source-only classifier: {alone['source_accuracy']:.3f} accuracy on held-out source images; mean top "
            f"probability {alone['source_confidence']:.3f} there, {alone['target_confidence']:.3f} on the target"
            + ("" if alone["target_accuracy"] is None else f" (target accuracy {alone['target_accuracy']:.3f})")
        )
    if similarity["source"] is not None:
        stdout.print(
            f"similarity to the pretraining data: source {similarity['source']:.2f}, target {similarity['target']:.2f}"
        )
    stdout.print(f"[bold]{found['verdict']}[/]: {found['reason']}")


@app.command()
@_handle_errors
def check(
    data: Annotated[Path, typer.Argument(help="DATA/<class>/... or DATA/{train,valid,test}/<class>/...")],
    seed: Annotated[int, typer.Option("--seed", help="Seed of the train/valid split (as in graft train).")] = 0,
    labels: Annotated[
        Optional[str],
        typer.Option(
            "--labels", help="Read DATA as graft train --labels does: utkface, a CSV file, re:PATTERN, or columns."
        ),
    ] = None,
    tasks: Annotated[
        Optional[str], typer.Option("--tasks", help="Tasks to read from --labels (as in graft train).")
    ] = None,
    text_column: Annotated[Optional[str], typer.Option("--text-column", help="Text tables: the text column.")] = None,
    label_column: Annotated[
        Optional[str], typer.Option("--label-column", help="Text tables: the label column.")
    ] = None,
    json_output: JsonOption = False,
):
    """Inspect data without training: unusable files or lines (with reasons), duplicates, class problems."""
    from graft.api import check as run_check
    from graft.console import emit_json, stdout, table
    from graft.image.checking import display_name

    result = run_check(data, seed=seed, labels=labels, tasks=tasks, text_column=text_column, label_column=label_column)
    if json_output:
        emit_json(result)
    else:
        stdout.print(
            f"[bold]graft check[/] {display_name(str(data))}: {result['layout']}; "
            + (
                f"tasks {', '.join(t['name'] for t in result['tasks'])}; "
                if "tasks" in result
                else f"{len(result['classes'])} classes; "
            )
            + (f"{result['texts']} texts" if "texts" in result else f"{result['images']} files")
            + f", {result['usable']} usable ("
            + ", ".join(f"{name} {count}" for name, count in result["counts"].items())
            + ")",
            highlight=False,
        )
        if result["skipped"]:
            stdout.print(
                table(
                    f"skipped: {len(result['skipped'])} file(s)",
                    ["reason", "files"],
                    list(result["skipped_by_reason"].items()),
                )
            )
        for kind, entries, key in (
            ("skipped", result["skipped"], "reason"),
            ("warning", result["warnings"], "message"),
        ):
            for entry in entries[:50]:
                stdout.print(f"[yellow]{kind}[/] {display_name(entry['file'])}: {entry[key]}", highlight=False)
            if len(entries) > 50:
                stdout.print(f"... and {len(entries) - 50} more {kind} entries (--json lists all)")
        for message in result["errors"]:
            stdout.print(f"[bold red]error:[/] {message}", highlight=False)
        if result.get("truncated", {}).get("texts"):
            cut = result["truncated"]
            stdout.print(
                f"[yellow]{cut['texts']} text(s) longer than {cut['max_tokens']} tokens[/] ({cut['tokenizer']}): "
                "the encoder reads their beginning"
            )
        if result["ok"]:
            stdout.print("[green]ok[/]: graft train can use this data")
    if not result["ok"]:
        raise typer.Exit(3)


@app.command()
@_handle_errors
def evaluate(
    run: Annotated[Path, typer.Argument(help="Run folder written by graft train.")],
    data: Annotated[
        Optional[Path],
        typer.Argument(
            help="Labelled images: DATA/<class>/... (or a split folder: its test/ is used). Default: the run's own "
            "held-out test split."
        ),
    ] = None,
    tta: Annotated[
        int, typer.Option("--tta", help="Test-time augmentation: average the clean view and N seeded augmented views.")
    ] = 0,
    json_output: JsonOption = False,
):
    """Loss, accuracy, per-class precision/recall/F1 and a confusion-matrix PNG (multi-task: every task)."""
    from graft.api import evaluate as run_evaluate
    from graft.console import emit_json, stdout, table

    metrics = run_evaluate(run, data, tta=tta)
    if json_output:
        emit_json(metrics)
        return
    if metrics.get("kind") == "multitask":
        stdout.print(f"evaluated on {metrics['evaluated_on']}: n {metrics['n']}, combined score {metrics['score']:.4f}")
        stdout.print(
            table(
                "per task",
                ["task", "n", "accuracy", "macro F1", "MAE", "RMSE"],
                [
                    [
                        name,
                        e["n"],
                        *(
                            (f"{e['accuracy']:.4f}", f"{e['macro_f1']:.4f}", "", "")
                            if e["kind"] == "classification"
                            else ("", "", f"{e['mae']:.3f}", f"{e['rmse']:.3f}")
                        ),
                    ]
                    for name, e in metrics["tasks"].items()
                ],
            )
        )
        return
    stdout.print(
        f"evaluated on {metrics['evaluated_on']}: accuracy {metrics['accuracy']:.4f}   loss {metrics['loss']:.4f}   n "
        f"{metrics['n']}"
    )
    stdout.print(
        table(
            "per class",
            ["class", "precision", "recall", "f1", "support"],
            [
                [name, f"{v['precision']:.3f}", f"{v['recall']:.3f}", f"{v['f1']:.3f}", v["support"]]
                for name, v in metrics["per_class"].items()
            ],
        )
    )
    stdout.print(f"confusion matrix: {metrics['confusion_matrix_png']}")


@app.command()
@_handle_errors
def predict(
    run: Annotated[Path, typer.Argument(help="Run folder written by graft train.")],
    images: Annotated[list[Path], typer.Argument(help="Image files or folders.")],
    tta: Annotated[
        int, typer.Option("--tta", help="Test-time augmentation: average the clean view and N seeded augmented views.")
    ] = 0,
    json_output: JsonOption = False,
):
    """Predict the label of each image with a trained run."""
    from graft.api import predict as run_predict
    from graft.console import emit_json, emit_line, stderr

    results = run_predict(run, images, tta=tta)
    failed = [result for result in results if "error" in result]
    if json_output:
        emit_json(results)
    for result in [] if json_output else results:
        if "error" in result:
            stderr.print(f"[bold red]error:[/] {_subject(result)}: {result['error']}", highlight=False, soft_wrap=True)
            continue
        if "tasks" in result:  # a multi-task run
            parts = [
                f"{name} {v['label']} ({v['prob']:.0%})" if "label" in v else f"{name} {v['value']:.1f}"
                for name, v in result["tasks"].items()
            ]
            emit_line(f"{', '.join(parts)}\t{_subject(result)}")
            continue
        emit_line(f"{result['label']}\t{result['prob']:.2%}\t{_subject(result)}")
    if failed:  # every readable file was predicted; the exit status says some were not
        raise typer.Exit(3)


def _subject(result: dict) -> str:
    """What a prediction is about: the image file, or the text (on one line)."""
    return result["image"] if "image" in result else " ".join(str(result.get("text", "")).split())


@app.command()
@_handle_errors
def export(
    run: Annotated[Path, typer.Argument(help="Run folder written by graft train.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="File to write, e.g. model.onnx.")],
    format: Annotated[str, typer.Option("--format", help="onnx (the only format so far).")] = "onnx",
    samples: Annotated[int, typer.Option("--samples", help="Valid-split examples the parity gate compares.")] = 64,
    int8: Annotated[
        bool, typer.Option("--int8", help="Static int8 quantisation, calibrated on the run's training examples.")
    ] = False,
    max_drop: Annotated[
        Optional[float],
        typer.Option(
            "--max-drop", help="With --int8: refuse above this many points of valid accuracy lost (default 1)."
        ),
    ] = None,
    json_output: JsonOption = False,
):
    """Export a run (ONNX), written only if ONNX Runtime matches torch on the run's own valid examples."""
    from graft.api import export as run_export
    from graft.console import emit_json, stdout

    if max_drop is not None and not int8:
        from graft.errors import ConfigError

        raise ConfigError("--max-drop only applies with --int8")
    result = run_export(
        run, out, format=format, samples=samples, int8=int8, max_drop=1.0 if max_drop is None else max_drop
    )
    if json_output:
        emit_json(result)
        return
    parity = result["parity"]
    stdout.print(
        f"wrote {result['file']} ({result['bytes'] / 1e6:.1f} MB; outputs {', '.join(result['outputs'])}); parity on "
        f"{parity['n']} {parity['split']} examples: max abs difference {parity['max_abs_diff']:.1e}, top-1 agreement "
        f"{parity['top1_agreement']:.0%}"
    )
    if "int8" in result:
        figures = result["int8"]
        if "tasks" in figures["fp32"]:
            scores = ", ".join(
                f"{task} {score['accuracy']:.2%} -> {figures['int8']['tasks'][task]['accuracy']:.2%}"
                if "accuracy" in score
                else f"{task} MAE {score['mae']:.2f} -> {figures['int8']['tasks'][task]['mae']:.2f}"
                for task, score in figures["fp32"]["tasks"].items()
            )
        else:
            scores = f"accuracy {figures['fp32']['accuracy']:.2%} -> {figures['int8']['accuracy']:.2%}"
        stdout.print(
            f"int8: {figures['split']} {scores}, "
            f"{figures['fp32']['bytes'] / 1e6:.1f} -> {figures['int8']['bytes'] / 1e6:.1f} MB, "
            f"{figures['fp32']['ms_per_image']:.1f} -> {figures['int8']['ms_per_image']:.1f} ms an example"
        )


@app.command()
@_handle_errors
def serve(
    model: Annotated[
        Path, typer.Argument(help="Run folder written by graft train, or a file written by graft export.")
    ],
    host: Annotated[str, typer.Option("--host", help="Address to listen on (0.0.0.0: every interface).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on.")] = 8000,
    max_files: Annotated[int, typer.Option("--max-files", help="Images in one request.")] = 32,
    max_request_mb: Annotated[float, typer.Option("--max-request-mb", help="Size of one request, in MB.")] = 20.0,
    max_pixels: Annotated[
        int, typer.Option("--max-pixels", help="Pixels of one image (larger: refused before decoding).")
    ] = 40_000_000,
    max_waiting: Annotated[
        int, typer.Option("--max-waiting", help="Images waiting for the model before requests get 429 (busy).")
    ] = 64,
    max_batch: Annotated[int, typer.Option("--max-batch", help="Images run through the model at once.")] = 16,
    engine: Annotated[
        str,
        typer.Option(
            "--engine",
            help="auto: ONNX Runtime when installed (a run folder is exported in memory through the parity gate), "
            "else torch; or torch, onnxruntime.",
        ),
    ] = "auto",
    json_output: JsonOption = False,
):
    """Serve a model over HTTP: POST /predict (images in form field 'file'), GET /health, /info, a page at /."""
    from graft.api import require_paths
    from graft.console import emit_json, stderr

    require_paths([model])
    from graft.deploy.server import Limits
    from graft.deploy.server import serve as run_server

    limits = Limits(
        max_request_mb=max_request_mb,
        max_files=max_files,
        max_pixels=max_pixels,
        max_waiting=max_waiting,
        max_batch=max_batch,
    )
    url = f"http://{host}:{port}/"

    def announce(served) -> None:
        if json_output:
            emit_json({"url": url, "model": str(model), "engine": served.engine})
        stderr.print(f"serving {model} on {served.engine} at {url} (a page; the API: {url}docs); Ctrl+C stops")

    run_server(model, host=host, port=port, limits=limits, announce=announce, engine=engine)


@app.command()
@_handle_errors
def studio(
    folder: Annotated[
        Path, typer.Argument(help="Where the classes' examples (FOLDER/data) and the runs (FOLDER/runs) are kept.")
    ] = Path("studio"),
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on.")] = 8000,
    json_output: JsonOption = False,
):
    """A local page that trains: make classes, drop examples, press Train, watch it learn, try it, download it."""
    from graft.console import emit_json, stderr
    from graft.deploy.studio import studio as run_studio

    if folder.exists() and not folder.is_dir():
        from graft.errors import ConfigError

        raise ConfigError(f"'{folder}' is a file; the studio needs a folder")
    url = f"http://{host}:{port}/"

    def announce() -> None:
        if json_output:
            emit_json({"url": url, "folder": str(folder)})
        stderr.print(f"graft studio at {url} (examples and runs in {folder}/); Ctrl+C stops")

    run_studio(folder, host=host, port=port, announce=announce)


@app.command()
@_handle_errors
def wakeword(
    phrase: Annotated[str, typer.Argument(help='The wake phrase, e.g. "hey graft".')],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder to create.")],
    positives: Annotated[int, typer.Option("--positives", help="Synthetic clips of the phrase.")] = 1500,
    negatives: Annotated[
        int, typer.Option("--negatives", help="Clips of confusable phrases, sentences and noise.")
    ] = 3000,
    target_fa: Annotated[
        float, typer.Option("--target-fa", help="False accepts per hour the threshold is chosen for.")
    ] = 0.5,
    hold_out: Annotated[
        str,
        typer.Option(
            "--hold-out",
            help="Voices kept for evaluation only (engine, engine:voice or espeak-ng:accent, comma-separated; "
            "none: train on every voice).",
        ),
    ] = "hibari,flite:slt,espeak-ng:en-gb-scotland",
    recordings: Annotated[
        Optional[Path], typer.Option("--recordings", help="A folder of your own recordings of the phrase.")
    ] = None,
    recordings_weight: Annotated[
        int, typer.Option("--recordings-weight", help="Times each recording is used, differently augmented.")
    ] = 5,
    eval_minutes: Annotated[
        float,
        typer.Option(
            "--eval-minutes",
            help="Minutes of held-out negative stream to measure on, and of the validation stream the "
            "threshold is chosen on.",
        ),
    ] = 60.0,
    test_positives: Annotated[
        int, typer.Option("--test-positives", help="Phrases by held-out voices in the recall stream.")
    ] = 200,
    stream_minutes: Annotated[
        float, typer.Option("--stream-minutes", help="Minutes of negative stream the head is refit with.")
    ] = 180.0,
    epochs: Annotated[int, typer.Option("--epochs", help="Epochs of the head.")] = 30,
    speaker_warp: Annotated[
        float,
        typer.Option(
            "--speaker-warp",
            help="Training speech played up to 1 +- this times as fast, pitch and formants with it (other "
            "speakers' vocal tracts); 0: off.",
        ),
    ] = 0.0,
    seed: Annotated[int, typer.Option("--seed", help="Seed of every random choice.")] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Move what --out holds aside first.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
    json_output: JsonOption = False,
):
    """A wake-word detector from a phrase alone: synthetic voices, training, a threshold, held-out figures."""
    from graft.audio.wakeword import WakewordSettings, train_wakeword
    from graft.console import emit_json, stdout

    settings = WakewordSettings(
        phrase=phrase,
        positives=positives,
        negatives=negatives,
        target_fa_per_hour=target_fa,
        hold_out=hold_out,
        recordings=None if recordings is None else str(recordings),
        recordings_weight=recordings_weight,
        eval_minutes=eval_minutes,
        test_positives=test_positives,
        stream_minutes=stream_minutes,
        epochs=epochs,
        seed=seed,
        speaker_warp=speaker_warp,
    )
    result = train_wakeword(settings, out, quiet=quiet or json_output, overwrite=overwrite)
    if json_output:
        emit_json(result)
        return
    stdout.print(
        f'"{phrase}": recall {result["recall"]:.1%} (false rejects {result["false_reject_rate"]:.1%}) at '
        f"{result['fa_per_hour']:.2f} false accepts per hour (threshold {result['threshold']:.3f}, chosen for "
        f"{target_fa}/h); best recall within 1 FA/h {result['best_recall_at_1_fa_per_hour']:.1%}; "
        f"{result['streams']['negative_hours']:.2f} h of negatives, {result['streams']['positives']} phrases by "
        f"{'held-out' if result['voices']['test_positives_from_held_out_voices'] else 'training'} voices; "
        f"{result['seconds']['total']:.0f} s; run saved to {out}"
    )


@app.command()
@_handle_errors
def listen(
    run: Annotated[Path, typer.Argument(help="Run folder written by graft wakeword.")],
    file: Annotated[Optional[Path], typer.Argument(help="A recording (WAV/FLAC) to scan.")] = None,
    threshold: Annotated[
        Optional[float], typer.Option("--threshold", help="Score to fire at (default: the run's own).")
    ] = None,
    mic: Annotated[bool, typer.Option("--mic", help="Listen to the microphone instead of a file.")] = False,
    json_output: JsonOption = False,
):
    """Detect the wake word in a long recording: the times it was said."""
    from graft.api import require_paths
    from graft.audio.stream import listen as run_listen
    from graft.audio.stream import require_microphone
    from graft.console import emit_json, stdout
    from graft.errors import ConfigError

    if mic:
        if file is not None:
            raise ConfigError("give a FILE or --mic, not both")
        require_microphone()
    if file is None:
        raise ConfigError("give a recording to scan (FILE), or --mic", hint="graft listen RUN recording.wav")
    require_paths([run, file])
    result = run_listen(run, str(file), threshold=threshold)
    if json_output:
        emit_json(result)
        return
    for detection in result["detections"]:
        stdout.print(f"{detection['time']:.2f}s\t{detection['score']:.3f}")
    stdout.print(
        f"{len(result['detections'])} detection(s) in {result['seconds']:.1f} s of audio at threshold "
        f"{result['threshold']:.3f} ({result['realtime_factor']}x real time)"
    )


@app.command()
@_handle_errors
def cache(
    cache_dir: Annotated[
        Optional[Path], typer.Option("--cache-dir", help="Cache folder (default $GRAFT_CACHE_DIR or ~/.cache/graft).")
    ] = None,
    clear: Annotated[bool, typer.Option("--clear", help="Delete every cached activation in the folder.")] = False,
    prune: Annotated[
        bool,
        typer.Option(
            "--prune",
            help="Delete the least recently used entries down to --max-size (and those older than --older-than).",
        ),
    ] = False,
    max_size: Annotated[
        Optional[str],
        typer.Option("--max-size", help="With --prune: size to trim to, e.g. 2GB (default $GRAFT_CACHE_LIMIT or 5GB)."),
    ] = None,
    older_than: Annotated[
        Optional[float],
        typer.Option("--older-than", help="With --prune: also delete entries unused for this many days."),
    ] = None,
    json_output: JsonOption = False,
):
    """Show the activation cache (frozen-stage outputs kept between runs: for which data, last used), or
    --prune / --clear it. After every run it is trimmed to $GRAFT_CACHE_LIMIT (default 5GB), least
    recently used first."""
    from datetime import datetime

    from graft.console import emit_json, stdout, table
    from graft.core.cache import cache_limit, cache_usage, clear_cache, parse_size, prune_cache
    from graft.errors import ConfigError

    if (max_size is not None or older_than is not None) and not prune:
        raise ConfigError(
            "--max-size and --older-than only apply with --prune", hint="graft cache --prune --max-size 2GB"
        )
    if prune and clear:
        raise ConfigError("--prune and --clear are two ways to empty the cache; pick one")
    removed: list = []
    if prune:
        removed = prune_cache(
            cache_dir, max_bytes=parse_size(max_size) if max_size else cache_limit(), older_than_days=older_than
        )
    usage = cache_usage(cache_dir)
    if clear:
        usage["freed_bytes"] = clear_cache(cache_dir)
    if prune:
        usage["pruned"] = removed
        usage["freed_bytes"] = sum(entry["bytes"] for entry in removed)
    if json_output:
        emit_json(usage)
        return
    listing = table(
        f"activation cache: {usage['cache_dir']} ({usage['bytes'] / 1e6:.1f} MB)",
        ["namespace", "data", "stop", "view", "images", "MB", "last used"],
        [
            [
                e["namespace"][:12],
                ", ".join(e["data"]) or "?",
                e["stop"],
                e["view"],
                e["images"],
                f"{e['bytes'] / 1e6:.1f}",
                datetime.fromtimestamp(e["last_used"]).strftime("%Y-%m-%d %H:%M"),
            ]
            for e in usage["namespaces"]
        ],
    )
    for column in listing.columns[1:4]:
        column.overflow = "fold"  # paths and views in full, folded at narrow widths
    stdout.print(listing)
    if clear or prune:
        stdout.print(f"freed {usage['freed_bytes'] / 1e6:.1f} MB")


@app.command()
@_handle_errors
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder to write.")] = Path("runs/demo"),
    json_output: JsonOption = False,
):
    """Train on the bundled sign-language-digits sample (no data of yours needed), about a minute."""
    from graft.api import train as run_train
    from graft.console import emit_json, stderr
    from graft.demo import demo_data_path

    data = demo_data_path()
    stderr.print(
        f"[bold]graft demo[/]: fine-tuning tf_efficientnet_lite0 on the bundled sign-language digits sample ({data})"
    )
    summary = run_train(
        data, out, mode="finetune", epochs=10, lr=3e-3, seed=0
    )  # 3x the default rate: 20 images per class need it (0.58 -> 0.90 valid)
    if json_output:
        emit_json(summary)
    else:
        stderr.print(f"Try: graft predict {out} {data / 'test' / '3'}   |   open {out / 'report.html'}")


def main() -> None:
    """Entry point of the ``graft`` command."""
    perf.Command.running = True
    if perf.should_tune():
        perf.tune_allocator()
    try:
        app()
    except SystemExit as finished:
        perf.exit_without_teardown(finished.code)
    perf.exit_without_teardown(0)
