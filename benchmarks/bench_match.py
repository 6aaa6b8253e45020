"""HungarianMatcher (cost + solve) against DETR's matching pipeline.

DETR builds one ``[B * M, sum n]`` cost with every cross-image block, copies it to the
host and runs scipy per image. detloss builds ``[B, M, N]`` per-image blocks, sends only
each image's valid block to the host as float64 and solves the images in a thread pool.
Both must give the same assignments.

Run: ``python benchmarks/bench_match.py [--quick] [--repeats R]``.
"""

from __future__ import annotations

import argparse

import torch
from scipy.optimize import linear_sum_assignment

from _timing import print_rows, time_pair
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
def detr_pipeline(outputs: dict, targets: list[dict]) -> list[tuple]:
    """DETR's matcher as published: one cross-image cost matrix, then scipy per image."""
    bs, queries = outputs["pred_logits"].shape[:2]
    out_prob = outputs["pred_logits"].flatten(0, 1).softmax(-1)
    out_bbox = outputs["pred_boxes"].flatten(0, 1)
    tgt_ids = torch.cat([t["labels"] for t in targets])
    tgt_bbox = torch.cat([t["boxes"] for t in targets])
    cost_class = -out_prob[:, tgt_ids]
    cost_bbox = torch.cdist(out_bbox, tgt_bbox, p=1)
    cost_giou = -_detr_giou(_detr_xyxy(out_bbox), _detr_xyxy(tgt_bbox))
    c = 5.0 * cost_bbox + 1.0 * cost_class + 2.0 * cost_giou
    c = c.view(bs, queries, -1).cpu()
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


def run(repeats: int = 5, quick: bool = False) -> list[dict]:
    torch.set_num_threads(2)
    batch, queries = (4, 100) if quick else (16, 300)
    outputs, targets = make_problem(batch, queries, 91, 30)
    matcher = HungarianMatcher(1.0, 5.0, 2.0, box_format="cxcywh")

    reference = detr_pipeline(outputs, targets)
    ours = matcher(outputs, targets).pairs()
    for (rows, cols), (pred, tgt) in zip(reference, ours, strict=True):
        order = rows.argsort()
        assert pred.tolist() == rows[order].tolist() and tgt.tolist() == cols[order].tolist()

    baseline, mine = time_pair(
        lambda: detr_pipeline(outputs, targets), lambda: matcher(outputs, targets), repeats
    )
    name = f"hungarian matcher B={batch} M={queries} N~U(1,30) C=91"
    return [
        {"name": name, "baseline_s": baseline, "ours_s": mine, "note": "same assignments asserted"}
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    print_rows(run(args.repeats, args.quick))


if __name__ == "__main__":
    main()
