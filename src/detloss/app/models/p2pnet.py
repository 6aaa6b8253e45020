"""P2PNet: a point-proposal crowd counter (Song et al. 2021), built in code.

Layout: a VGG16-BN-style backbone, a two-level FPN neck fusing strides 8 and 16 into a
stride-8 map, and two heads over it. Each stride-8 cell holds ``rows x cols`` reference
points (:func:`detloss.points.anchor_points`); the regression head moves each by
``gamma * offset`` pixels and the classification head scores it.

Outputs, for images ``Tensor[B, 3, H, W]``:

* ``pred_points``: ``Tensor[B, M, 2]`` proposals (x, y) in input pixels, with
  ``M = ceil(H / 8) * ceil(W / 8) * rows * cols`` in the order of ``anchor_points``;
* ``pred_logits``: ``Tensor[B, M]`` (``head="sigmoid"``) or ``Tensor[B, M, 2]``
  (``head="softmax"``: background, person).

Nothing is ever downloaded: ``backbone_weights`` is a local file, either a state dict of
:class:`VGGBackbone` or torchvision's ``vgg16_bn`` checkpoint (its ``features.*`` keys
have the same layout when the backbone has the standard VGG16 widths and depths).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..._checks import check_choice, check_shape
from ...points import anchor_points

__all__ = [
    "VGG16_CHANNELS",
    "VGG16_DEPTHS",
    "P2PNet",
    "TwoStageFinetune",
    "VGGBackbone",
    "set_backbone_frozen",
]

VGG16_CHANNELS: tuple[int, ...] = (64, 128, 256, 512, 512)
VGG16_DEPTHS: tuple[int, ...] = (2, 2, 3, 3, 3)
HEADS = ("sigmoid", "softmax")


#: The smallest image side P2PNet accepts: its backbone's stride.
_MIN_SIZE = 16


class VGGBackbone(nn.Module):
    """VGG-style convolution stack with batch norm, as five stages at strides 1..16.

    ``features`` is an ``nn.Sequential`` of conv / BN / ReLU / max-pool layers in
    torchvision's ``vgg16_bn`` order, so with the default widths and depths a torchvision
    checkpoint's ``features.*`` tensors load unchanged. :meth:`forward` returns the output
    of every stage: ``[C1, C2, C3, C4, C5]`` at strides 1, 2, 4, 8, 16.
    """

    def __init__(
        self,
        channels: Sequence[int] = VGG16_CHANNELS,
        depths: Sequence[int] = VGG16_DEPTHS,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if len(channels) != 5 or len(depths) != 5:
            raise ValueError(
                f"channels and depths: expected 5 stages each, got {len(channels)} and {len(depths)}"
            )
        if any(c < 1 for c in channels) or any(d < 1 for d in depths):
            raise ValueError(
                f"channels and depths must be positive, got {tuple(channels)}, {tuple(depths)}"
            )
        layers: list[nn.Module] = []
        self._ends: list[int] = []
        prev = in_channels
        for stage, (width, depth) in enumerate(zip(channels, depths, strict=True)):
            if stage > 0:
                layers.append(nn.MaxPool2d(2, 2))
            for _ in range(depth):
                layers += [
                    nn.Conv2d(prev, width, 3, padding=1),
                    nn.BatchNorm2d(width),
                    nn.ReLU(inplace=True),
                ]
                prev = width
            self._ends.append(len(layers))
        self.features = nn.Sequential(*layers)
        self.channels = tuple(channels)

    def forward(self, x: Tensor) -> list[Tensor]:
        outs = []
        start = 0
        for end in self._ends:
            for layer in self.features[start:end]:
                x = layer(x)
            outs.append(x)
            start = end
        return outs

    def load_weights(self, path: str | Path) -> None:
        """Load a local state dict (this module's or torchvision ``vgg16_bn``'s).

        Raises ``FileNotFoundError`` for a missing file and ``ValueError`` naming the
        tensors that do not fit.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"backbone_weights: no such file {str(path)!r}")
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise ValueError(f"backbone_weights: {str(path)!r} does not hold a state dict")
        mine = self.state_dict()
        picked = {k: v for k, v in state.items() if k in mine}
        wrong = [
            f"{k}: expected {list(mine[k].shape)}, got {list(v.shape)}"
            for k, v in picked.items()
            if v.shape != mine[k].shape
        ]
        missing = [k for k in mine if k not in picked]
        if wrong or missing:
            detail = "; ".join(wrong[:3] + [f"missing {k}" for k in missing[:3]])
            raise ValueError(
                f"backbone_weights: {str(path)!r} does not fit this backbone "
                f"(channels {self.channels}): {detail}"
            )
        self.load_state_dict(picked)


