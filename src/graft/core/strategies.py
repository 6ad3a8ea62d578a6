"""The ways to transfer, as freeze plans: feature extraction and fine-tuning the last K stages.

(Using the pretrained classifier as is needs no plan: see ``graft.classify``.)
"""

from __future__ import annotations

from typing import Any

from graft.core.config import DEFAULT_BACKBONE_LR_MULT, DEFAULT_BN, HEAD_ONLY_MODES
from graft.core.freeze import FreezePlan
from graft.errors import ConfigError

MODES = ("extract", "finetune", "fewshot")
AUTO = "auto"  # measured by graft.core.advisor, then one of MODES
FEWSHOT = "fewshot"  # contrastive tuning first (graft.fewshot), then a head on frozen features, as extract
DEFAULT_LR = {"extract": 1e-3, "finetune": 1e-3, "fewshot": 1e-3}


def default_unfreeze(num_stages: int) -> int:
    """Fine-tune the last third of the stages (at least one): the textbook's scenario-3 starting point."""
    return max(1, round(num_stages / 3))


def plan_for_mode(
    mode: str,
    stages: list[str],
    lr: float | None = None,
    unfreeze: int | None = None,
    backbone_lr_mult: float | None = None,
    bn_policy: str | None = None,
) -> FreezePlan:
    """Build the freeze plan for ``mode``: ``extract`` freezes everything; ``finetune`` trains the last
    ``unfreeze`` stages."""
    if mode not in MODES:
        raise ConfigError(f"--mode must be one of {', '.join(MODES + (AUTO,))}; got '{mode}'")
    lr = DEFAULT_LR[mode] if lr is None else lr
    backbone_lr_mult = DEFAULT_BACKBONE_LR_MULT if backbone_lr_mult is None else backbone_lr_mult
    bn_policy = DEFAULT_BN if bn_policy is None else bn_policy
    if mode in HEAD_ONLY_MODES:  # fewshot: its contrastive step tunes the stages before this plan
        if mode == "extract" and unfreeze not in (None, 0):
            raise ConfigError(
                "--unfreeze only applies to --mode finetune", hint="drop --unfreeze or use --mode finetune"
            )
        return FreezePlan(
            stages=tuple(stages),
            trainable_from=len(stages),
            lr=lr,
            backbone_lr_mult=backbone_lr_mult,
            bn_policy="frozen",
        )
    count = default_unfreeze(len(stages)) if unfreeze is None else unfreeze
    if not 1 <= count <= len(stages):
        raise ConfigError(
            f"--unfreeze must be between 1 and {len(stages)} (this backbone's stages: {', '.join(stages)}); got {count}"
        )
    return FreezePlan(
        stages=tuple(stages),
        trainable_from=len(stages) - count,
        lr=lr,
        backbone_lr_mult=backbone_lr_mult,
        bn_policy=bn_policy,
    )


def resolve_auto(advised: dict[str, Any], **given: Any) -> dict[str, Any]:
    """Training options from an advised plan (``Advice.plan.to_dict()``); options the user gave (not None) win.

    Returns ``mode, unfreeze, epochs, lr, backbone_lr_mult, bn, head_epochs``.
    """
    resolved = {
        key: advised[key] for key in ("mode", "unfreeze", "epochs", "lr", "backbone_lr_mult", "bn", "head_epochs")
    }
    resolved.update({key: value for key, value in given.items() if value is not None})
    if resolved["mode"] == "extract":
        resolved["unfreeze"] = None
    return resolved
