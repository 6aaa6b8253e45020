"""Building blocks shared by the reference detectors."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

__all__ = ["conv_bn", "downsampling_stages"]


def conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    """3x3 convolution (no bias), batch norm, ReLU: ``[B, cin, H, W] -> [B, cout, H/s, W/s]``."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def downsampling_stages(channels: Sequence[int], depths: Sequence[int]) -> nn.ModuleList:
    """A backbone of conv-BN-ReLU stages from RGB: stage ``s`` has ``depths[s]`` blocks of
    ``channels[s]`` widths, the first with stride 2 (stage ``s`` has stride ``2 ** (s + 1)``)."""
    stages = []
    prev = 3
    for width, depth in zip(channels, depths, strict=True):
        layers = [conv_bn(prev, width, stride=2)]
        layers += [conv_bn(width, width) for _ in range(depth - 1)]
        stages.append(nn.Sequential(*layers))
        prev = width
    return nn.ModuleList(stages)
