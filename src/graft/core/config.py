"""One configuration for every kind of run, validated once against one table of constraints.

A :class:`RunConfig` is frozen and has sections (data, transfer, inputs, budget, runtime). ``None``
means "not given": the run's kind and mode decide the value (:meth:`RunConfig.resolved`). Every
field is described once in :data:`FIELDS`: its section, the command-line flag that sets it, its type
and the values it accepts. :func:`validate` checks a config against that table and against the rules
saying which options apply to which runs; an option that does not apply is refused, never ignored.
The same check runs for a new run, a resumed run (its ``config.json`` rebuilt with
:meth:`RunConfig.from_dict`, so a tampered file is refused with the same message) and the API.
Messages name the flag and the field (``--epochs (budget.epochs) must be ...``), so they read right
from the command line and from Python.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from graft.errors import ConfigError

MODES = ("extract", "finetune", "fewshot", "auto")
# Modes whose training fits the new head alone on frozen features (fewshot tunes its stages before that).
HEAD_ONLY_MODES = ("extract", "fewshot")
# Files that are text tables (graft.text reads them; the config only needs to recognise them).
TABLE_SUFFIXES = (".csv", ".tsv", ".jsonl")
SHARING = ("hard", "soft")
WEIGHT_ESTIMATORS = ("classifier", "kliep", "labelshift", "none")  # graft.adaptation.importance
# Unsupervised domain adaptation methods (graft.adaptation.methods registers each; auto picks one).
ADAPTATION_METHODS = (
    "auto",
    "source-only",
    "adabn",
    "coral",
    "dann",
    "mcc",
    "adabn+coral",
    "adabn+dann",
    "adabn+mcc",
)
WEIGHTINGS = ("uncertainty", "equal")
BN_POLICIES = ("train", "frozen")
HEADS = ("linear", "mlp")
PRECISIONS = ("auto", "fp32", "bf16")  # graft.core.runtime
MAX_SEED = 2**32 - 1  # NumPy's and scikit-learn's seeds stop there
DEFAULT_BACKBONE = "tf_efficientnet_lite0"
DEFAULT_EPOCHS = 10
# Adaptation's alignment terms ramp up over training and need more steps than a head alone
DEFAULT_ADAPTATION_EPOCHS = 20
DEFAULT_BACKBONE_LR_MULT = 0.1
DEFAULT_BN = "train"
# Augmented views per training image whose frozen-part activations are cached (graft.core.inputs).
DEFAULT_VIEWS = 4
# A plain class-folder dataset is split train/valid; multi-task data also gets a test split.
DEFAULT_VALID_FRACTION = {"classifier": 0.2, "multitask": 0.15, "adaptation": 0.2, "reweighted": 0.2}
DEFAULT_TEST_FRACTION = 0.15


@dataclass(frozen=True)
class Field:
    """One option: where it lives, the flag that sets it, what it accepts (``check`` returns an error
    phrase such as "must be at least 1", or None) and its type for ``config.json`` (``kind``)."""

    section: str
    flag: str
    kind: type | tuple[type, ...]
    check: Callable[[Any], str | None] | None = None
    help: str = ""


def _between(
    low: float, high: float, *, low_open: bool = False, high_open: bool = False
) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if isinstance(value, float) and not math.isfinite(value):
            return "must be a finite number"
        too_low = value <= low if low_open else value < low
        too_high = value >= high if high_open else value > high
        if too_low or too_high:
            left, right = ("(" if low_open else "["), (")" if high_open else "]")
            return f"must be in {left}{_number(low)}, {_number(high)}{right}"
        return None

    return check


def _number(value: float) -> str:
    return f"{value:,}" if float(value).is_integer() and abs(value) >= 10_000 else f"{value:g}"


def _one_of(choices: tuple[str, ...]) -> Callable[[Any], str | None]:
    return lambda value: None if value in choices else f"must be one of {', '.join(choices)}"


def _domains(value: Any) -> str | None:
    if not all(isinstance(k, str) and isinstance(v, str) and k and v for k, v in value.items()):
        return "must map domain names to paths (NAME=PATH)"
    return None if value else "needs at least one domain"


FIELDS: dict[str, Field] = {
    # data: what is learned from
    "data": Field("data", "DATA", str, help="a folder of class folders, of images with --labels, or a table of texts"),
    "text_column": Field("data", "--text-column", str, help="a table's text column (default: text)"),
    "label_column": Field("data", "--label-column", str, help="a table's label column (default: label)"),
    "labels": Field(
        "data",
        "--labels",
        str,
        help="multi-task labels: utkface, a CSV, re:PATTERN, or columns (a text table's own columns)",
    ),
    "tasks": Field("data", "--tasks", str, help="tasks to learn from --labels"),
    "domains": Field("data", "--domain", dict, _domains, "multi-domain: NAME=PATH per domain"),
    "target": Field("data", "TARGET", str, help="domain adaptation: a folder of unlabelled target-domain images"),
    "reweight": Field(
        "data", "--reweight", str, help="sample-selection bias: unlabelled examples drawn like the world"
    ),
    "weight_estimator": Field("data", "--weight-estimator", str, _one_of(WEIGHT_ESTIMATORS)),
    "valid_fraction": Field("data", "--valid-fraction", float, _between(0, 1, low_open=True, high_open=True)),
    "test_fraction": Field("data", "--test-fraction", float, _between(0, 1, high_open=True)),
    "limit": Field("data", "--limit", int, _between(1, 10**9)),
    # transfer: what is reused and what trains
    "mode": Field("transfer", "--mode", str, _one_of(MODES)),
    "backbone": Field("transfer", "--backbone", str),
    "weights": Field("transfer", "--weights", str),
    "pretrained": Field("transfer", "--from-scratch", bool),
    "unfreeze": Field("transfer", "--unfreeze", int, _between(1, 1000)),
    "lr": Field("transfer", "--lr", float, _between(0, 10, low_open=True)),
    "backbone_lr_mult": Field("transfer", "--backbone-lr-mult", float, _between(0, 100)),
    "bn": Field("transfer", "--bn", str, _one_of(BN_POLICIES)),
    "head": Field("transfer", "--head", str, _one_of(HEADS)),
    "head_epochs": Field("transfer", "--head-epochs", int, _between(0, 10_000)),
    "greedy_epochs": Field("transfer", "--greedy-epochs", int, _between(1, 10_000)),
    "sharing": Field("transfer", "--sharing", str, _one_of(SHARING)),
    "tie": Field("transfer", "--tie", float, _between(0, 1e6)),
    "task_weighting": Field("transfer", "--task-weighting", str, _one_of(WEIGHTINGS)),
    "method": Field("transfer", "--method", str, _one_of(ADAPTATION_METHODS)),
    "strength": Field("transfer", "--strength", float, _between(0, 100)),
    # inputs: how examples reach the trainable part
    "batch_size": Field("inputs", "--batch-size", int, _between(1, 4096)),
    "augment": Field("inputs", "--augment/--no-augment", bool),
    "views": Field("inputs", "--views", int, _between(0, 64)),
    "cache": Field("inputs", "--cache/--no-cache", bool),
    "cache_dir": Field("inputs", "--cache-dir", str),
    "image_size": Field("inputs", "--image-size", int, _between(32, 1024)),
    # budget: how long
    "epochs": Field("budget", "--epochs", int, _between(1, 10_000)),
    "patience": Field("budget", "--patience", int, _between(1, 10_000)),
    "time_budget": Field("budget", "--time-budget", float, _between(0, 1e7, low_open=True)),
    # runtime: where and how reproducibly
    "seed": Field("runtime", "--seed", int, _between(0, MAX_SEED)),
    "deterministic": Field("runtime", "--deterministic", bool),
    "device": Field("runtime", "--device", str),
    "precision": Field("runtime", "--precision", str, _one_of(PRECISIONS)),
    "log": Field("runtime", "--log", str, _one_of(("tensorboard",))),
}
SECTIONS = ("data", "transfer", "inputs", "budget", "runtime")
MULTITASK_ONLY = ("tasks", "sharing", "tie", "task_weighting", "test_fraction", "limit")
ADAPTATION_ONLY = ("method", "strength")


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines a training run (``None``: the default for the run's kind and mode)."""

    data: str | None = None
    text_column: str | None = None
    label_column: str | None = None
    labels: str | None = None
    tasks: str | None = None
    domains: dict[str, str] | None = None
    target: str | None = None
    reweight: str | None = None
    weight_estimator: str | None = None
    valid_fraction: float | None = None
    test_fraction: float | None = None
    limit: int | None = None
    mode: str = "extract"
    backbone: str | None = None  # None: the modality's default (graft.core.modality)
    weights: str | None = None
    pretrained: bool = True
    unfreeze: int | None = None
    lr: float | None = None
    backbone_lr_mult: float | None = None
    bn: str | None = None
    head: str = "linear"
    head_epochs: int | None = None
    greedy_epochs: int | None = None  # greedy layer-wise pre-training first: epochs per stage
    sharing: str | None = None
    tie: float | None = None
    task_weighting: str | None = None
    method: str | None = None
    strength: float | None = None
    batch_size: int = 32
    augment: bool | None = None
    views: int | None = None
    cache: bool = True
    cache_dir: str | None = None
    image_size: int | None = None
    epochs: int | None = None
    patience: int = 5
    time_budget: float | None = None
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"
    precision: str = "auto"
    log: str | None = None  # "tensorboard": scalars and confusion matrices in RUN/tensorboard/

    @property
    def kind(self) -> str:
        """``multitask`` for several tasks or domains, ``adaptation`` for a labelled source and an unlabelled
        target, ``reweighted`` for a biased sample and a pool drawn like the world (``--reweight``),
        ``classifier`` for one folder of class folders."""
        if self.labels is not None or self.domains is not None:
            return "multitask"
        if self.target is not None:
            return "adaptation"
        return "reweighted" if self.reweight is not None else "classifier"

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """The sections, for ``config.json`` (every field, given or not)."""
        values = dataclasses.asdict(self)
        return {
            section: {name: values[name] for name, field in FIELDS.items() if field.section == section}
            for section in SECTIONS
        }

    @classmethod
    def from_dict(cls, sections: Any, source: str = "config.json") -> RunConfig:
        """A config from :meth:`to_dict`'s shape, checked field by field (types, unknown keys), then
        :func:`validate`-d."""
        if not isinstance(sections, dict) or set(sections) - set(SECTIONS):
            raise ConfigError(
                f"{source}: the options must be an object with the sections {', '.join(SECTIONS)}",
                hint="was the run written by another version of graft? Train it again with another --out",
            )
        values: dict[str, Any] = {}
        for section, entries in sections.items():
            if not isinstance(entries, dict):
                raise ConfigError(f"{source}: section '{section}' must be an object")
            for name, value in entries.items():
                field = FIELDS.get(name)
                if field is None or field.section != section:
                    raise ConfigError(
                        f"{source}: unknown option '{section}.{name}'", hint="was the run written by a newer graft?"
                    )
                values[name] = value
        config = cls(**values)
        validate(config, source=source)
        return config

    def replace(self, **changes: Any) -> RunConfig:
        return dataclasses.replace(self, **changes)

    def augments(self) -> bool:
        """Whether training images are augmented: as given, else fine-tuning does and extraction does not
        (Chollet's fast feature extraction is one pass over clean images)."""
        if self.augment is not None:
            return self.augment
        return self.mode != "extract" and self.kind not in ("adaptation", "reweighted")  # clean cached rows

    def with_split_defaults(self) -> RunConfig:
        """The held-out fractions filled in (the data is split before ``--mode auto`` can advise)."""
        return self.replace(
            valid_fraction=DEFAULT_VALID_FRACTION[self.kind] if self.valid_fraction is None else self.valid_fraction,
            test_fraction=(DEFAULT_TEST_FRACTION if self.test_fraction is None else self.test_fraction)
            if self.kind == "multitask"
            else None,
        )

    def resolved(self, advised: dict[str, Any] | None = None) -> RunConfig:
        """Concrete values for every default that applies to this run (after ``advised``, the plan of
        ``--mode auto``: what the user gave wins); options that do not apply stay None, so a resolved
        config passes :func:`validate` too (``config.json`` holds it, and resume checks it again)."""
        config = self.with_split_defaults()
        if advised is not None:
            from graft.core.strategies import resolve_auto

            config = config.replace(
                **resolve_auto(
                    advised,
                    unfreeze=self.unfreeze,
                    epochs=self.epochs,
                    lr=self.lr,
                    backbone_lr_mult=self.backbone_lr_mult,
                    bn=self.bn,
                    head_epochs=self.head_epochs,
                )
            )
            if config.mode in HEAD_ONLY_MODES:  # the options that only apply to fine-tuning
                config = config.replace(backbone_lr_mult=None, bn=None, head_epochs=None)
        finetune = config.mode == "finetune"
        multitask = config.kind == "multitask"
        augment = config.augments()

        def default(name: str, value: Any, applies: bool = True) -> Any:
            given = getattr(config, name)
            return given if given is not None else (value if applies else None)

        return config.replace(
            epochs=default("epochs", DEFAULT_ADAPTATION_EPOCHS if config.kind == "adaptation" else DEFAULT_EPOCHS),
            backbone_lr_mult=default("backbone_lr_mult", DEFAULT_BACKBONE_LR_MULT, finetune),
            bn=default("bn", DEFAULT_BN, finetune),
            head_epochs=default("head_epochs", 0, finetune),
            augment=augment,
            views=default("views", DEFAULT_VIEWS, augment and config.cache) if augment and config.cache else None,
            sharing=default("sharing", "hard", multitask),
            task_weighting=default("task_weighting", "uncertainty", multitask),
            method=default("method", "auto", config.kind == "adaptation"),
            weight_estimator=default("weight_estimator", "classifier", config.kind == "reweighted"),
        )


