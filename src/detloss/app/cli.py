"""Command line: ``detloss demo | train | eval | predict | compare | data | bench``.

* ``detloss demo``: generate the synthetic sets, train both reference detectors, evaluate
  on held-out images, write ``runs/demo/`` (see :mod:`detloss.app.demo`).
* ``detloss train --task points|boxes [--detector ssd --objective NAME] --data DIR``:
  train on a folder of splits (see :mod:`detloss.app.training`); under ``torchrun`` it
  runs DDP.
* ``detloss eval --checkpoint PATH --data DIR``: the metrics of a checkpoint on a split.
* ``detloss predict --checkpoint PATH --images DIR_OR_FILES --out FILE.json``: detections
  as COCO results (boxes) or a points JSON, and optionally pictures.
* ``detloss compare``: one SSD trained under four objectives, side by side (see
  :mod:`detloss.app.compare`).
* ``detloss data check | convert``: inspect or convert a data folder (see
  :mod:`detloss.app.data.commands`).
* ``detloss bench``: the benchmark suite.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

__all__ = ["build_parser", "main"]

TASKS = ("points", "boxes")
#: The names of detloss.app.data.FORMATS, written here so that --help needs no torch import
#: (a test checks that the two agree).
FORMAT_NAMES = (
    "points-json",
    "coco",
    "shanghaitech",
    "ucf-qnrf",
    "jhu-crowd",
    "nwpu-crowd",
    "yolo",
    "voc",
)
#: detloss.app.training.objectives.OBJECTIVES and config.BOX_DETECTORS, written here for
#: the same reason (a test checks that they agree).
OBJECTIVE_NAMES = ("multibox", "hungarian", "sinkhorn", "ap_loss")
BOX_DETECTORS = ("centernet", "ssd")


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help ends with its default; required options have none to show."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.required:
            return action.help
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """argparse with defaults in every help line and one-line usage errors."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("formatter_class", _DefaultsFormatter)
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def error(self, message: str) -> NoReturn:
        if _rank() == 0:
            print(
                f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)",
                file=sys.stderr,
            )
        sys.exit(2)


