"""The settings of a training run (:class:`TrainConfig`, the ``detloss train`` options)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path

__all__ = ["BOX_DETECTORS", "DEFAULT_DIST_TIMEOUT", "RUN_FILES", "TASKS", "TrainConfig"]

TASKS = ("points", "boxes")
#: The detectors of the ``boxes`` task: the CenterNet-style one (the default) and the
#: SSD-style one, trained under an objective of
#: :data:`~detloss.app.training.objectives.OBJECTIVES`.
BOX_DETECTORS = ("centernet", "ssd")
#: The files a run writes into its output folder (``--overwrite`` removes these only).
RUN_FILES = (
    "last.pt",
    "best.pt",
    "history.json",
    "metrics.json",
    "metrics.csv",
    "loss_curves.png",
    "val_predictions.png",
)
#: Seconds a collective may wait for the other ranks before the job ends (``--dist-timeout``).
DEFAULT_DIST_TIMEOUT = 600.0


@dataclass
class TrainConfig:
    """Settings of :func:`train` (the ``detloss train`` options).

    Attributes:
        task: ``"points"`` or ``"boxes"``.
        detector: the ``boxes`` task's detector, ``"centernet"`` or ``"ssd"``.
        objective: the SSD's training objective, one of
            :data:`~detloss.app.training.objectives.OBJECTIVES` (None: ``"multibox"``);
            only with ``detector="ssd"``.
        image_size: the SSD's square input side in pixels: every image is resized to it
            (and its detections scaled back).
        data: the data folder, in any format of :data:`detloss.app.data.FORMATS`.
        format: its format's name; None detects it from the layout
            (:func:`detloss.app.data.detect_format`). The format's kind (points or boxes) must
            be ``task``'s.
        out: output directory (checkpoints, ``history.json``, ``metrics.json``,
            ``metrics.csv``, pictures).
        train_split, val_split: split names (the format's, e.g. ``trainval`` for VOC).
        val_fraction: carve the validation set from ``train_split`` (this fraction of its
            images, drawn by ``seed``) instead of reading ``val_split``.
        epochs, batch_size, lr, weight_decay: optimisation; ``lr`` is the one-cycle peak.
        warmup: fraction of the steps spent warming the learning rate up.
        model: ``"tiny"`` (few channels, CPU-friendly) or ``"full"`` (VGG16-BN P2PNet /
            wider CenterNet).
        backbone_weights: local file of pretrained VGG16-BN weights (points, full model).
        freeze_epochs: two-stage fine-tuning, backbone frozen for this many epochs then
            every learning rate times ``finetune_lr_scale`` (points only; 0 = off).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``... (under DDP each rank uses its
            ``LOCAL_RANK`` GPU).
        amp: mixed precision when the device is CUDA (ignored on CPU).
        seed: seeds Python, numpy and torch (rank-offset under DDP) and the loader.
        workers: DataLoader worker processes.
        threads: ``torch.set_num_threads`` (None leaves torch's default).
        resume: checkpoint to resume from (``"auto"``: ``out/last.pt`` if it exists). An
            unreadable checkpoint is skipped with a warning for the newest intact one in
            its folder (``last.pt``, ``best.pt``). A finished run resumed with a larger
            ``epochs`` is extended.
        overwrite: allow a new run (``resume`` None) into an ``out`` folder that is not
            empty; the previous run's files (:data:`RUN_FILES`) are removed first. Without
            it such a run is refused, so a good ``best.pt`` is never replaced by a worse
            one from another run.
        skip_nonfinite: skip a step whose loss or gradient is not finite (counted and
            reported) instead of stopping with :class:`NonFiniteLossError`.
        dist_timeout: seconds a collective waits for the other ranks under DDP before the
            job ends with :class:`PeerTimeoutError` (rank 0's evaluation must fit in it).
        max_train_images, max_val_images: use only the first images of a split.
        flip: random horizontal flips during training.
        progress: show the tqdm bar.
        eval_every: evaluate every this many epochs (and after the last).
        head, tau, neg_weight, loc_weight: P2PNet head and :class:`PointLoss` settings.
            The defaults (tau 0.2, loc_weight 0.05) differ from P2PNet's (0.05, 2e-4):
            short trainings of small models localise far better with a matching that
            weighs distance more and a stronger localisation term.
        reg_lr_scale: learning-rate factor of P2PNet's regression head (its offsets are
            scaled by gamma = 100 pixels, so full-rate Adam steps move proposals too far).
        point_threshold: distance (pixels) of the point F1.
        score_threshold: probability above which a proposal counts (P2PNet: 0.5).
        size_weight, offset_weight: :class:`CenterNetLoss` weights.
        max_detections: detections kept per image for box AP.
        plots: write ``loss_curves.png`` and ``val_predictions.png`` (needs matplotlib;
            skipped with a warning without it).
        tensorboard: log the losses, learning rate and metrics to ``out/tensorboard``
            (needs the ``tensorboard`` package).
    """

    task: str = "points"
    detector: str = "centernet"
    objective: str | None = None
    image_size: int = 128
    data: str | Path = "data"
    format: str | None = None
    out: str | Path = "runs/train"
    train_split: str = "train"
    val_split: str = "val"
    val_fraction: float | None = None
    epochs: int = 20
    batch_size: int = 8
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup: float = 0.1
    grad_clip: float = 10.0
    model: str = "tiny"
    backbone_weights: str | None = None
    freeze_epochs: int = 0
    finetune_lr_scale: float = 0.1
    device: str = "cpu"
    amp: bool = True
    seed: int = 0
    workers: int = 0
    threads: int | None = None
    resume: str | None = None
    overwrite: bool = False
    skip_nonfinite: bool = False
    dist_timeout: float = DEFAULT_DIST_TIMEOUT
    max_train_images: int | None = None
    max_val_images: int | None = None
    flip: bool = True
    progress: bool = True
    eval_every: int = 1
    head: str = "sigmoid"
    reg_lr_scale: float = 0.1
    tau: float = 0.2
    neg_weight: float = 0.5
    loc_weight: float = 0.05
    point_threshold: float = 4.0
    score_threshold: float = 0.5
    size_weight: float = 0.1
    offset_weight: float = 1.0
    max_detections: int = 100
    plots: bool = True
    tensorboard: bool = False

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        if self.model not in ("tiny", "full"):
            raise ValueError(f"model must be 'tiny' or 'full', got {self.model!r}")
        self._check_detector()
        for name in ("epochs", "batch_size", "eval_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.warmup < 1:
            raise ValueError(f"warmup must be in [0, 1), got {self.warmup}")
        if not self.dist_timeout > 0:
            raise ValueError(f"dist_timeout must be > 0 seconds, got {self.dist_timeout}")
        if self.val_fraction is not None and not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.format is not None:
            from ..data.formats import FORMATS

            if self.format not in FORMATS:
                raise ValueError(
                    f"format must be one of {sorted(FORMATS)} (or None: detected), "
                    f"got {self.format!r}"
                )

    def _check_detector(self) -> None:
        from .objectives import OBJECTIVES

        if self.detector not in BOX_DETECTORS:
            raise ValueError(f"detector must be one of {BOX_DETECTORS}, got {self.detector!r}")
        if self.detector == "ssd":
            if self.task != "boxes":
                raise ValueError(
                    f"detector: --detector ssd detects boxes; --task {self.task} trains "
                    "P2PNet (drop --detector, or use --task boxes)"
                )
            if self.model != "tiny":
                raise ValueError(
                    f"model: the SSD detector has one size, 'tiny'; got --model {self.model}"
                )
            if self.objective is not None and self.objective not in OBJECTIVES:
                raise ValueError(
                    f"objective must be one of {OBJECTIVES} (or None: multibox), "
                    f"got {self.objective!r}"
                )
            if isinstance(self.image_size, bool) or int(self.image_size) < 16:
                raise ValueError(f"image_size must be an int >= 16, got {self.image_size!r}")
        elif self.objective is not None:
            raise ValueError(
                f"objective: --objective {self.objective} needs --task boxes --detector ssd "
                "(P2PNet and CenterNet have one loss each)"
            )

    @classmethod
    def from_dict(cls, values: Mapping[str, object]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})