def describe(name: str) -> str:
    """How messages name a field: its flag and its place in the config."""
    field = FIELDS[name]
    return f"{field.flag} ({field.section}.{name})"


def _type_ok(value: Any, kind: type | tuple[type, ...]) -> bool:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool):
        return bool in kinds
    if float in kinds and isinstance(value, int):
        return True
    return isinstance(value, kinds)


# Options that only mean something in some runs: (field, applies?, why not). Given (not None) where
# they do not apply, they are refused rather than silently ignored.
APPLICABILITY: list[tuple[str, Callable[[RunConfig], bool], str]] = [
    *[
        (
            name,
            lambda c: c.kind == "multitask",
            "only applies to multi-task or multi-domain runs (with --labels or --domain)",
        )
        for name in MULTITASK_ONLY
    ],
    *[
        (name, lambda c: c.kind == "adaptation", "only applies to domain adaptation (graft adapt SOURCE TARGET)")
        for name in ADAPTATION_ONLY
    ],
    ("weight_estimator", lambda c: c.reweight is not None, "needs --reweight POOL (the examples drawn like the world)"),
    ("tasks", lambda c: c.labels is not None, "needs --labels (where the tasks' labels come from)"),
    ("tie", lambda c: c.sharing == "soft" or c.tie == 0, "only applies to --sharing soft (hard sharing has one trunk)"),
    ("unfreeze", lambda c: c.mode != "extract", "only applies to --mode finetune, fewshot (or auto)"),
    (
        "greedy_epochs",
        lambda c: c.kind == "classifier" and not c.pretrained and c.mode == "finetune",
        "builds a network from nothing stage by stage: only with --from-scratch --mode finetune on one classifier "
        "(graft pretrain --greedy sets them)",
    ),
    (
        "head_epochs",
        lambda c: c.mode not in HEAD_ONLY_MODES,
        "only applies to --mode finetune (or auto): extract and fewshot train the head alone anyway",
    ),
    (
        "backbone_lr_mult",
        lambda c: c.mode not in HEAD_ONLY_MODES,
        "only applies to --mode finetune (or auto): extract and fewshot fit the head on frozen stages",
    ),
    (
        "bn",
        lambda c: c.mode not in HEAD_ONLY_MODES,
        "only applies to --mode finetune (or auto): extract and fewshot keep every BatchNorm frozen",
    ),
    (
        "views",
        lambda c: c.cache and (c.augments() or c.mode == "auto"),
        "only applies to cached, augmented training (--augment, without --no-cache)",
    ),
    ("cache_dir", lambda c: c.cache, "does not apply with --no-cache"),
    *[
        (name, lambda c: _may_hold_tables(c.data), "only applies to text tables (DATA a .csv, .tsv or .jsonl file)")
        for name in ("text_column", "label_column")
    ],
]