def _rank() -> int:
    """This process's rank under torchrun (0 otherwise): only rank 0 speaks."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def _add_debug(p: argparse.ArgumentParser) -> None:
    p.add_argument("--debug", action="store_true", help="show the full traceback of an error")


def _add_format(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--format",
        choices=FORMAT_NAMES,
        default=None,
        help="layout of --data (None: detected from the folder, and printed)",
    )


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid fraction: {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1), got {text}")
    return value


def _add_val_fraction(p: argparse.ArgumentParser, help: str) -> None:
    p.add_argument("--val-fraction", type=_fraction, default=None, help=help)


def _add_train_options(p: argparse.ArgumentParser) -> None:
    # The defaults are TrainConfig's, written here so that --help needs no torch import
    # (a test checks that the two agree).
    p.add_argument("--task", choices=TASKS, required=True, help="what to train")
    p.add_argument(
        "--detector",
        choices=BOX_DETECTORS,
        default="centernet",
        help="the box detector (--task boxes): the CenterNet-style one with CenterNetLoss, "
        "or the SSD-style one under --objective",
    )
    p.add_argument(
        "--objective",
        choices=OBJECTIVE_NAMES,
        default=None,
        help="the SSD's training objective, as detloss compare trains it (--detector ssd; "
        "None: multibox)",
    )
    p.add_argument(
        "--image-size",
        type=int,
        default=128,
        help="the SSD's square input side: images are resized to it (--detector ssd)",
    )
    p.add_argument(
        "--data",
        required=True,
        help="data folder in any --format: our points JSON, COCO, ShanghaiTech, UCF-QNRF, "
        "JHU-Crowd++, NWPU-Crowd, YOLO, Pascal VOC (see docs/data.md)",
    )
    _add_format(p)
    p.add_argument(
        "--out",
        default="runs/train",
        help="checkpoints and logs; must be empty unless --resume or --overwrite",
    )
    p.add_argument("--train-split", default="train", help="training split")
    p.add_argument("--val-split", default="val", help="validation split")
    _add_val_fraction(
        p,
        "carve the validation set from the training split (this fraction of its images, "
        "drawn by --seed) instead of reading --val-split",
    )
    p.add_argument("--epochs", type=int, default=20, help="epochs (with --resume: extends)")
    p.add_argument("--batch-size", type=int, default=8, help="images per step and process")
    p.add_argument("--lr", type=float, default=2e-3, help="one-cycle peak learning rate")
    p.add_argument("--weight-decay", type=float, default=1e-4, help="AdamW weight decay")
    p.add_argument("--model", choices=("tiny", "full"), default="tiny", help="model width")
    p.add_argument(
        "--backbone-weights",
        default=None,
        help="local VGG16-BN weights file for the full P2PNet (never downloaded)",
    )
    p.add_argument(
        "--freeze-epochs",
        type=int,
        default=0,
        help="two-stage fine-tuning: epochs with the backbone frozen (points)",
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--no-amp", action="store_true", help="disable mixed precision on CUDA")
    p.add_argument("--seed", type=int, default=0, help="seed of every random generator")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    p.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (None leaves torch's)"
    )
    p.add_argument(
        "--resume",
        nargs="?",
        const="auto",
        default=None,
        help="continue a run from a checkpoint (no value: OUT/last.pt); an unreadable one "
        "falls back to the newest intact checkpoint beside it, with a warning",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="start a new run in a non-empty --out, replacing its last.pt, best.pt, "
        "history.json and metrics.json",
    )
    p.add_argument(
        "--skip-nonfinite",
        action="store_true",
        help="skip steps whose loss or gradient is not finite (counted) instead of stopping",
    )
    p.add_argument(
        "--dist-timeout",
        type=float,
        default=600.0,
        help="seconds a DDP collective waits for the other ranks before the job ends "
        "(rank 0's evaluation must fit in it)",
    )
    p.add_argument(
        "--max-train-images", type=int, default=None, help="use only the first N train images"
    )
    p.add_argument(
        "--max-val-images", type=int, default=None, help="use only the first N val images"
    )
    p.add_argument("--no-flip", action="store_true", help="no random horizontal flips")
    p.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bar (also off when stderr is not a terminal)",
    )
    p.add_argument("--head", choices=("sigmoid", "softmax"), default="sigmoid", help="P2PNet head")
    p.add_argument("--loc-weight", type=float, default=0.05, help="PointLoss localisation weight")
    p.add_argument("--neg-weight", type=float, default=0.5, help="PointLoss background weight")
    p.add_argument("--tau", type=float, default=0.2, help="PointLoss matching distance weight")
    p.add_argument(
        "--point-threshold", type=float, default=4.0, help="distance (px) of the point F1"
    )
    p.add_argument(
        "--no-plots",
        action="store_true",
        help="no loss_curves.png / val_predictions.png (metrics.csv is always written)",
    )
    p.add_argument(
        "--tensorboard",
        action="store_true",
        help="log losses, learning rate and metrics to OUT/tensorboard (needs tensorboard)",
    )
    _add_debug(p)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="detloss",
        description="Training objectives for object and point detectors.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser(
        "demo",
        help="synthetic data, train P2PNet, CenterNet and the SSD objectives, evaluate, "
        "write runs/demo/",
        description="Generate the synthetic sets (if missing), train the tiny P2PNet with "
        "PointLoss and the tiny CenterNet with CenterNetLoss on the CPU, evaluate on "
        "held-out images and write metrics.json and pictures. A rerun replaces the "
        "previous results in --out.",
    )
    demo.add_argument("--data", default="data/demo", help="data folder")
    demo.add_argument("--out", default="runs/demo", help="output folder (replaced)")
    demo.add_argument(
        "--quick",
        action="store_true",
        help="toy sizes: a smoke run of the pipeline, not meant to meet the goals",
    )
    demo.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")
    demo.add_argument("--no-plots", action="store_true", help="skip the pictures")
    _add_debug(demo)

    train = sub.add_parser(
        "train",
        help="train a reference detector on your data",
        description="Train P2PNet (--task points), the CenterNet-style detector (--task "
        "boxes) or the SSD-style detector under one objective of detloss compare (--task boxes "
        "--detector ssd --objective NAME). Launch with torchrun for DDP.",
    )
    _add_train_options(train)

    ev = sub.add_parser(
        "eval",
        help="evaluate a checkpoint on a split",
        description="Print the metrics of a checkpoint on a split as JSON.",
    )
    ev.add_argument("--checkpoint", required=True, help="a last.pt / best.pt from train")
    ev.add_argument("--data", required=True, help="data folder (as for train)")
    _add_format(ev)
    ev.add_argument("--split", default="test", help="split to evaluate")
    _add_val_fraction(
        ev,
        "evaluate the validation part carved from --split with this fraction and --seed, "
        "as train --val-fraction carved it",
    )
    ev.add_argument("--seed", type=int, default=0, help="seed of --val-fraction's draw")
    ev.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    ev.add_argument("--batch-size", type=int, default=16, help="images per batch")
    _add_debug(ev)

    pr = sub.add_parser(
        "predict",
        help="detect on images with a trained checkpoint",
        description="Write the detections of a checkpoint on images: COCO results JSON "
        "(image_id, category_id of the training data, bbox as x, y, w, h, score) for a box "
        "detector, a points JSON (points and scores per image) for P2PNet.",
    )
    pr.add_argument("--checkpoint", required=True, help="a last.pt / best.pt from train")
    pr.add_argument(
        "--images", required=True, nargs="+", help="image files and/or folders of images"
    )
    pr.add_argument("--out", required=True, help="the JSON file to write")
    pr.add_argument(
        "--score-threshold",
        type=float,
        default=None,
        help="keep detections above it (None: points use the checkpoint's threshold, "
        "boxes keep every positive peak, as COCO evaluation expects)",
    )
    pr.add_argument(
        "--coco-annotations",
        default=None,
        help="a COCO annotation file whose image ids the results take (matched by file "
        "name); None: ids 1, 2, ... in the order of the images",
    )
    pr.add_argument(
        "--draw",
        default=None,
        help="folder for one picture per image (boxes drawn above --score-threshold, or 0.3)",
    )
    pr.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    pr.add_argument("--batch-size", type=int, default=8, help="images per forward pass")
    _add_debug(pr)

    sub.add_parser(
        "bench", help="run the benchmarks (options: detloss bench --help)", add_help=False
    )
    from .data.commands import add_data_parser

    add_data_parser(sub)
    from .compare import add_compare_parser

    add_compare_parser(sub)
    return parser


def _train(args: argparse.Namespace) -> int:
    from dataclasses import fields

    from .training.config import TrainConfig
    from .training.formatting import json_safe
    from .training.loop import train

    # The options are TrainConfig's fields by name; the --no-* switches are negated.
    options = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if hasattr(args, f.name)}
    cfg = TrainConfig(
        **options,
        amp=not args.no_amp,
        flip=not args.no_flip,
        progress=not args.no_progress,
        plots=not args.no_plots,
    )
    result = train(cfg)
    if _rank() == 0:
        print(json.dumps(json_safe(result["metrics"]), indent=1))
    return 0


def _eval(args: argparse.Namespace) -> int:

    import torch
    from torch.utils.data import DataLoader

    from .data.collate import collate_detection
    from .data.formats import split_dataset
    from .training.checkpoints import load_checkpoint
    from .training.data import open_task_split, with_input_size
    from .training.evaluation import evaluate
    from .training.formatting import json_safe

    model, task, _ = load_checkpoint(args.checkpoint, args.device)
    who = f"checkpoint {args.checkpoint!r} is a {task.name} model trained on"
    ds, fmt = open_task_split(task.name, args.data, args.split, args.format, who=who)
    if args.val_fraction is not None:
        _, ds = split_dataset(ds, args.val_fraction, args.seed)  # type: ignore[assignment]
    print(
        f"[eval] format {fmt}, {args.split} {len(ds)} images, checkpoint {args.checkpoint}",
        file=sys.stderr,
    )
    ds = with_input_size(ds, task.input_size)
    loader = DataLoader(ds, batch_size=args.batch_size, collate_fn=collate_detection)
    metrics = evaluate(model, task, loader, torch.device(args.device))
    print(json.dumps(json_safe(metrics), indent=1))
    return 0


def _predict(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .training.checkpoints import load_checkpoint
    from .training.evaluation import list_images, predict, predictions_json
    from .training.formatting import write_text_atomic

    model, task, ckpt = load_checkpoint(args.checkpoint, args.device)
    files = list_images(args.images)
    names = _display_names(files, args.images)
    image_ids = None
    if args.coco_annotations is not None:
        image_ids = _coco_image_ids(Path(args.coco_annotations), files)
    preds = predict(
        model,
        task,
        files,
        args.device,
        score_threshold=args.score_threshold,
        batch_size=args.batch_size,
    )
    out = Path(args.out)
    if out.is_dir():
        raise IsADirectoryError(f"out: {args.out!r} is a folder; expected a .json file name")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, json.dumps(predictions_json(preds, names, ckpt, image_ids)))  # type: ignore[arg-type]
    found = sum(len(p["scores"]) for p in preds)  # type: ignore[index, union-attr]
    what = "points" if task.name == "points" else "boxes"
    print(f"[predict] {len(files)} images, {found} {what}: {out}")
    if args.draw is not None:
        from .plot import draw_predictions

        categories = ckpt.get("categories") or [
            str(i) for i in range(int(ckpt.get("num_classes", 1)))
        ]
        drawn_above = 0.3 if args.score_threshold is None else args.score_threshold
        written = draw_predictions(
            files,
            preds,  # type: ignore[arg-type]
            args.draw,
            names=names,
            categories=categories,
            score_threshold=drawn_above,
        )
        print(f"[predict] {len(written)} pictures in {args.draw}")
    return 0


def _display_names(files: Sequence[object], sources: Sequence[str]) -> list[str]:
    """File names relative to the folder given (the file's own name for files given one
    by one), as the results JSON names them."""
    from pathlib import Path

    folders = [Path(s) for s in sources if Path(s).is_dir()]
    names = []
    for f in files:
        path = Path(str(f))
        folder = next((d for d in folders if path.parent == d), None)
        names.append(path.relative_to(folder).as_posix() if folder else path.name)
    return names


def _coco_image_ids(annotations: object, files: Sequence[object]) -> list[int]:
    """The ids a COCO annotation file gives the images (by file name)."""
    from pathlib import Path

    from .data._common import read_json

    data = read_json(Path(str(annotations)))
    records = data.get("images") if isinstance(data, dict) else None
    if not isinstance(records, list):
        raise ValueError(f"coco-annotations: {annotations} has no 'images' list")
    by_name: dict[str, int] = {}
    for rec in records:
        if isinstance(rec, dict) and "file_name" in rec and "id" in rec:
            by_name[Path(str(rec["file_name"])).name] = rec["id"]
    ids = []
    for f in files:
        name = Path(str(f)).name
        if name not in by_name:
            raise ValueError(
                f"coco-annotations: {annotations} lists no image named {name!r}; expected "
                "every predicted image in its 'images'"
            )
        ids.append(by_name[name])
    return ids


def _demo(args: argparse.Namespace) -> int:
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


def _compare(args: argparse.Namespace) -> int:
    from .compare import run_compare_command

    return run_compare_command(args)


def _data(args: argparse.Namespace) -> int:
    from .data.commands import run_data

    return run_data(args)


def _user_error_status(exc: BaseException) -> int | None:
    """The exit status of an error to report in one line; None for a bug (traceback)."""
    from .training.ddp import PeerTimeoutError
    from .training.loop import NonFiniteLossError

    if isinstance(exc, PeerTimeoutError):
        return 1
    if isinstance(exc, ValueError | OSError | NonFiniteLossError):
        return 2
    return None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "bench":
        # Imported only here: the runner and its benchmarks are not needed otherwise.
        from .benchrunner import main as bench_main

        return int(bench_main(argv[1:]) or 0)
    args = build_parser().parse_args(argv)
    commands = {
        "demo": _demo,
        "train": _train,
        "eval": _eval,
        "predict": _predict,
        "data": _data,
        "compare": _compare,
    }
    try:
        return commands[args.command](args)
    except Exception as exc:
        status = _user_error_status(exc)
        if status is None or getattr(args, "debug", False):
            raise
        # Every rank fails alike on a user error: rank 0 says it once. A timeout is
        # reported by whichever rank saw it.
        if _rank() == 0 or status == 1:
            message = " ".join(str(exc).split()) or type(exc).__name__
            print(f"detloss {args.command}: error: {message}", file=sys.stderr)
        return status


if __name__ == "__main__":
    sys.exit(main())
