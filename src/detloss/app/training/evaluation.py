"""Running a trained model: predictions on a loader or on image files, the task's
metrics, and the JSON that ``detloss predict`` writes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from ..data._common import DEFAULT_MAX_PIXELS
from ..data.collate import pad_images
from .tasks import Task, resize_image

__all__ = [
    "ImageSource",
    "evaluate",
    "list_images",
    "predict",
    "predict_loader",
    "predictions_json",
    "read_image",
]


def _detect(
    model: nn.Module,
    task: Task,
    images: Tensor,
    device: torch.device,
    amp: bool,
    score_threshold: float | None = None,
) -> list[dict[str, Tensor]]:
    """The task's decoded detections of a batch ``Tensor[B, 3, H, W]``, on the CPU."""
    with torch.autocast(device.type, enabled=amp and device.type == "cuda"):
        outputs = model(images.to(device))
    # Decoding runs in float32 whatever the autocast dtype of the heads.
    outputs = {k: v.float() for k, v in outputs.items()}
    decoded = task.decode(outputs, score_threshold)
    return [{k: v.cpu() for k, v in p.items()} for p in decoded]


@torch.no_grad()
def predict_loader(
    model: nn.Module,
    task: Task,
    loader: DataLoader,
    device: torch.device,
    amp: bool = False,
) -> tuple[list[dict[str, Tensor]], list[dict[str, Tensor]]]:
    """Predictions and targets (on the CPU) of every image of ``loader`` (a loader of
    ``(images, targets)`` batches, as :func:`~detloss.app.data.collate_detection` makes)."""
    was_training = model.training
    model.eval()
    preds: list[dict[str, Tensor]] = []
    targets: list[dict[str, Tensor]] = []
    for images, tgts in loader:
        preds += _detect(model, task, images, device, amp)
        targets += [dict(t) for t in tgts]
    model.train(was_training)
    return preds, targets


def evaluate(
    model: nn.Module, task: Task, loader: DataLoader, device: torch.device, amp: bool = False
) -> dict[str, float]:
    """The task's metrics of ``model`` on ``loader``."""
    preds, targets = predict_loader(model, task, loader, device, amp)
    return task.metrics(preds, targets)


ImageSource = str | Path | Tensor | Sequence[str | Path | Tensor]


def list_images(source: str | Path | Sequence[str | Path]) -> list[Path]:
    """The image files of ``source``: a folder (its image files, not recursing, in natural
    order: ``img_2`` before ``img_10``), one file, or a list of files and folders.

    Raises :class:`FileNotFoundError` naming a path that does not exist and
    :class:`ValueError` when no image file is found.
    """
    from ..data.crowd import IMAGE_SUFFIXES, natural_key

    items = [source] if isinstance(source, str | Path) else list(source)
    files: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found = [p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES]
            files += sorted((p for p in found if p.is_file()), key=natural_key)
        elif path.exists():
            files.append(path)
        else:
            raise FileNotFoundError(f"images: no such file or folder {str(path)!r}")
    if not files:
        shown = ", ".join(repr(str(i)) for i in items[:3]) + (", ..." if len(items) > 3 else "")
        raise ValueError(
            f"images: no image file ({', '.join(IMAGE_SUFFIXES)}) in {shown or 'an empty list'}"
        )
    return files


