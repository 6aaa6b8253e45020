import subprocess
import sys

import detloss
import detloss.losses
import detloss.match
import detloss.postprocess
from detloss._optional import optional_module


def test_every_exported_name_exists_and_all_is_sorted_and_unique():
    for module in (detloss, detloss.losses, detloss.match, detloss.postprocess):
        names = module.__all__
        assert len(names) == len(set(names))
        for name in names:
            assert getattr(module, name) is not None, f"{module.__name__}.{name}"


def test_design_contract_names_are_public():
    for name in (
        "sigmoid_focal_loss",
        "giou_loss",
        "diou_loss",
        "ciou_loss",
        "iou_loss",
        "negative_prob",
        "DetectionLoss",
        "MultiBoxLoss",
        "PointLoss",
        "gaussian_focal_loss",
        "CenterNetLoss",
        "ap_loss",
        "APLoss",
    ):
        assert hasattr(detloss.losses, name)
    for name in (
        "Matching",
        "hungarian",
        "max_iou",
        "closest_target",
        "closest_prediction",
        "sinkhorn",
        "HungarianMatcher",
        "SinkhornMatcher",
    ):
        assert hasattr(detloss.match, name)
    for name in ("nms", "batched_nms", "ssd_detect", "centernet_decode", "decode_points"):
        assert hasattr(detloss.postprocess, name)


def test_optional_dependencies_load_on_first_use():
    """Importing detloss does not import Numba (seconds of start-up); a module whose
    dependency is missing reads as None. (Triton is not checked: torch imports it itself
    where it is installed.)"""
    code = "import sys, detloss, detloss.losses, detloss.match; print('numba' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    assert optional_module("detloss.no_such_module") is None
