"""Building blocks shared by the reference detectors."""

from __future__ import annotations

from torch import nn

__all__ = ["conv_bn"]


def conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    """3x3 convolution (no bias), batch norm, ReLU: ``[B, cin, H, W] -> [B, cout, H/s, W/s]``."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )
