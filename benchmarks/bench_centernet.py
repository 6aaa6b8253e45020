"""CenterNet targets: batched ``centernet_targets`` vs drawing one object at a time.

The baseline is the usual data-loader code path of CenterNet implementations: for each
image and each object, compute the radius in Python, build that object's gaussian kernel
and paste it with ``torch.maximum`` on a sliced window of the class plane, then write the
size, offset and index entries. Both produce the same dense and index targets, which is
asserted before timing.

Run: ``python benchmarks/bench_centernet.py [--quick] [--repeats N] [--threads T]
[--device cuda]``.
"""

from __future__ import annotations

import math

import torch

from _timing import bench_main, device_sync, time_pair
from detloss.heatmap import centernet_targets, draw_gaussians, gaussian_radius

STRIDE = 4
MIN_OVERLAP = 0.3


def make_batch(
    batch: int, objects: int, out_size: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random boxes inside a ``(out_size * STRIDE)^2`` image, COCO-like: mostly small."""
    g = torch.Generator().manual_seed(seed)
    side = out_size * STRIDE
    wh = side * torch.rand(batch, objects, 2, generator=g) ** 2 * 0.8 + 2
    xy = torch.rand(batch, objects, 2, generator=g) * (side - wh)
    boxes = torch.cat((xy, xy + wh), dim=-1)
    labels = torch.randint(0, 80, (batch, objects), generator=g)
    # A few padded slots, not at the end, as a padded batch with a mask allows.
    mask = torch.rand(batch, objects, generator=g) > 0.05
    return boxes, labels, mask


def _radius(h: float, w: float, o: float) -> float:
    """Corrected gaussian radius for one box, plain Python."""
    s, p = h + w, h * w
    r1 = (s - math.sqrt(max(s * s - 4 * p * (1 - o) / (1 + o), 0))) / 2
    r2 = (2 * s - math.sqrt(max(4 * s * s - 16 * (1 - o) * p, 0))) / 8
    r3 = (-2 * o * s + math.sqrt(4 * o * o * s * s + 16 * o * (1 - o) * p)) / (8 * o)
    return min(r1, r2, r3)


def paste(plane: torch.Tensor, ix: int, iy: int, r: int) -> None:
    """Build one object's kernel and max it into its window of ``plane [H, W]``."""
    height, width = plane.shape
    d = torch.arange(-r, r + 1, dtype=torch.float64, device=plane.device)
    sigma = (2 * r + 1) / 6
    kernel = torch.exp(-(d[:, None] ** 2 + d[None, :] ** 2) / (2 * sigma * sigma))
    kernel[kernel < torch.finfo(plane.dtype).eps] = 0
    kernel = kernel.to(plane.dtype)
    left, right = min(ix, r), min(width - ix, r + 1)
    top, bottom = min(iy, r), min(height - iy, r + 1)
    window = plane[iy - top : iy + bottom, ix - left : ix + right]
    torch.maximum(window, kernel[r - top : r + bottom, r - left : r + right], out=window)


def loop_targets(
    boxes: torch.Tensor,
    labels: torch.Tensor,
    mask: torch.Tensor,
    num_classes: int,
    output_size: tuple[int, int],
) -> dict[str, torch.Tensor]:
    """The one-object-at-a-time baseline (a later object overwrites a cell's size/offset)."""
    height, width = output_size
    batch, n = labels.shape
    device = boxes.device
    heatmap = torch.zeros(batch, num_classes, height, width, device=device)
    size = torch.zeros(batch, 2, height, width, device=device)
    offset = torch.zeros(batch, 2, height, width, device=device)
    weight = torch.zeros(batch, 1, height, width, device=device)
    index = torch.zeros(batch, n, dtype=torch.long, device=device)
    index_mask = torch.zeros(batch, n, dtype=torch.bool, device=device)
    size_t = torch.zeros(batch, n, 2, device=device)
    offset_t = torch.zeros(batch, n, 2, device=device)
    # Annotations are read on the host once, as a data loader holding numpy arrays would.
    host_boxes, host_labels, host_mask = boxes.tolist(), labels.tolist(), mask.tolist()
    for b in range(batch):
        owner = {}
        for i in range(n):
            if not host_mask[b][i]:
                continue
            x1, y1, x2, y2 = host_boxes[b][i]
            cx, cy = (x1 + x2) / 2 / STRIDE, (y1 + y2) / 2 / STRIDE
            w, h = max(x2 - x1, 0) / STRIDE, max(y2 - y1, 0) / STRIDE
            ix, iy = math.floor(cx), math.floor(cy)
            r = max(0, int(_radius(h, w, MIN_OVERLAP)))
            paste(heatmap[b, host_labels[b][i]], ix, iy, r)
            size[b, 0, iy, ix], size[b, 1, iy, ix] = w, h
            offset[b, 0, iy, ix], offset[b, 1, iy, ix] = cx - ix, cy - iy
            weight[b, 0, iy, ix] = 1
            index[b, i] = iy * width + ix
            size_t[b, i, 0], size_t[b, i, 1] = w, h
            offset_t[b, i, 0], offset_t[b, i, 1] = cx - ix, cy - iy
            owner[iy * width + ix] = i
        for i in owner.values():
            index_mask[b, i] = True
    return {
        "heatmap": heatmap,
        "size": size,
        "offset": offset,
        "weight": weight,
        "index": index,
        "index_mask": index_mask,
        "size_target": size_t,
        "offset_target": offset_t,
    }


def _pair(baseline, ours, repeats: int, device: torch.device) -> dict[str, list[float]]:
    base_s, ours_s = time_pair(baseline, ours, repeats, sync=device_sync(device))
    return {"baseline_s": base_s, "ours_s": ours_s}


def run(
    repeats: int = 5, quick: bool = False, device: str = "cpu", threads: int | None = None
) -> list[dict]:
    """Time both implementations; returns rows for a suite runner.

    ``threads`` sets ``torch.set_num_threads`` for the run (restored afterwards). On a
    loaded machine one thread gives steadier numbers: the batched code runs window-sized
    operations that use the intra-op thread pool, and a pool thread that is not scheduled
    stalls every such operation, while the per-object loop only runs tiny ones.
    """
    if threads is not None:
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return run(repeats, quick, device)
        finally:
            torch.set_num_threads(before)
    dev = torch.device(device)
    batch, objects, out_size, classes = (4, 20, 64, 80) if quick else (16, 50, 128, 80)
    boxes, labels, mask = (t.to(dev) for t in make_batch(batch, objects, out_size))
    note = (
        f"B={batch}, {classes} classes, {out_size}x{out_size}, {objects} objects/image, {dev.type}"
    )

    def ours() -> dict[str, torch.Tensor]:
        return centernet_targets(
            boxes,
            labels,
            target_mask=mask,
            num_classes=classes,
            output_size=(out_size, out_size),
            stride=STRIDE,
        )

    def baseline() -> dict[str, torch.Tensor]:
        return loop_targets(boxes, labels, mask, classes, (out_size, out_size))

    got, want = ours(), baseline()
    for key, value in want.items():
        torch.testing.assert_close(got[key], value, msg=lambda m, key=key: f"{key}: {m}")
    rows = [
        {
            "name": "centernet_targets",
            **_pair(baseline, ours, repeats, dev),
            "note": note + "; end to end, both allocate the same outputs",
        }
    ]

    # Drawing alone, into preallocated maps (pasting again is idempotent, so the maps are
    # reused across repeats): the part that allocating the 84 MB heatmap hides on a CPU.
    flat_index = got["index"][mask]
    cells = torch.stack((flat_index % out_size, flat_index // out_size), 1)
    wh = got["size_target"][mask]
    radii = gaussian_radius(wh[:, 1], wh[:, 0], MIN_OVERLAP).floor().long()
    planes = mask.nonzero()[:, 0] * classes + labels[mask]
    host = [(x, y, r, p) for (x, y), r, p in zip(cells.tolist(), radii.tolist(), planes.tolist())]
    map_base = torch.zeros(batch * classes, out_size, out_size, device=dev)
    map_ours = torch.zeros(batch * classes, out_size, out_size, device=dev)

    def baseline_draw() -> None:
        for x, y, r, p in host:
            paste(map_base[p], x, y, r)

    def ours_draw() -> None:
        draw_gaussians(map_ours, cells, radii, planes)

    baseline_draw()
    ours_draw()
    torch.testing.assert_close(map_ours, map_base)
    torch.testing.assert_close(map_ours.view_as(got["heatmap"]), got["heatmap"])
    rows.append(
        {
            "name": "draw_gaussians",
            **_pair(baseline_draw, ours_draw, repeats, dev),
            "note": note + "; drawing only, into preallocated maps",
        }
    )
    return rows


if __name__ == "__main__":
    bench_main(run, __doc__)