def _conv_block(cin: int, cout: int, depth: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Conv2d(cin if i == 0 else cout, cout, 3, padding=1), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class P2PNet(nn.Module):
    """Point-proposal network for crowd counting.

    Args:
        num_classes: object classes (1 for heads). With ``head="softmax"`` the head has
            ``num_classes + 1`` outputs per proposal, background first.
        rows, cols: reference points per stride-8 cell (P2PNet: 2 x 2).
        gamma: offset scale in pixels (P2PNet: 100).
        head: ``"sigmoid"`` (one logit per proposal) or ``"softmax"`` (background, person).
        channels, depths: backbone widths and convolutions per stage (VGG16 by default).
        neck_channels: FPN width.
        head_channels, head_depth: width and number of 3x3 convolutions of each head.
        fine_features: also feed the stride-4 backbone features to the neck, folded into
            the stride-8 cells by space-to-depth (not in the original P2PNet; it helps
            small models place proposals inside a cell).
        backbone_weights: optional local file with pretrained backbone weights.

    The final regression layer starts at zero, so training begins with every proposal on
    its reference point instead of ``gamma``-scaled random offsets; the classification
    bias starts at a prior probability of 0.1.
    """

    stride = 8

    def __init__(
        self,
        num_classes: int = 1,
        *,
        rows: int = 2,
        cols: int = 2,
        gamma: float = 100.0,
        head: str = "sigmoid",
        channels: Sequence[int] = VGG16_CHANNELS,
        depths: Sequence[int] = VGG16_DEPTHS,
        neck_channels: int = 256,
        head_channels: int = 256,
        head_depth: int = 3,
        fine_features: bool = False,
        backbone_weights: str | Path | None = None,
    ) -> None:
        super().__init__()
        check_choice(head, "head", HEADS)
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if head == "sigmoid" and num_classes != 1:
            raise ValueError(f"head='sigmoid' supports num_classes=1, got {num_classes}")
        for name, value in (("rows", rows), ("cols", cols)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if gamma <= 0:
            raise ValueError(f"gamma must be > 0, got {gamma}")
        self.rows, self.cols, self.gamma, self.head = rows, cols, float(gamma), head
        self.num_classes = num_classes
        self.backbone = VGGBackbone(channels, depths)
        if backbone_weights is not None:
            self.backbone.load_weights(backbone_weights)
        c4, c5 = self.backbone.channels[3], self.backbone.channels[4]
        self.lateral4 = nn.Conv2d(c4, neck_channels, 1)
        self.lateral5 = nn.Conv2d(c5, neck_channels, 1)
        self.smooth4 = nn.Conv2d(neck_channels, neck_channels, 3, padding=1)
        # Optional: the stride-4 features, folded into stride-8 cells by space-to-depth,
        # so the heads see where inside a cell a small object lies.
        c3 = self.backbone.channels[2]
        self.lateral3 = nn.Conv2d(4 * c3, neck_channels, 1) if fine_features else None
        anchors = rows * cols
        outputs = 1 if head == "sigmoid" else num_classes + 1
        self.reg_head = nn.Sequential(
            _conv_block(neck_channels, head_channels, head_depth),
            nn.Conv2d(head_channels, anchors * 2, 3, padding=1),
        )
        self.cls_head = nn.Sequential(
            _conv_block(neck_channels, head_channels, head_depth),
            nn.Conv2d(head_channels, anchors * outputs, 3, padding=1),
        )
        nn.init.zeros_(self.reg_head[-1].weight)
        nn.init.zeros_(self.reg_head[-1].bias)
        nn.init.normal_(self.cls_head[-1].weight, std=0.01)
        with torch.no_grad():
            bias = self.cls_head[-1].bias.view(anchors, outputs)
            if head == "sigmoid":
                bias.fill_(-2.1972)  # log(0.1 / 0.9)
            else:
                bias.zero_()
                bias[:, 0] = 2.1972

    @classmethod
    def tiny(cls, **kwargs: object) -> P2PNet:
        """A few-channel configuration that trains on a CPU in minutes.

        Widths (8, 16, 32, 48, 64), fewer convolutions per stage, 48-channel neck and
        heads, and ``fine_features=True``; keyword arguments override any setting.
        """
        settings: dict[str, object] = {
            "channels": (8, 16, 32, 48, 64),
            "depths": (1, 2, 2, 2, 2),
            "neck_channels": 48,
            "head_channels": 48,
            "head_depth": 2,
            "fine_features": True,
        }
        settings.update(kwargs)
        return cls(**settings)  # type: ignore[arg-type]

    def head_parameters(self) -> Iterator[nn.Parameter]:
        """Every parameter outside the backbone (neck and heads)."""
        for name, p in self.named_parameters():
            if not name.startswith("backbone."):
                yield p

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        check_shape(images, "images", ndim=4, expected="[B, 3, H, W]")
        if images.shape[1] != 3:
            raise ValueError(f"images: expected shape [B, 3, H, W], got {list(images.shape)}")
        b, _, h, w = images.shape
        if h < _MIN_SIZE or w < _MIN_SIZE:
            # The backbone halves the map four times; a smaller side would reach a
            # max-pooling layer with nothing left to pool.
            raise ValueError(
                f"images: expected height and width >= {_MIN_SIZE} pixels (the backbone "
                f"downsamples by 16), got [B, 3, H, W] = {list(images.shape)}"
            )
        feats = self.backbone(images)
        c4, c5 = feats[3], feats[4]
        p5 = self.lateral5(c5)
        p4 = self.lateral4(c4) + F.interpolate(p5, size=c4.shape[-2:], mode="nearest")
        if self.lateral3 is not None:
            c3 = feats[2]
            c3 = F.pad(c3, (0, c3.shape[-1] % 2, 0, c3.shape[-2] % 2))
            fine = self.lateral3(F.pixel_unshuffle(c3, 2))
            p4 = p4 + F.interpolate(fine, size=p4.shape[-2:], mode="nearest")
        p4 = self.smooth4(p4)
        # A partial stride-8 cell at the right or bottom edge rounds the map size up.
        cells = (-(-h // self.stride), -(-w // self.stride))
        if tuple(p4.shape[-2:]) != cells:
            p4 = F.interpolate(p4, size=cells, mode="nearest")
        anchors = self.rows * self.cols
        offsets = self.reg_head(p4)  # [B, A*2, h, w]
        offsets = offsets.permute(0, 2, 3, 1).reshape(b, -1, 2)
        ref = anchor_points(
            h, w, self.stride, self.rows, self.cols, device=images.device, dtype=offsets.dtype
        )
        points = ref.unsqueeze(0) + self.gamma * offsets
        logits = self.cls_head(p4).permute(0, 2, 3, 1)
        if self.head == "sigmoid":
            logits = logits.reshape(b, -1)
        else:
            logits = logits.reshape(b, cells[0] * cells[1] * anchors, self.num_classes + 1)
        return {"pred_points": points, "pred_logits": logits}


def set_backbone_frozen(model: nn.Module, frozen: bool = True) -> None:
    """Freeze (or unfreeze) ``model.backbone``: no gradients, and its batch-norm layers
    keep their running statistics (eval mode) while frozen.

    A frozen backbone's BN layers stay in eval mode across ``model.train()`` calls only
    if this is called again after them; :class:`TwoStageFinetune` does that each epoch.
    """
    backbone = getattr(model, "backbone", None)
    if not isinstance(backbone, nn.Module):
        raise TypeError(f"model must have a 'backbone' module, got {type(model).__name__}")
    for p in backbone.parameters():
        p.requires_grad_(not frozen)
    for m in backbone.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.train(not frozen and model.training)


class TwoStageFinetune:
    """The seed's two-stage fine-tuning: train with the backbone frozen for
    ``frozen_epochs`` epochs, then the whole network with every learning rate scaled by
    ``lr_scale``.

    Call :meth:`step` at the start of each epoch (after ``model.train()``), with the
    epoch index. Parameters whose ``requires_grad`` is False get no gradient, so any
    torch optimizer skips them; build the optimizer over all parameters up front.

    Args:
        model: a module with a ``backbone`` attribute.
        optimizer: its optimizer.
        frozen_epochs: epochs of stage 1 (0 skips it).
        lr_scale: factor applied to every param group's learning rate in stage 2.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        frozen_epochs: int,
        lr_scale: float = 0.1,
    ) -> None:
        if frozen_epochs < 0:
            raise ValueError(f"frozen_epochs must be >= 0, got {frozen_epochs}")
        if not 0 < lr_scale <= 1:
            raise ValueError(f"lr_scale must be in (0, 1], got {lr_scale}")
        self.model, self.optimizer = model, optimizer
        self.frozen_epochs, self.lr_scale = frozen_epochs, lr_scale
        self._scaled = False

    def stage(self, epoch: int) -> int:
        """1 while the backbone is frozen, else 2."""
        return 1 if epoch < self.frozen_epochs else 2

    def step(self, epoch: int) -> int:
        """Apply the stage of ``epoch``; returns it."""
        stage = self.stage(epoch)
        set_backbone_frozen(self.model, stage == 1)
        if stage == 2 and self.frozen_epochs > 0 and not self._scaled:
            for group in self.optimizer.param_groups:
                group["lr"] *= self.lr_scale
                if "initial_lr" in group:
                    group["initial_lr"] *= self.lr_scale
            self._scaled = True
        return stage

    def state_dict(self) -> dict[str, object]:
        return {"scaled": self._scaled}

    def load_state_dict(self, state: dict[str, object]) -> None:
        self._scaled = bool(state["scaled"])
