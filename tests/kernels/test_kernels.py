"""The one dispatch of the fast paths (``detloss._kernels``) and its one switch."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import detloss._kernels as kernels
from detloss._kernels import FAST_PATHS, fast_path, fast_path_enabled, reference_path

HAS_NUMBA = importlib.util.find_spec("numba") is not None


def test_every_registered_module_exists():
    folder = Path(kernels.__file__).parent
    for name, devices in FAST_PATHS.items():
        for device, module in devices.items():
            assert device in ("any", "cpu", "cuda", "mps", "xpu"), (name, device)
            assert module is None or (folder / f"{module}.py").is_file(), (name, module)


def test_unknown_name_is_an_error_listing_the_known_ones():
    with pytest.raises(KeyError, match=r"no fast path named 'nope'.*'nms'"):
        fast_path("nope", "cpu")


def test_a_device_without_a_fast_path_gets_none():
    assert fast_path("nms", "meta") is None
    assert not fast_path_enabled("max_iou_sparse", torch.device("meta"))
    assert fast_path_enabled("focal_backward", "meta")  # a torch strategy on every device


@pytest.mark.skipif(not HAS_NUMBA, reason="needs numba")
def test_reference_path_forces_every_fast_path_off_and_nests():
    assert fast_path("nms", "cpu") is importlib.import_module("detloss._kernels.nms_cpu")
    with reference_path():
        assert fast_path("nms", "cpu") is None
        assert not fast_path_enabled("focal_backward", "cpu")
        with reference_path(False):
            assert fast_path("nms", "cpu") is not None
        assert fast_path("nms", "cpu") is None
    assert fast_path("nms", "cpu") is not None


def test_environment_variable_forces_the_reference_path_for_the_process():
    code = (
        "from detloss._kernels import fast_path, fast_path_enabled\n"
        "print(fast_path('nms', 'cpu'), fast_path_enabled('max_iou_sparse', 'cpu'))"
    )
    env = {"DETLOSS_REFERENCE_PATH": "1", "PATH": ""}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    assert out.stdout.split() == ["None", "False"]
