"""A small, complete trainer for the reference detectors: the public names in one place.

The trainer lives in :mod:`detloss.app.training`, one concept per module; this module
re-exports what users import (``from detloss.app.train import train, TrainConfig``).

Data: any folder :func:`detloss.app.data.open_train_val` reads (our points JSON, COCO,
ShanghaiTech, UCF-QNRF, JHU-Crowd++, NWPU-Crowd, YOLO, Pascal VOC), its format detected
from the layout unless named (``format``); without a validation split, ``val_fraction``
carves one from the training split.

Beside the checkpoints a run writes ``metrics.csv`` (one row per epoch),
``loss_curves.png`` (after every evaluation) and ``val_predictions.png`` (a few validation
images, each time the best checkpoint improves), and logs to TensorBoard on request.
"""

from __future__ import annotations

from .training.checkpoints import (
    CheckpointError,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from .training.config import DEFAULT_DIST_TIMEOUT, RUN_FILES, TASKS, TrainConfig
from .training.data import ANNOTATION_FILES, load_dataset, open_training_data
from .training.ddp import PeerTimeoutError
from .training.evaluation import (
    ImageSource,
    evaluate,
    list_images,
    predict,
    predict_loader,
    predictions_json,
    read_image,
)
from .training.logs import PLOTTED_VAL_IMAGES
from .training.loop import NonFiniteLossError, train
from .training.run import seed_everything
from .training.tasks import BoxTask, PointTask, SsdTask, Task, build_task

__all__ = [
    "ANNOTATION_FILES",
    "DEFAULT_DIST_TIMEOUT",
    "PLOTTED_VAL_IMAGES",
    "RUN_FILES",
    "TASKS",
    "BoxTask",
    "CheckpointError",
    "ImageSource",
    "NonFiniteLossError",
    "PeerTimeoutError",
    "PointTask",
    "SsdTask",
    "Task",
    "TrainConfig",
    "build_task",
    "evaluate",
    "list_images",
    "load_checkpoint",
    "load_dataset",
    "open_training_data",
    "predict",
    "predict_loader",
    "predictions_json",
    "read_checkpoint",
    "read_image",
    "save_checkpoint",
    "seed_everything",
    "train",
]