def _may_hold_tables(data: str | None) -> bool:
    """DATA is a table file, or a folder (which may hold train/valid/test tables: the text reader decides)."""
    import os

    return data is not None and (os.path.splitext(data)[1].lower() in TABLE_SUFFIXES or os.path.isdir(data))


def validate(config: RunConfig, source: str | None = None) -> None:
    """Check every field against :data:`FIELDS` and :data:`APPLICABILITY`; raise :class:`ConfigError`
    naming the flag and field (and ``source``, e.g. a run's config.json) on the first problem."""
    where = f"{source}: " if source else ""
    for name, field in FIELDS.items():
        value = getattr(config, name)
        if value is None:
            continue
        if not _type_ok(value, field.kind):
            expected = (
                field.kind.__name__ if isinstance(field.kind, type) else " or ".join(k.__name__ for k in field.kind)
            )
            raise ConfigError(f"{where}{describe(name)} must be a {expected}; got {value!r}")
        problem = field.check(value) if field.check else None
        if problem:
            raise ConfigError(f"{where}{describe(name)} {problem}; got {value!r}")
    for name, applies, why in APPLICABILITY:
        if getattr(config, name) is not None and not applies(config):
            raise ConfigError(f"{where}{describe(name)} {why}", hint=f"drop {FIELDS[name].flag}")
    if config.domains is not None and (config.data is not None or config.labels is not None):
        raise ConfigError(
            f"{where}give either DATA (with --labels for several tasks) or --domain NAME=PATH (at least two), not both"
        )
    if config.domains is None and config.data is None:
        raise ConfigError(
            f"{where}DATA is required (a folder of class folders, or of images with --labels), or --domain NAME=PATH "
            "per domain"
        )
    shifted = config.target is not None or config.reweight is not None
    what = "domain adaptation" if config.target is not None else "--reweight"
    if shifted and (config.labels is not None or config.domains is not None):
        raise ConfigError(f"{where}{what} cannot be combined with --labels or --domain")
    if config.target is not None and config.reweight is not None:
        raise ConfigError(f"{where}--reweight does not apply to graft adapt (the target is the world already)")
    if shifted and config.mode not in ("extract", "finetune"):
        raise ConfigError(
            f"{where}{describe('mode')} {config.mode} does not apply to {what}",
            hint="use --mode extract (the default) or finetune",
        )
    if shifted and config.augment:
        raise ConfigError(
            f"{where}{describe('augment')} does not apply to {what} yet: it trains on clean cached rows",
            hint="drop --augment",
        )
    if config.strength is not None and config.method in ("auto", "source-only", "adabn"):
        raise ConfigError(
            f"{where}{describe('strength')} weighs an alignment term; --method {config.method} has none to weigh",
            hint="name a method that aligns (coral, dann, mcc, or adabn+ one of them), or drop --strength",
        )
    if config.mode == "auto" and not config.pretrained:
        raise ConfigError(
            f"{where}--mode auto measures the pretrained backbone; it cannot be combined with --from-scratch",
            hint="pick --mode extract or finetune for a from-scratch baseline",
        )
    if config.head_epochs is not None and config.epochs is not None and config.head_epochs >= config.epochs:
        raise ConfigError(
            f"{where}{describe('head_epochs')} must be below {describe('epochs')}; got {config.head_epochs} and "
            f"{config.epochs}"
        )
    if (config.valid_fraction or 0) + (config.test_fraction or 0) >= 1:
        raise ConfigError(
            f"{where}{describe('valid_fraction')} and {describe('test_fraction')} leave no training images"
        )
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", config.device.strip().lower()):
        raise ConfigError(f"{where}{describe('device')} must be auto, cpu, cuda or cuda:N; got {config.device!r}")
    if config.log == "tensorboard" and importlib.util.find_spec("tensorboard") is None:
        raise ConfigError(
            f"{where}--log tensorboard needs the tensorboard package",
            hint="pip install 'graft[tensorboard]' (or pip install tensorboard)",
        )


def check_workers(num_workers: int | None) -> None:
    """``--workers`` (per invocation, not saved) is checked before any work starts."""
    if num_workers is not None and (
        isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0
    ):
        raise ConfigError(f"--workers must be 0 or more (0: no worker processes); got {num_workers}")
