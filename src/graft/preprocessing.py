"""How images become tensors for a given backbone: size, crop, interpolation, mean/std.

A :class:`Preprocessing` travels with the weights (timm's ``pretrained_cfg`` idea) and is written
into every run, so a model is always fed the way it was trained.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from timm.data import create_transform

from graft.errors import ConfigError

# Names the augmentation below; part of the activation-cache key of augmented views, so change it
# whenever ``train_transform`` changes.
AUGMENTATION_RECIPE = "rrc0.6-1.0_r0.85-1.18_hflip0.5_cj0.2"


@dataclass(frozen=True)
class Preprocessing:
    input_size: int = 224
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    crop_pct: float = 0.875

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Preprocessing":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"preprocessing has unknown keys {sorted(unknown)}", hint=f"known keys: {sorted(known)}")
        values = dict(data)
        for key in ("mean", "std"):
            if key in values:
                values[key] = tuple(float(v) for v in values[key])
        return cls(**values)

    def eval_transform(self):
        """Resize, centre-crop and normalise, exactly as the weights were evaluated."""
        return create_transform(
            input_size=self.input_size,
            is_training=False,
            interpolation=self.interpolation,
            mean=self.mean,
            std=self.std,
            crop_pct=self.crop_pct,
        )

    def train_transform(self):
        """Mild augmentation for small data: random crops that keep most of the object, flips, light colour jitter."""
        return create_transform(
            input_size=self.input_size,
            is_training=True,
            scale=(0.6, 1.0),
            ratio=(0.85, 1.18),
            hflip=0.5,
            color_jitter=0.2,
            interpolation=self.interpolation,
            mean=self.mean,
            std=self.std,
        )
