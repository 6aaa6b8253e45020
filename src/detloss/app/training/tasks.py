"""What each task trains and how it is scored: the model, the loss on a batch (with the
targets it needs), the decoding of the outputs and the metrics.

* ``points``: :class:`~detloss.app.models.P2PNet` trained with
  :class:`~detloss.losses.points.PointLoss`, decoded by
  :func:`~detloss.postprocess.points.decode_points`, scored by point F1 at a distance
  threshold and counting MAE / RMSE;
* ``boxes``: the CenterNet-style :class:`~detloss.app.models.CenterNet` trained with
  :class:`~detloss.losses.centernet.CenterNetLoss` on
  :func:`~detloss.heatmap.centernet_targets`, decoded by
  :func:`~detloss.postprocess.centernet.centernet_decode`, scored by COCO box AP.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor, nn

from ...metrics import coco_box_ap, count_metrics, point_metrics, voc_box_ap
from ..models.centernet import CenterNet
from ..models.p2pnet import P2PNet
from .config import TrainConfig

__all__ = ["BoxTask", "PointTask", "Task", "build_task"]


class PointTask:
    """P2PNet + PointLoss; metrics ``point_f1@<t>px``, precision, recall, count errors."""

    name = "points"

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
        """``{"points": [n, 2], "scores": [n]}`` per image, probability above
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

        boxes, scores, labels = centernet_decode(
            outputs["heatmap"],
            outputs["size"],
            outputs["offset"],
            k=self.cfg.max_detections,
            stride=CenterNet.stride,
        )
        # Non-peak cells fill the tail of the top-k with score 0.
        keep = scores > 0
        if score_threshold is not None:
            keep &= scores >= score_threshold
        return [
            {"boxes": b[m], "scores": s[m], "labels": lab[m]}
            for b, s, lab, m in zip(boxes, scores, labels, keep, strict=True)
        ]

    def metrics(
        self, preds: Sequence[Mapping[str, Tensor]], targets: Sequence[Mapping[str, Tensor]]
    ) -> dict[str, float]:
        coco = coco_box_ap(preds, targets, max_detections=self.cfg.max_detections)
        voc = voc_box_ap(preds, targets)
        return {
            "box_ap": coco["ap"],  # type: ignore[dict-item]
            "box_ap50": coco["ap50"],  # type: ignore[dict-item]
            "box_ap75": coco["ap75"],  # type: ignore[dict-item]
            "box_voc_ap50": voc["ap"],  # type: ignore[dict-item]
        }


Task = PointTask | BoxTask


def build_task(cfg: TrainConfig, num_classes: int = 1) -> Task:
    return PointTask(cfg) if cfg.task == "points" else BoxTask(cfg, num_classes)
