"""Command line: ``detloss demo | train | eval | bench``.

* ``detloss demo``: generate the synthetic sets, train both reference detectors, evaluate
  on held-out images, write ``runs/demo/`` (see :mod:`detloss.demo`).
* ``detloss train --task points|boxes --data DIR``: train on a folder of splits (see
  :mod:`detloss.train`); under ``torchrun`` it runs DDP.
* ``detloss eval --checkpoint PATH --data DIR``: the metrics of a checkpoint on a split.
* ``detloss compare``: one SSD trained under four objectives, side by side (see
  :mod:`detloss.compare`).
* ``detloss bench``: the benchmark suite.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import fields

__all__ = ["build_parser", "main"]


def _add_train_options(p: argparse.ArgumentParser) -> None:
    from .train import TrainConfig

    d = {f.name: f.default for f in fields(TrainConfig)}
    p.add_argument("--task", choices=("points", "boxes"), required=True)
    p.add_argument(
        "--data",
        required=True,
        help="folder with <split>/images/ and <split>/points.json (points) or "
        "<split>/instances.json (COCO boxes)",
    )
    p.add_argument("--out", default=d["out"], help="checkpoints and logs (default: %(default)s)")
    p.add_argument("--train-split", default=d["train_split"])
    p.add_argument("--val-split", default=d["val_split"])
    p.add_argument("--epochs", type=int, default=d["epochs"])
    p.add_argument("--batch-size", type=int, default=d["batch_size"])
    p.add_argument("--lr", type=float, default=d["lr"], help="one-cycle peak learning rate")
    p.add_argument("--weight-decay", type=float, default=d["weight_decay"])
    p.add_argument("--model", choices=("tiny", "full"), default=d["model"])
    p.add_argument(
        "--backbone-weights",
        help="local VGG16-BN weights file for the full P2PNet (never downloaded)",
    )
    p.add_argument(
        "--freeze-epochs",
        type=int,
        default=d["freeze_epochs"],
        help="two-stage fine-tuning: epochs with the backbone frozen (points)",
    )
    p.add_argument("--device", default=d["device"], help="cpu (default), cuda, cuda:1, ...")
    p.add_argument("--no-amp", action="store_true", help="disable mixed precision on CUDA")
    p.add_argument("--seed", type=int, default=d["seed"])
    p.add_argument("--workers", type=int, default=d["workers"], help="DataLoader workers")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument(
        "--resume",
        nargs="?",
        const="auto",
        default=None,
        help="resume from a checkpoint (no value: OUT/last.pt)",
    )
    p.add_argument("--max-train-images", type=int, default=None)
    p.add_argument("--max-val-images", type=int, default=None)
    p.add_argument("--no-flip", action="store_true", help="no random horizontal flips")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--head", choices=("sigmoid", "softmax"), default=d["head"])
    p.add_argument("--loc-weight", type=float, default=d["loc_weight"])
    p.add_argument("--neg-weight", type=float, default=d["neg_weight"])
    p.add_argument("--tau", type=float, default=d["tau"])
    p.add_argument("--point-threshold", type=float, default=d["point_threshold"])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="detloss",
        description="Training objectives for object and point detectors.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser(
        "demo",
        help="synthetic data, train P2PNet and CenterNet, evaluate, write runs/demo/",
        description="Generate the synthetic sets (if missing), train the tiny P2PNet with "
        "PointLoss and the tiny CenterNet with CenterNetLoss on the CPU, evaluate on "
        "held-out images and write metrics.json and pictures.",
    )
    demo.add_argument("--data", default="data/demo", help="data folder (default: %(default)s)")
    demo.add_argument("--out", default="runs/demo", help="output folder (default: %(default)s)")
    demo.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    demo.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")
    demo.add_argument("--no-plots", action="store_true", help="skip the pictures")

    train = sub.add_parser(
        "train",
        help="train a reference detector on your data",
        description="Train P2PNet (--task points) or the CenterNet-style detector "
        "(--task boxes). Launch with torchrun for DDP.",
    )
    _add_train_options(train)

    ev = sub.add_parser("eval", help="evaluate a checkpoint on a split")
    ev.add_argument("--checkpoint", required=True, help="a last.pt / best.pt from train")
    ev.add_argument("--data", required=True, help="data folder (as for train)")
    ev.add_argument("--split", default="test", help="split folder (default: %(default)s)")
    ev.add_argument("--device", default="cpu")
    ev.add_argument("--batch-size", type=int, default=16)

    sub.add_parser(
        "bench", help="run the benchmarks (options: detloss bench --help)", add_help=False
    )
    from .data.commands import add_data_parser

    add_data_parser(sub)
    from .compare import add_compare_parser

    add_compare_parser(sub)
    return parser


def _train(args: argparse.Namespace) -> int:
    from .train import TrainConfig, train

    cfg = TrainConfig(
        task=args.task,
        data=args.data,
        out=args.out,
        train_split=args.train_split,
        val_split=args.val_split,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        model=args.model,
        backbone_weights=args.backbone_weights,
        freeze_epochs=args.freeze_epochs,
        device=args.device,
        amp=not args.no_amp,
        seed=args.seed,
        workers=args.workers,
        threads=args.threads,
        resume=args.resume,
        max_train_images=args.max_train_images,
        max_val_images=args.max_val_images,
        flip=not args.no_flip,
        progress=not args.no_progress,
        head=args.head,
        loc_weight=args.loc_weight,
        neg_weight=args.neg_weight,
        tau=args.tau,
        point_threshold=args.point_threshold,
    )
    result = train(cfg)
    print(json.dumps(result["metrics"], indent=1))
    return 0


def _eval(args: argparse.Namespace) -> int:
    import torch
    from torch.utils.data import DataLoader

    from .data.collate import collate_detection
    from .train import evaluate, load_checkpoint, load_dataset

    model, task, _ = load_checkpoint(args.checkpoint, args.device)
    ds = load_dataset(task.name, args.data, args.split)
    loader = DataLoader(ds, batch_size=args.batch_size, collate_fn=collate_detection)
    metrics = evaluate(model, task, loader, torch.device(args.device))
    print(json.dumps(metrics, indent=1))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "bench":
        # Imported only here: the runner and its benchmarks are not needed otherwise.
        from .benchrunner import main as bench_main

        return int(bench_main(argv[1:]) or 0)
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        from .demo import run_demo

        run_demo(
            args.data,
            args.out,
            quick=args.quick,
            threads=args.threads,
            progress=not args.no_progress,
            plots=not args.no_plots,
        )
        return 0
    if args.command == "train":
        return _train(args)
    if args.command == "eval":
        return _eval(args)
    if args.command == "compare":
        from .compare import run_compare_command

        return run_compare_command(args)
    if args.command == "data":
        from .data.commands import run_data

        return run_data(args)
    return 1  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":
    sys.exit(main())
