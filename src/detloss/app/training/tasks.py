"""What each task trains and how it is scored: the model, the loss on a batch (with the
targets it needs), the decoding of the outputs and the metrics.

* ``points``: :class:`~detloss.app.models.P2PNet` trained with
  :class:`~detloss.losses.points.PointLoss`, decoded by
  :func:`~detloss.postprocess.points.decode_points`, scored by point F1 at a distance
  threshold and counting MAE / RMSE;
* ``boxes``: the CenterNet-style :class:`~detloss.app.models.CenterNet` trained with
  :class:`~detloss.losses.centernet.CenterNetLoss` on
  :func:`~detloss.heatmap.centernet_targets`, decoded by
  :func:`~detloss.postprocess.centernet.centernet_decode`, scored by COCO box AP;
* ``boxes`` with ``detector="ssd"``: the SSD-style :class:`~detloss.app.models.SSD`
  trained under one objective of :data:`~detloss.app.training.objectives.OBJECTIVES`
  on images resized to its square input, decoded by
  :func:`~detloss.postprocess.ssd.ssd_detect`, scored as the CenterNet.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...metrics import coco_box_ap, count_metrics, point_metrics, voc_box_ap
from ..models.centernet import CenterNet
from ..models.p2pnet import P2PNet
from ..models.ssd import SSD
from .config import TrainConfig
from .objectives import build_objective

__all__ = [
    "BoxTask",
    "PointTask",
    "SsdTask",
    "Task",
    "box_metrics",
    "build_task",
    "resize_image",
    "resize_sample",
]


class PointTask:
    """P2PNet + PointLoss; metrics ``point_f1@<t>px``, precision, recall, count errors."""

    name = "points"
    input_size: int | None = None  # images of any size

    def __init__(self, cfg: TrainConfig, num_classes: int = 1) -> None:
        from ...losses.points import PointLoss

        self.cfg = cfg
        self.criterion = PointLoss(
            tau=cfg.tau, neg_weight=cfg.neg_weight, loc_weight=cfg.loc_weight, head=cfg.head
        )
        self.f1_key = f"point_f1@{cfg.point_threshold:g}px"
        self.main_metric = self.f1_key

    def model_kwargs(self) -> dict[str, object]:
        kwargs: dict[str, object] = {"head": self.cfg.head}
        if self.cfg.model == "full" and self.cfg.backbone_weights:
            kwargs["backbone_weights"] = self.cfg.backbone_weights
        return kwargs

    def build_model(self, kwargs: Mapping[str, object]) -> nn.Module:
        if self.cfg.model == "tiny":
            return P2PNet.tiny(**kwargs)
        return P2PNet(**kwargs)  # type: ignore[arg-type]

    def param_groups(self, model: nn.Module) -> list[dict[str, object]]:
        # Adam's step size ignores the gradient's scale, so gamma (100 px per unit of
        # offset) multiplies how far a proposal jumps per step: the regression head
        # trains at a smaller rate to keep those jumps around a pixel.
        reg = [p for n, p in model.named_parameters() if n.startswith("reg_head.")]
        other = [p for n, p in model.named_parameters() if not n.startswith("reg_head.")]
        return [
            {"params": other, "lr": self.cfg.lr},
            {"params": reg, "lr": self.cfg.lr * self.cfg.reg_lr_scale},
        ]

    def loss(
        self, outputs: Mapping[str, Tensor], targets: Sequence[Mapping[str, Tensor]]
    ) -> tuple[Tensor, dict[str, Tensor]]:
        points = [{"points": t["points"]} for t in targets]
        return self.criterion(outputs, points, return_terms=True)  # type: ignore[return-value]

    def decode(
        self, outputs: Mapping[str, Tensor], score_threshold: float | None = None
    ) -> list[dict[str, Tensor]]:
        """``{"points": [n, 2], "scores": [n], "labels": [n]}`` per image, probability above
        ``score_threshold`` (default: the config's)."""
        from ...postprocess.points import decode_points

        threshold = self.cfg.score_threshold if score_threshold is None else score_threshold
        return decode_points(outputs["pred_points"], outputs["pred_logits"], threshold)

    def metrics(
        self, preds: Sequence[Mapping[str, Tensor]], targets: Sequence[Mapping[str, Tensor]]
    ) -> dict[str, float]:
        pm = point_metrics(
            [p["points"] for p in preds], [t["points"] for t in targets], self.cfg.point_threshold
        )
        cm = count_metrics([len(p["points"]) for p in preds], [len(t["points"]) for t in targets])
        t = f"{self.cfg.point_threshold:g}px"
        # Precision without a single prediction is 0 / 0: reported as NaN (shown "n/a",
        # written null) rather than the perfect 1 that would flatter an empty model.
        no_predictions = pm["tp"] + pm["fp"] == 0
        return {
            self.f1_key: pm["f1"],
            f"point_precision@{t}": float("nan") if no_predictions else pm["precision"],
            f"point_recall@{t}": pm["recall"],
            "count_mae": cm["mae"],
            "count_rmse": cm["rmse"],
            "mean_count": cm["mean_count"],
            "count_relative_mae": cm["relative_mae"],
        }


class BoxTask:
    """CenterNet + CenterNetLoss; metrics ``box_ap`` (COCO), ``box_ap50``, ``box_ap75``,
    ``box_voc_ap50``."""

    name = "boxes"
    main_metric = "box_ap50"
    input_size: int | None = None  # images of any size

    def __init__(self, cfg: TrainConfig, num_classes: int) -> None:
        from ...losses.centernet import CenterNetLoss

        self.cfg = cfg
        self.num_classes = num_classes
        self.criterion = CenterNetLoss(size_weight=cfg.size_weight, offset_weight=cfg.offset_weight)

    def model_kwargs(self) -> dict[str, object]:
        return {"num_classes": self.num_classes}

    def build_model(self, kwargs: Mapping[str, object]) -> nn.Module:
        if self.cfg.model == "tiny":
            return CenterNet.tiny(**kwargs)  # type: ignore[arg-type]
        return CenterNet(**kwargs)  # type: ignore[arg-type]

    def param_groups(self, model: nn.Module) -> list[dict[str, object]]:
        return [{"params": list(model.parameters()), "lr": self.cfg.lr}]

    def loss(
        self, outputs: Mapping[str, Tensor], targets: Sequence[Mapping[str, Tensor]]
    ) -> tuple[Tensor, dict[str, Tensor]]:
        from ...heatmap import centernet_targets

        heat = outputs["heatmap"]
        boxes = [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets]
        dense = centernet_targets(
            boxes,
            num_classes=self.num_classes,
            output_size=(heat.shape[-2], heat.shape[-1]),
            stride=CenterNet.stride,
        )
        return self.criterion(outputs, dense, return_terms=True)  # type: ignore[return-value]

    def decode(
        self, outputs: Mapping[str, Tensor], score_threshold: float | None = None
    ) -> list[dict[str, Tensor]]:
        """``{"boxes": [n, 4] xyxy, "scores": [n], "labels": [n]}`` per image: the top
        ``max_detections`` peaks with a positive score (at least ``score_threshold``)."""
        from ...postprocess.centernet import centernet_decode

        detections = centernet_decode(
            outputs["heatmap"],
            outputs["size"],
            outputs["offset"],
            k=self.cfg.max_detections,
            stride=CenterNet.stride,
        )
        if score_threshold is None:
            return detections
        return [{k: v[d["scores"] >= score_threshold] for k, v in d.items()} for d in detections]

    def metrics(
        self, preds: Sequence[Mapping[str, Tensor]], targets: Sequence[Mapping[str, Tensor]]
    ) -> dict[str, float]:
        return box_metrics(preds, targets, self.cfg.max_detections)


def box_metrics(
    preds: Sequence[Mapping[str, Tensor]],
    targets: Sequence[Mapping[str, Tensor]],
    max_detections: int = 100,
) -> dict[str, float]:
    """``box_ap`` (COCO AP@[.5:.95]), ``box_ap50``, ``box_ap75`` and ``box_voc_ap50``."""
    coco = coco_box_ap(preds, targets, max_detections=max_detections)
    voc = voc_box_ap(preds, targets)
    return {
        "box_ap": coco["ap"],  # type: ignore[dict-item]
        "box_ap50": coco["ap50"],  # type: ignore[dict-item]
        "box_ap75": coco["ap75"],  # type: ignore[dict-item]
        "box_voc_ap50": voc["ap"],  # type: ignore[dict-item]
    }


def resize_image(image: Tensor, size: int) -> Tensor:
    """``Tensor[3, H, W]`` -> ``Tensor[3, size, size]`` (bilinear; unchanged when square
    of that side already)."""
    if tuple(image.shape[-2:]) == (size, size):
        return image
    return F.interpolate(image[None], size=(size, size), mode="bilinear")[0]


def resize_sample(
    image: Tensor, target: Mapping[str, Tensor], size: int
) -> tuple[Tensor, dict[str, Tensor]]:
    """An ``(image, target)`` pair resized to ``size x size``: the ``xyxy`` boxes follow
    the pixels (their other keys are kept)."""
    h, w = image.shape[-2:]
    scale = torch.tensor([size / w, size / h, size / w, size / h], dtype=torch.float32)
    out = dict(target)
    out["boxes"] = target["boxes"].to(torch.float32) * scale
    return resize_image(image, size), out


class SsdTask:
    """The SSD-style detector under the objective ``cfg.objective`` (default
    ``multibox``); images are resized to ``cfg.image_size`` square, and detections come
    back in the pixels of that input (:func:`~detloss.app.training.evaluation.predict`
    scales them to each image). Metrics as :class:`BoxTask`."""

    name = "boxes"
    main_metric = "box_ap50"
    #: Detections kept per image, and candidates per class entering NMS, as in the
    #: original SSD (COCO's evaluation then keeps ``max_detections`` per class).
    top_k = 200

    def __init__(self, cfg: TrainConfig, num_classes: int) -> None:
        self.cfg = cfg
        self.num_classes = num_classes
        self.input_size: int | None = int(cfg.image_size)
        self.objective = build_objective(cfg.objective or "multibox", num_classes)
        self.priors: Tensor | None = None  # the detector's, set by build_model
        self.variances = (0.1, 0.2)

    def model_kwargs(self) -> dict[str, object]:
        return {"num_classes": self.num_classes, "image_size": self.input_size}

    def build_model(self, kwargs: Mapping[str, object]) -> nn.Module:
        model = SSD(**kwargs)  # type: ignore[arg-type]
        self.priors, self.variances = model.priors, model.variances
        return model

    def param_groups(self, model: nn.Module) -> list[dict[str, object]]:
        return [{"params": list(model.parameters()), "lr": self.cfg.lr}]

    def _priors_on(self, device: torch.device) -> Tensor:
        if self.priors is None:
            raise ValueError("SsdTask: build_model() first: the priors are the model's")
        if self.priors.device != device:
            self.priors = self.priors.to(device)
        return self.priors

    def loss(
        self, outputs: Mapping[str, Tensor], targets: Sequence[Mapping[str, Tensor]]
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The objective on targets in input pixels (normalised here, as SSD's are)."""
        priors = self._priors_on(outputs["loc"].device)
        side = float(self.input_size)  # type: ignore[arg-type]
        normalised = [{"boxes": t["boxes"] / side, "labels": t["labels"]} for t in targets]
        loss = self.objective(outputs, priors, normalised)
        return loss, {}

    def decode(
        self, outputs: Mapping[str, Tensor], score_threshold: float | None = None
    ) -> list[dict[str, Tensor]]:
        """``{"boxes": [n, 4] xyxy in input pixels, "scores": [n], "labels": [n]}`` per
        image: the :attr:`top_k` best after per-class NMS, probability above
        ``score_threshold`` (default: the objective's)."""
        from ...postprocess.ssd import ssd_detect

        threshold = self.objective.detection_threshold
        if score_threshold is not None:
            threshold = score_threshold
        dets = ssd_detect(
            outputs["loc"],
            self.objective.detection_logits(outputs["conf"]),
            self._priors_on(outputs["loc"].device),
            score_threshold=threshold,
            top_k=self.top_k,
            variances=self.variances,
        )
        side = float(self.input_size)  # type: ignore[arg-type]
        return [{**d, "boxes": d["boxes"] * side} for d in dets]

    def metrics(
        self, preds: Sequence[Mapping[str, Tensor]], targets: Sequence[Mapping[str, Tensor]]
    ) -> dict[str, float]:
        return box_metrics(preds, targets, self.cfg.max_detections)


Task = PointTask | BoxTask | SsdTask


def build_task(cfg: TrainConfig, num_classes: int = 1) -> Task:
    """The task ``cfg`` trains (``cfg.task`` and, for boxes, ``cfg.detector``)."""
    if cfg.task == "points":
        return PointTask(cfg)
    if cfg.detector == "ssd":
        return SsdTask(cfg, num_classes)
    return BoxTask(cfg, num_classes)
