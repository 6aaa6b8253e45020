"""Batching of ``(image, target)`` items and simple paired augmentations."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

__all__ = ["RandomHorizontalFlip", "collate_detection", "pad_images"]


def pad_images(images: Sequence[Tensor], divisor: int = 1) -> Tensor:
    """Stack ``[3, H_i, W_i]`` images into ``[B, 3, H, W]``, zero-padding at the right and
    bottom (so pixel coordinates of points and boxes are unchanged). ``H`` and ``W`` are
    the largest sizes rounded up to a multiple of ``divisor``.

    Returns:
        ``float[B, 3, H, W]`` (the images' dtype), zeros where an image does not reach.

    Example:
        >>> import torch
        >>> batch = pad_images([torch.ones(3, 2, 4), torch.ones(3, 5, 3)], divisor=4)
        >>> batch.shape, batch[0, 0].sum().item(), batch[1, 0].sum().item()
        (torch.Size([2, 3, 8, 4]), 8.0, 15.0)
    """
    if not images:
        raise ValueError("images: expected at least one image, got an empty list")
    for i, img in enumerate(images):
        if not isinstance(img, Tensor) or img.ndim != 3:
            shape = list(img.shape) if isinstance(img, Tensor) else type(img).__name__
            raise ValueError(f"images[{i}]: expected shape [C, H, W], got {shape}")
    c = images[0].shape[0]
    h = max(img.shape[1] for img in images)
    w = max(img.shape[2] for img in images)
    h, w = -(-h // divisor) * divisor, -(-w // divisor) * divisor
    if all(tuple(img.shape) == (c, h, w) for img in images):
        return torch.stack(list(images))
    out = images[0].new_zeros((len(images), c, h, w))
    for i, img in enumerate(images):
        if img.shape[0] != c:
            raise ValueError(
                f"images[{i}]: expected {c} channels like images[0], got {list(img.shape)}"
            )
        out[i, :, : img.shape[1], : img.shape[2]] = img
    return out


def collate_detection(
    batch: Sequence[tuple[Tensor, Mapping[str, Tensor]]],
) -> tuple[Tensor, list[dict[str, Tensor]]]:
    """``DataLoader`` collate: ``(images [B, 3, H, W], targets)`` with ``targets`` the list
    of per-image dicts that detloss losses, matchers and metrics take. Images of different
    sizes are padded at the right and bottom (:func:`pad_images`).

    Returns:
        ``(images float[B, 3, H, W], targets list[dict[str, Tensor]])``.

    Example:
        >>> import torch
        >>> items = [(torch.zeros(3, 4, 6), {"points": torch.tensor([[1.0, 2.0]])}),
        ...          (torch.zeros(3, 5, 5), {"points": torch.zeros(0, 2)})]
        >>> images, targets = collate_detection(items)
        >>> images.shape, [t["points"].shape[0] for t in targets]
        (torch.Size([2, 3, 5, 6]), [1, 0])
    """
    images = [item[0] for item in batch]
    targets = [dict(item[1]) for item in batch]
    return pad_images(images), targets


class RandomHorizontalFlip:
    """Flip an image and its ``points`` / ``boxes`` (xyxy) left-right with probability ``p``.

    Draws from ``torch``'s global generator (or ``generator``), so a seeded run is
    reproducible. Works as the ``transform`` of :class:`~detloss.app.data.PointDataset` and
    :class:`~detloss.app.data.CocoDetection`.

    Example:
        >>> import torch
        >>> flip = RandomHorizontalFlip(p=1.0)
        >>> image = torch.arange(4.0).reshape(1, 1, 4).expand(3, 1, 4)
        >>> out, target = flip(image, {"boxes": torch.tensor([[0.0, 0.0, 1.0, 1.0]]),
        ...                            "points": torch.tensor([[0.5, 0.5]])})
        >>> out[0, 0].tolist(), target["boxes"].tolist(), target["points"].tolist()
        ([3.0, 2.0, 1.0, 0.0], [[3.0, 0.0, 4.0, 1.0]], [[3.5, 0.5]])
    """

    def __init__(self, p: float = 0.5, generator: torch.Generator | None = None) -> None:
        if not 0 <= p <= 1:
            raise ValueError(f"p must be in [0, 1], got {p}")
        self.p, self.generator = p, generator

    def __call__(
        self, image: Tensor, target: dict[str, Tensor]
    ) -> tuple[Tensor, dict[str, Tensor]]:
        if float(torch.rand((), generator=self.generator)) >= self.p:
            return image, target
        w = image.shape[-1]
        target = dict(target)
        if "points" in target:
            pts = target["points"].clone()
            pts[:, 0] = w - pts[:, 0]
            target["points"] = pts
        if "boxes" in target:
            boxes = target["boxes"].clone()
            boxes[:, [0, 2]] = w - target["boxes"][:, [2, 0]]
            target["boxes"] = boxes
        return image.flip(-1), target
