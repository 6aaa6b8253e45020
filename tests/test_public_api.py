import importlib
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


HEAVY_MODULES = (
    "scipy",
    "numba",
    "torch._dynamo",
    "detloss.app.models",
    "detloss.app.data",
    "PIL",
    "matplotlib",
)


def _loaded_after(code: str) -> list[str]:
    """The heavy modules present in ``sys.modules`` after ``code`` runs in a fresh
    interpreter."""
    probe = (
        "import sys\n"
        f"{code}\n"
        f"heavy = {HEAVY_MODULES!r}\n"
        "print(sorted(h for h in heavy if any(m == h or m.startswith(h + '.') "
        "for m in sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return eval(out.stdout.strip().splitlines()[-1])


def test_import_detloss_loads_no_heavy_module():
    """scipy, Numba, torch._dynamo, the models and the data readers load on first use:
    ``import detloss`` (and ``detloss --help``) cost about what ``import torch`` costs."""
    assert _loaded_after("import detloss, detloss.losses, detloss.match") == []
    help_code = (
        "import contextlib, io\nfrom detloss.app.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "    main(['--help'])"
    )
    # ``--help`` describes ``train``'s options, whose defaults live with the trainer
    # (which imports the models and the data readers), but never scipy, Numba or Dynamo.
    assert not {"scipy", "numba", "torch._dynamo"} & set(_loaded_after(help_code))


def test_lazy_subpackages_load_on_attribute_access():
    code = "import detloss\nmodels = detloss.models\ndata = detloss.data\nprint(models.CenterNet)"
    assert {"detloss.app.models", "detloss.app.data"} <= set(_loaded_after(code))
    assert "models" in dir(detloss) and "data" in dir(detloss)
    assert detloss.models is importlib.import_module("detloss.app.models")
    assert detloss.data is importlib.import_module("detloss.app.data")
    try:
        detloss.no_such_name  # noqa: B018
    except AttributeError as err:
        assert "no_such_name" in str(err)
    else:
        raise AssertionError("detloss.no_such_name did not raise AttributeError")


def test_host_step_without_dynamo_is_the_plain_function_and_is_disabled_once_it_loads():
    code = (
        "import sys, torch\n"
        "from detloss.match import hungarian\n"
        "m = hungarian(torch.tensor([[[1.0, 0.0], [0.0, 1.0]]]))\n"
        "assert m.pred_to_target.tolist() == [[1, 0]]\n"
        "assert 'torch._dynamo' not in sys.modules\n"
        "step = lambda c: hungarian(c).pred_to_target + 0\n"
        "compiled = torch.compile(step, backend='eager')\n"
        "assert compiled(torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])).tolist() == [[1, 0]]\n"
        "print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ok"
