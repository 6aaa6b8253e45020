"""Run a file of kernel tests under Triton's interpreter, in a child process (test helper).

The interpreter runs ``@triton.jit`` kernels on CPU tensors with NumPy, so the kernels'
logic is tested on machines without a GPU. Triton fixes interpreted-or-compiled for its
own library functions when it is first imported, and other tests (or torch.compile)
import it compiled, so the interpreted tests run in a fresh interpreter with
``TRITON_INTERPRET=1`` set from the start. Their files live in ``tests/interpreted/``,
whose names pytest does not collect in the main run.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

INTERPRETED = Path(__file__).parent / "interpreted"


def run_interpreted(filename: str, timeout: float = 300) -> None:
    """Run ``tests/interpreted/<filename>`` with pytest under the interpreter; fail with
    its output if any test fails. Skips where Triton is not installed."""
    if importlib.util.find_spec("triton") is None:
        pytest.skip("Triton is not installed")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        str(INTERPRETED / filename),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        pytest.fail(
            f"interpreted kernel tests failed:\n{done.stdout[-6000:]}\n{done.stderr[-2000:]}"
        )
