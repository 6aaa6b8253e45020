"""HungarianMatcher (cost + solve) against DETR's matching pipeline.

DETR builds one ``[B * M, sum n]`` cost with every cross-image block on the inputs'
device, copies it to the host and runs scipy per image. detloss builds ``[B, M, N]``
per-image blocks and solves them through :func:`detloss.match.hungarian`, whatever solver
that uses on the device. On the CPU both must give the same assignments (DETR size:
B = 16, M = 300 queries, 1-30 targets). On a GPU the inputs live on the device, the DETR
size runs there too, and so does a DINO-size batch (M = 900 queries, 1-100 targets); a
solver on the device may break ties differently, so there each image's assignment must
reach the same total cost, recomputed in float64 on the host from the indices.

Run: ``python benchmarks/bench_match.py [--quick] [--repeats R] [--device cuda]``.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from _timing import device_sync, print_rows, time_pair
from detloss.match import HungarianMatcher


def _detr_xyxy(b: torch.Tensor) -> torch.Tensor:
    cx, cy, w, h = b.unbind(-1)
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)


def _detr_giou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt = torch.max(a[:, None, :2], b[:, :2])
    rb = torch.min(a[:, None, 2:], b[:, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b - inter
    iou = inter / union
    lt = torch.min(a[:, None, :2], b[:, :2])
    rb = torch.max(a[:, None, 2:], b[:, 2:])
    wh = (rb - lt).clamp(min=0)
    area = wh[..., 0] * wh[..., 1]
    return iou - (area - union) / area


@torch.no_grad()
def detr_cost(outputs: dict, targets: list[dict]) -> torch.Tensor:
    """DETR's cost as published: ``[B, M, sum n]``, every image's queries against the
    targets of all images, computed on the inputs' device in their dtype."""
    bs, queries = outputs["pred_logits"].shape[:2]
    out_prob = outputs["pred_logits"].flatten(0, 1).softmax(-1)
    out_bbox = outputs["pred_boxes"].flatten(0, 1)
    tgt_ids = torch.cat([t["labels"] for t in targets])
    tgt_bbox = torch.cat([t["boxes"] for t in targets])
    cost_class = -out_prob[:, tgt_ids]
    cost_bbox = torch.cdist(out_bbox, tgt_bbox, p=1)
    cost_giou = -_detr_giou(_detr_xyxy(out_bbox), _detr_xyxy(tgt_bbox))
    c = 5.0 * cost_bbox + 1.0 * cost_class + 2.0 * cost_giou
    return c.view(bs, queries, -1)


@torch.no_grad()
def detr_pipeline(outputs: dict, targets: list[dict]) -> list[tuple]:
    """DETR's matcher as published: the cross-image cost, ``.cpu()``, scipy per image."""
    c = detr_cost(outputs, targets).cpu()
    sizes = [len(t["boxes"]) for t in targets]
    return [linear_sum_assignment(part[i]) for i, part in enumerate(c.split(sizes, -1))]


def make_problem(batch: int, queries: int, classes: int, max_targets: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    outputs = {
        "pred_logits": torch.randn(batch, queries, classes + 1, generator=g),
        "pred_boxes": torch.cat(
            [
                torch.rand(batch, queries, 2, generator=g) * 0.8 + 0.1,
                torch.rand(batch, queries, 2, generator=g) * 0.2 + 0.02,
            ],
            dim=-1,
        ),
    }
    targets = []
    for _ in range(batch):
        n = int(torch.randint(1, max_targets + 1, (1,), generator=g))
        boxes = torch.cat(
            [torch.rand(n, 2, generator=g) * 0.8 + 0.1, torch.rand(n, 2, generator=g) * 0.2 + 0.02],
            dim=-1,
        )
        targets.append({"boxes": boxes, "labels": torch.randint(0, classes, (n,), generator=g)})
    return outputs, targets


def to_device(outputs: dict, targets: list[dict], device: torch.device) -> tuple[dict, list]:
    """The problem moved to ``device``: generated on the host, so both devices solve the
    same numbers."""
    outputs = {key: value.to(device) for key, value in outputs.items()}
    targets = [{key: value.to(device) for key, value in t.items()} for t in targets]
    return outputs, targets


def assert_same_totals(outputs: dict, targets: list[dict], reference: list, ours: list) -> None:
    """Each image's assignment is complete and costs what DETR's does, both summed on one
    float64 host cost, so that exact ties may be broken either way. Each side solves its
    own float32 cost; a near-tie that their rounding decides differently would fail, which
    the random inputs here make unlikely (at DINO size on the CPU the indices agree)."""
    host_outputs = {key: value.detach().cpu().double() for key, value in outputs.items()}
    host_targets = [
        {"boxes": t["boxes"].cpu().double(), "labels": t["labels"].cpu()} for t in targets
    ]
    cost = detr_cost(host_outputs, host_targets).numpy()
    offsets = np.cumsum([0] + [len(t["boxes"]) for t in targets])
    for i, ((rows, cols), (pred, tgt)) in enumerate(zip(reference, ours, strict=True)):
        block = cost[i, :, offsets[i] : offsets[i + 1]]
        pred, tgt = pred.cpu().numpy(), tgt.cpu().numpy()
        n = block.shape[1]
        assert len(np.unique(pred)) == n and sorted(tgt.tolist()) == list(range(n)), i
        want, got = block[rows, cols].sum(), block[pred, tgt].sum()
        rel = abs(got - want) / max(1.0, abs(want))
        assert rel <= 1e-9, f"image {i}: total cost {got:.12g}, DETR's {want:.12g} (rel {rel:.1e})"


def run(repeats: int = 5, quick: bool = False, device: str = "cpu") -> list[dict]:
    torch.set_num_threads(2)
    dev = torch.device(device)
    batch = 4 if quick else 16
    # (queries, most targets per image): DETR's size, and on a GPU also DINO's.
    sizes = [(100 if quick else 300, 30)]
    if dev.type != "cpu":
        sizes.append((900, 100))
    matcher = HungarianMatcher(1.0, 5.0, 2.0, box_format="cxcywh")
    results = []
    for queries, max_targets in sizes:
        outputs, targets = to_device(*make_problem(batch, queries, 91, max_targets), dev)
        reference = detr_pipeline(outputs, targets)
        ours = matcher(outputs, targets).pairs()
        assert_same_totals(outputs, targets, reference, ours)
        if dev.type == "cpu":
            note = "same assignments asserted"
            for (rows, cols), (pred, tgt) in zip(reference, ours, strict=True):
                order = rows.argsort()
                assert pred.tolist() == rows[order].tolist()
                assert tgt.tolist() == cols[order].tolist()
        else:
            note = (
                "same total cost per image asserted (float64, rel 1e-9); baseline = DETR's "
                f"cost on {dev.type}, .cpu(), scipy per image"
            )

        baseline, mine = time_pair(
            lambda outputs=outputs, targets=targets: detr_pipeline(outputs, targets),
            lambda outputs=outputs, targets=targets: matcher(outputs, targets),
            repeats,
            sync=device_sync(dev),
        )
        name = f"hungarian matcher B={batch} M={queries} N~U(1,{max_targets}) C=91"
        results.append({"name": name, "baseline_s": baseline, "ours_s": mine, "note": note})
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--device", default="cpu", help="e.g. cuda")
    args = parser.parse_args()
    print_rows(run(args.repeats, args.quick, args.device))


if __name__ == "__main__":
    main()
