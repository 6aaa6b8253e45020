"""Command line: ``detloss demo | bench``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["main"]


def _quick_example() -> int:
    import torch

    from .batching import pad_targets
    from .losses import giou_loss
    from .match import HungarianMatcher

    torch.manual_seed(0)
    batch, queries, classes = 2, 10, 5
    logits = torch.randn(batch, queries, classes + 1, requires_grad=True)
    centres = torch.rand(batch, queries, 2) * 0.8 + 0.1
    boxes = torch.cat([centres - 0.05, centres + 0.05], dim=-1).requires_grad_()
    targets = [
        {
            "boxes": torch.tensor([[0.1, 0.1, 0.3, 0.3], [0.5, 0.5, 0.9, 0.8]]),
            "labels": torch.tensor([1, 3]),
        },
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},
    ]
    matching = HungarianMatcher()({"pred_logits": logits, "pred_boxes": boxes}, targets)
    padded = pad_targets(targets)
    idx = matching.matched_targets()
    pos = matching.positive_mask
    matched_boxes = padded["boxes"].gather(1, idx[..., None].expand(-1, -1, 4))
    loss = giou_loss(boxes[pos], matched_boxes[pos], reduction="mean")
    loss.backward()
    print("matched pairs per image:", [(p.tolist(), t.tolist()) for p, t in matching.pairs()])
    print(f"GIoU loss over matched pairs: {loss.item():.6f}")
    print(f"gradient norm on boxes: {boxes.grad.norm().item():.6f}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="detloss", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="run the end-to-end demonstration")
    args = parser.parse_args(argv)
    if args.command == "demo":
        return _quick_example()
    return 1


if __name__ == "__main__":
    sys.exit(main())
