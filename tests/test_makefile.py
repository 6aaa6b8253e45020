"""The Makefile's set-up: each target installs only what it needs, and make echoes no
recipe comments (checked with ``make -n`` in a copy of the checkout's Makefile, so nothing
is installed or run)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def dry_run(target: str, tmp_path: Path) -> list[str]:
    """The commands ``make TARGET`` would run from a fresh clone (no .venv)."""
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(ROOT / name, tmp_path / name)
    # Run from `make test`, the outer make's variables would make this one a sub-make
    # (with "Entering directory" lines): start it as a top-level make.
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    out = subprocess.run(
        ["make", "--no-print-directory", "-n", target],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    return out.stdout.splitlines()


def test_demo_installs_only_what_the_demo_needs(tmp_path):
    commands = dry_run("demo", tmp_path)
    installs = [c for c in commands if "pip install" in c]
    assert any('"torch==' in c for c in installs)
    assert any('-e ".[demo,numba]"' in c for c in installs)
    assert not any("triton" in c or "dev" in c or "bench" in c for c in installs)
    assert commands[-1].endswith("detloss demo")


def test_test_adds_the_dev_extras_and_triton(tmp_path):
    installs = [c for c in dry_run("test", tmp_path) if "pip install" in c]
    assert any("triton" in c for c in installs)
    assert any(".[dev," in c for c in installs)


def test_bench_installs_the_bench_extra(tmp_path):
    installs = [c for c in dry_run("bench", tmp_path) if "pip install" in c]
    assert any(".[bench," in c for c in installs)
    assert not any("triton" in c for c in installs)


@pytest.mark.parametrize("target", ["demo", "test", "bench"])
def test_no_recipe_comment_is_echoed(target, tmp_path):
    assert not [c for c in dry_run(target, tmp_path) if c.lstrip().startswith("#")]
