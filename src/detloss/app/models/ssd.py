"""A small SSD-style detector (Liu et al. 2016, "SSD: Single Shot MultiBox Detector").

A light backbone of conv-BN-ReLU stages, each halving the resolution, whose last
``len(min_sizes)`` stages are the feature maps; on each, one 3x3 convolution predicts the
``A * 4`` offsets (``loc``) and one the ``A * (C + 1)`` logits (``conf``, index 0 the
background) of the ``A`` default boxes of every cell. The default boxes come from
:func:`detloss.anchors.ssd_priors` for the model's square input size, with the sizes and
aspect ratios given as arguments, and are stored as the ``priors`` buffer.

Outputs, the conventions of :class:`detloss.losses.ssd.MultiBoxLoss` and
:func:`detloss.postprocess.ssd.ssd_detect`:

* ``loc``: ``Tensor[B, P, 4]`` offsets ``(dx, dy, dw, dh)`` relative to the priors;
* ``conf``: ``Tensor[B, P, C + 1]`` logits.

Priors are ordered level by level, cells row-major, boxes of a cell in the order of
:func:`~detloss.anchors.ssd_priors`: the order in which a head output
``[B, A * 4, H, W]`` flattens after ``permute(0, 2, 3, 1)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..._checks import check_shape
from ...anchors import ssd_priors
from ...postprocess.ssd import ssd_detect
from ._layers import conv_bn, downsampling_stages

__all__ = ["SSD"]


class SSD(nn.Module):
    """SSD-style detector for square ``image_size x image_size`` inputs.

    Args:
        num_classes: object classes ``C`` (the head has ``C + 1`` logits, background first).
        image_size: side of the input images in pixels (the priors are built for it).
        channels: widths of the backbone stages; stage ``s`` has stride ``2 ** (s + 1)``.
        depths: convolutions per stage (the first of each has stride 2).
        min_sizes, max_sizes: the small and big square of each feature map, in pixels
            (see :func:`~detloss.anchors.ssd_priors`; ``max_sizes=None`` drops the big
            square). Their length is the number of feature maps, taken from the last
            stages.
        aspect_ratios: the ratios of each feature map (each adds two boxes per cell).
        variances: ``(v_xy, v_wh)`` of the offset encoding, used by :meth:`detect`.
        head_channels: width of the top-down path and of the heads' input: each feature
            map is projected to it, the coarser fused map is upsampled and added, and a
            3x3 conv-BN-ReLU smooths the sum (as in FPN).

    The class logits' biases start at ``log(0.01)`` below the background's, so the
    detector starts by predicting background everywhere (a probability of about 0.01 per
    class), as RetinaNet initialises its head: the first steps then do not spend
    themselves on the thousands of easy negatives.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        image_size: int = 128,
        channels: Sequence[int] = (8, 16, 32, 64),
        depths: Sequence[int] = (1, 2, 2, 2),
        min_sizes: Sequence[float] = (12.0, 22.0, 40.0),
        max_sizes: Sequence[float] | None = (22.0, 40.0, 70.0),
        aspect_ratios: Sequence[Sequence[float]] = ((2.0,), (2.0,), (2.0,)),
        variances: Sequence[float] = (0.1, 0.2),
        head_channels: int = 48,
    ) -> None:
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
            raise ValueError(f"image_size must be a positive int, got {image_size!r}")
        if len(channels) != len(depths) or not channels:
            raise ValueError(
                f"channels and depths: expected the same number of stages, got {len(channels)} "
                f"and {len(depths)}"
            )
        if min(channels) < 1 or min(depths) < 1:
            raise ValueError(
                f"channels and depths must be positive, got {tuple(channels)}, {tuple(depths)}"
            )
        levels = len(min_sizes)
        if not 1 <= levels <= len(channels):
            raise ValueError(
                f"min_sizes: expected 1..{len(channels)} feature maps (one per stage at most), "
                f"got {levels}"
            )
        self.num_classes = num_classes
        self.image_size = image_size
        self.variances = (float(variances[0]), float(variances[1]))
        self.stages = downsampling_stages(channels, depths)
        self.first_level = len(channels) - levels

        # A 3x3 stride-2 convolution with padding 1 maps a side s to ceil(s / 2).
        sides, side = [], image_size
        for _ in channels:
            side = -(-side // 2)
            sides.append(side)
        feature_maps = sides[self.first_level :]
        steps = [image_size / f for f in feature_maps]
        priors = ssd_priors(
            image_size,
            feature_maps,
            steps,
            min_sizes,
            max_sizes,
            aspect_ratios,
        )
        self.register_buffer("priors", priors, persistent=False)
        per_cell = [1 + (max_sizes is not None) + 2 * len(aspect_ratios[k]) for k in range(levels)]
        self.boxes_per_cell = tuple(per_cell)
        self.feature_maps = tuple(feature_maps)
        widths = list(channels)[self.first_level :]
        # A top-down path (as in FPN): the fine maps, shallow in a light backbone, get the
        # semantics of the coarse ones before their heads.
        self.lateral = nn.ModuleList(nn.Conv2d(w, head_channels, 1) for w in widths)
        self.smooth = nn.ModuleList(conv_bn(head_channels, head_channels) for _ in widths)
        self.loc_heads = nn.ModuleList(
            nn.Conv2d(head_channels, a * 4, 3, padding=1) for a in per_cell
        )
        self.conf_heads = nn.ModuleList(
            nn.Conv2d(head_channels, a * (num_classes + 1), 3, padding=1) for a in per_cell
        )
        for head, a in zip(self.conf_heads, per_cell, strict=True):
            bias = torch.full((a, num_classes + 1), math.log(0.01))
            bias[:, 0] = 0.0
            with torch.no_grad():
                head.bias.copy_(bias.reshape(-1))

    @classmethod
    def tiny(cls, num_classes: int, **kwargs: object) -> SSD:
        """The default configuration: a few channels, trains on a CPU in about a minute."""
        return cls(num_classes, **kwargs)  # type: ignore[arg-type]

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """``images: Tensor[B, 3, S, S]`` with ``S = image_size`` ->
        ``{"loc": Tensor[B, P, 4], "conf": Tensor[B, P, C + 1]}``."""
        check_shape(
            images, "images", ndim=4, expected=f"[B, 3, {self.image_size}, {self.image_size}]"
        )
        if tuple(images.shape[1:]) != (3, self.image_size, self.image_size):
            raise ValueError(
                f"images: expected shape [B, 3, {self.image_size}, {self.image_size}] "
                f"(image_size={self.image_size}), got {list(images.shape)}"
            )
        batch = images.shape[0]
        x = images
        feats = []
        for s, stage in enumerate(self.stages):
            x = stage(x)
            if s >= self.first_level:
                feats.append(x)
        fused: list[Tensor] = []
        y: Tensor | None = None
        for level in range(len(feats) - 1, -1, -1):
            lat = self.lateral[level](feats[level])
            if y is not None:
                lat = lat + F.interpolate(y, size=lat.shape[-2:], mode="nearest")
            y = self.smooth[level](lat)
            fused.append(y)
        fused.reverse()
        locs, confs = [], []
        for level, feat in enumerate(fused):
            loc = self.loc_heads[level](feat).permute(0, 2, 3, 1)
            conf = self.conf_heads[level](feat).permute(0, 2, 3, 1)
            locs.append(loc.reshape(batch, -1, 4))
            confs.append(conf.reshape(batch, -1, self.num_classes + 1))
        return {"loc": torch.cat(locs, dim=1), "conf": torch.cat(confs, dim=1)}

    def detect(
        self,
        outputs: dict[str, Tensor],
        score_threshold: float = 0.01,
        iou_threshold: float = 0.45,
        top_k: int = 200,
    ) -> list[dict[str, Tensor]]:
        """Decode :meth:`forward`'s outputs with :func:`~detloss.postprocess.ssd.ssd_detect`
        -> per image ``{"boxes": [K, 4] normalised xyxy, "scores": [K], "labels": [K]}``."""
        return ssd_detect(
            outputs["loc"],
            outputs["conf"],
            self.priors,
            score_threshold=score_threshold,
            iou_threshold=iou_threshold,
            top_k=top_k,
            variances=self.variances,
        )
