"""BatchNorm folding: only a BatchNorm fed directly by a convolution is folded, and only when outputs stay the same."""

import torch
from torch import nn

from graft.image.backbones.folding import fold_batchnorm


def _with_statistics(module: nn.Module) -> nn.Module:
    """Non-trivial running statistics and affine parameters, so that folding changes the weights."""
    generator = torch.Generator().manual_seed(0)
    for batchnorm in module.modules():
        if isinstance(batchnorm, nn.BatchNorm2d):
            channels = batchnorm.num_features
            batchnorm.running_mean.copy_(torch.randn(channels, generator=generator))
            batchnorm.running_var.copy_(torch.rand(channels, generator=generator) + 0.5)
            batchnorm.weight.data.copy_(torch.randn(channels, generator=generator))
            batchnorm.bias.data.copy_(torch.randn(channels, generator=generator))
    return module.eval()


class Residual(nn.Module):
    """The convolution's output feeds its BatchNorm and also a skip connection."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y


def test_a_convolution_feeding_its_batchnorm_is_folded_and_outputs_agree():
    module = _with_statistics(nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU()))
    x = torch.randn(2, 3, 16, 16)
    folded, count = fold_batchnorm(module, x[:1])
    assert count == 1
    assert [type(m) for m in folded] == [nn.Conv2d, nn.Identity, nn.ReLU]
    assert torch.allclose(folded(x), module(x), atol=1e-5)
    assert isinstance(module[1], nn.BatchNorm2d)  # the original is not changed


def test_a_batchnorm_after_an_activation_is_not_folded_although_it_follows_a_convolution_in_the_module_list():
    module = _with_statistics(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.BatchNorm2d(8)))
    module = nn.Sequential(module[0], module[2], module[1])  # registered conv, bn, relu, but run conv, relu, bn:

    class RunsReluFirst(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner[1](self.inner[2](self.inner[0](x)))

    wrapped = RunsReluFirst(module)
    x = torch.randn(2, 3, 16, 16)
    folded, count = fold_batchnorm(wrapped, x[:1])
    assert count == 0
    assert torch.equal(folded(x), wrapped(x))


def test_folding_that_would_change_another_consumer_of_the_convolution_is_refused():
    module = _with_statistics(Residual())
    x = torch.randn(2, 3, 16, 16)
    folded, count = fold_batchnorm(module, x[:1])
    assert count == 0 and folded is module
    assert isinstance(folded.bn, nn.BatchNorm2d)