def read_image(path: str | Path, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Tensor:
    """``float32[3, H, W]`` in [0, 1] through the data readers' loader: a regular file
    only (no FIFO or device), its pixel budget checked from the header before decoding,
    errors naming the file."""
    path = Path(path)
    from ..data._common import load_image

    return load_image(path, f"image {path.name!r}", root=path.parent, max_pixels=max_pixels)


@torch.no_grad()
def predict(
    model: nn.Module,
    task: Task,
    images: ImageSource | DataLoader,
    device: str | torch.device | None = None,
    amp: bool = False,
    *,
    score_threshold: float | None = None,
    batch_size: int = 8,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> list[dict[str, Tensor]] | tuple[list[dict[str, Tensor]], list[dict[str, Tensor]]]:
    """Detections of a trained model (from :func:`load_checkpoint`) on images.

    Args:
        model, task: as :func:`load_checkpoint` returns them.
        images: an image file, a folder of images (see :func:`list_images`), a list of
            files, an image ``Tensor[3, H, W]`` (RGB in [0, 1]), a batch
            ``Tensor[B, 3, H, W]`` or a list of image tensors. Files are read with
            :func:`read_image` (regular files only, ``max_pixels`` checked first).
            A ``DataLoader`` of ``(images, targets)`` batches returns
            ``(predictions, targets)`` as :func:`predict_loader` does.
        device: where the model runs (default: where its parameters are).
        amp: mixed precision on CUDA.
        score_threshold: keep detections scoring above it (points: probability above it,
            default the checkpoint's ``score_threshold``; boxes: score at least it,
            default every decoded peak with a positive score).
        batch_size: images per forward pass (images of different sizes are zero-padded
            at the right and bottom; detections in the padding are dropped). A detector
            of a fixed input (SSD) sees each image resized to it; its boxes are scaled
            back to the image.

    Returns:
        One dict per image, on the CPU, in pixel coordinates of that image: points
        ``{"points": Tensor[n, 2] (x, y), "scores": Tensor[n]}``; boxes ``{"boxes":
        Tensor[n, 4] (x1, y1, x2, y2), "scores": Tensor[n], "labels": Tensor[n]}``
        (labels index the checkpoint's ``categories``).
    """
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    if isinstance(images, DataLoader):
        return predict_loader(model, task, images, dev, amp)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if score_threshold is not None and not 0 <= score_threshold < 1:
        raise ValueError(f"score_threshold must be in [0, 1), got {score_threshold}")
    tensors: list[Tensor] | None = None
    if isinstance(images, Tensor):
        if images.ndim not in (3, 4) or images.shape[-3] != 3:
            raise ValueError(
                f"images: expected a Tensor[3, H, W] or Tensor[B, 3, H, W], got "
                f"{list(images.shape)}"
            )
        tensors = list(images) if images.ndim == 4 else [images]
    elif (
        isinstance(images, Sequence)
        and not isinstance(images, str)
        and images
        and all(isinstance(i, Tensor) for i in images)
    ):
        tensors = list(images)  # type: ignore[arg-type]
    files = list_images(images) if tensors is None else []  # type: ignore[arg-type]
    count = len(tensors) if tensors is not None else len(files)
    was_training = model.training
    model.eval()
    preds: list[dict[str, Tensor]] = []
    try:
        for start in range(0, count, batch_size):
            if tensors is not None:
                batch = tensors[start : start + batch_size]
            else:
                batch = [read_image(f, max_pixels) for f in files[start : start + batch_size]]
            size = task.input_size
            inputs = batch if size is None else [resize_image(i, size) for i in batch]
            decoded = _detect(model, task, pad_images(inputs), dev, amp, score_threshold)
            for image, pred in zip(batch, decoded, strict=True):
                height, width = image.shape[-2:]
                if size is not None:  # back from the detector's square input
                    scale = torch.tensor([width / size, height / size] * 2)
                    pred["boxes"] = pred["boxes"] * scale
                preds.append(_inside(pred, height, width))
    finally:
        model.train(was_training)
    return preds


def _inside(pred: dict[str, Tensor], height: int, width: int) -> dict[str, Tensor]:
    """Drop the detections that lie in the padding of a smaller image of a batch; boxes
    are clipped to the image."""
    if "points" in pred:
        pts = pred["points"]
        keep = (pts[:, 0] <= width) & (pts[:, 1] <= height)
        return {k: v[keep] for k, v in pred.items()}
    boxes = pred["boxes"]
    centre_x = (boxes[:, 0] + boxes[:, 2]) / 2
    centre_y = (boxes[:, 1] + boxes[:, 3]) / 2
    keep = (centre_x <= width) & (centre_y <= height)
    out = {k: v[keep] for k, v in pred.items()}
    b = out["boxes"].clone()
    b[:, 0::2] = b[:, 0::2].clamp(0, width)
    b[:, 1::2] = b[:, 1::2].clamp(0, height)
    # An untrained size head can predict negative sizes: empty boxes, never inverted.
    b[:, 2] = torch.maximum(b[:, 2], b[:, 0])
    b[:, 3] = torch.maximum(b[:, 3], b[:, 1])
    out["boxes"] = b
    return out


def predictions_json(
    preds: Sequence[Mapping[str, Tensor]],
    names: Sequence[str],
    ckpt: Mapping[str, object],
    image_ids: Sequence[int] | None = None,
) -> object:
    """The JSON of ``detloss predict``.

    Boxes: a COCO results list, ``[{"image_id", "category_id", "bbox": [x, y, w, h],
    "score", "file_name"}, ...]`` with the category ids of the training data (COCO's own
    ids; the class index for the other formats) -- what ``COCO.loadRes`` reads. Points:
    ``{"task": "points", "images": [{"file_name", "count", "points": [[x, y], ...],
    "scores": [...]}, ...]}``. ``image_ids`` default to 1, 2, ... in the order of
    ``names``.
    """
    ids = list(image_ids) if image_ids is not None else list(range(1, len(names) + 1))
    if len(ids) != len(names) or len(preds) != len(names):
        raise ValueError(
            f"predictions_json: expected as many predictions and image ids as names "
            f"({len(names)}), got {len(preds)} and {len(ids)}"
        )
    if preds and "points" in preds[0]:
        return {
            "task": "points",
            "images": [
                {
                    "file_name": name,
                    "count": len(p["points"]),
                    "points": [[round(x, 3), round(y, 3)] for x, y in p["points"].tolist()],
                    "scores": [round(v, 5) for v in p["scores"].tolist()],
                }
                for name, p in zip(names, preds, strict=True)
            ],
        }
    category_ids = list(ckpt.get("category_ids") or range(int(ckpt.get("num_classes", 1))))  # type: ignore[call-overload]
    results: list[dict[str, object]] = []
    for name, image_id, p in zip(names, ids, preds, strict=True):
        for (x1, y1, x2, y2), score, label in zip(
            p["boxes"].tolist(), p["scores"].tolist(), p["labels"].tolist(), strict=True
        ):
            results.append(
                {
                    "image_id": image_id,
                    "category_id": category_ids[label],
                    "bbox": [round(x1, 3), round(y1, 3), round(x2 - x1, 3), round(y2 - y1, 3)],
                    "score": round(score, 5),
                    "file_name": name,
                }
            )
    return results
