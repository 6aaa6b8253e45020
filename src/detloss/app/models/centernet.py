"""A small CenterNet-style box detector (Zhou et al. 2019, "Objects as Points").

An encoder of conv-BN-ReLU stages down to stride 16, a top-down path (upsample and add
the lateral features) back to stride 4, and three heads at stride 4:

* ``heatmap``: ``Tensor[B, C, H/4, W/4]`` class-centre logits (sigmoid -> probability);
* ``size``: ``Tensor[B, 2, H/4, W/4]`` box ``(w, h)`` in output cells;
* ``offset``: ``Tensor[B, 2, H/4, W/4]`` sub-cell centre offset ``(dx, dy)``.

These are the keys :class:`detloss.losses.centernet.CenterNetLoss` and
:func:`detloss.heatmap.centernet_targets` use. Input sizes need not be multiples of 16:
the output has ``ceil(H / 4) x ceil(W / 4)`` cells.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from ..._checks import check_shape
from ._layers import conv_bn, downsampling_stages

__all__ = ["CenterNet"]


class CenterNet(nn.Module):
    """CenterNet-style detector with a stride-4 output.

    Args:
        num_classes: object classes ``C`` (heatmap channels).
        channels: widths of the encoder stages at strides 2, 4, 8, 16.
        depths: convolutions per stage (the first of each has stride 2).
        head_channels: width of the stride-4 feature map and of the heads' hidden layer.

    The heatmap bias starts at ``log(0.1 / 0.9)`` (prior probability 0.1), as CenterNet
    initialises it, so the focal loss does not start swamped by easy negatives.
    """

    stride = 4

    def __init__(
        self,
        num_classes: int,
        *,
        channels: Sequence[int] = (32, 64, 128, 256),
        depths: Sequence[int] = (1, 2, 2, 2),
        head_channels: int = 64,
    ) -> None:
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        if len(channels) != 4 or len(depths) != 4:
            raise ValueError(
                f"channels and depths: expected 4 stages each, got {len(channels)} and {len(depths)}"
            )
        if min(channels) < 1 or min(depths) < 1 or head_channels < 1:
            raise ValueError(
                f"channels, depths and head_channels must be positive, got {tuple(channels)}, "
                f"{tuple(depths)}, {head_channels}"
            )
        self.num_classes = num_classes
        self.stages = downsampling_stages(channels, depths)
        self.lateral = nn.ModuleList(nn.Conv2d(c, head_channels, 1) for c in channels[1:])
        self.smooth = nn.ModuleList(conv_bn(head_channels, head_channels) for _ in range(2))

        def head(out: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(head_channels, head_channels, 3, padding=1),
                nn.ReLU(inplace=True),
                nn.Conv2d(head_channels, out, 1),
            )

        self.heatmap = head(num_classes)
        self.size = head(2)
        self.offset = head(2)
        nn.init.constant_(self.heatmap[-1].bias, -2.1972)

    @classmethod
    def tiny(cls, num_classes: int, **kwargs: object) -> CenterNet:
        """A few-channel configuration that trains on a CPU in minutes."""
        settings: dict[str, object] = {
            "channels": (16, 32, 48, 64),
            "depths": (1, 2, 2, 2),
            "head_channels": 32,
        }
        settings.update(kwargs)
        return cls(num_classes, **settings)  # type: ignore[arg-type]

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        check_shape(images, "images", ndim=4, expected="[B, 3, H, W]")
        if images.shape[1] != 3:
            raise ValueError(f"images: expected shape [B, 3, H, W], got {list(images.shape)}")
        h, w = images.shape[-2:]
        feats = []
        x = images
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        # Top-down: stride 16 -> 8 -> 4.
        y = self.lateral[2](feats[3])
        for level, smooth in zip((1, 0), self.smooth, strict=True):
            lat = self.lateral[level](feats[level + 1])
            y = smooth(lat + F.interpolate(y, size=lat.shape[-2:], mode="nearest"))
        out_size = (-(-h // self.stride), -(-w // self.stride))
        if tuple(y.shape[-2:]) != out_size:
            y = F.interpolate(y, size=out_size, mode="nearest")
        return {"heatmap": self.heatmap(y), "size": self.size(y), "offset": self.offset(y)}
