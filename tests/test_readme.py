"""The README's Python examples run as pasted and print what their comments say.

Each ```python block is run on its own (a fresh namespace: no import leaks from one block
to the next). A line ``print(...)  # TEXT`` promises that the call prints ``TEXT``; the
printed lines are compared with those promises in order, numbers within a relative 1e-3
(the last printed digit may move with the BLAS library or the thread count).

The docs' blocks are checked too: a block either runs as a whole, or is marked as a
fragment, by a first line ``# Fragment: ...`` (seen by the reader) or an HTML comment
``<!-- fragment -->`` on the line before the block. A complete block too slow for the
tests (one that writes a data set) is preceded by ``<!-- not run by the tests: REASON -->``.
Docs blocks run in a temporary working directory.
"""

from __future__ import annotations

import contextlib
import io
import math
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FENCE = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
FRAGMENT = "<!-- fragment -->"
NOT_RUN = "<!-- not run by the tests:"
NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:e[-+]?\d+)?")


def python_blocks(path: Path) -> list[tuple[int, str, bool]]:
    """``(line number, code, is_fragment)`` of every ```python block of ``path``."""
    text = path.read_text()
    blocks = []
    for match in FENCE.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        code = match.group(1)
        fragment = (
            before.strip() == FRAGMENT
            or before.startswith(NOT_RUN)
            or code.lower().startswith("# fragment")
        )
        blocks.append((line, code, fragment))
    return blocks


def promised_output(code: str) -> list[str]:
    """The ``# TEXT`` comments of the block's top-level ``print(...)`` lines."""
    promised = []
    for line in code.splitlines():
        if line.startswith("print(") and "  # " in line:
            promised.append(line.split("  # ", 1)[1].strip())
    return promised


def same_output(printed: str, promised: str) -> bool:
    if NUMBER.sub("#", printed) != NUMBER.sub("#", promised):
        return False
    numbers = zip(NUMBER.findall(printed), NUMBER.findall(promised), strict=True)
    return all(math.isclose(float(a), float(b), rel_tol=1e-3, abs_tol=1e-4) for a, b in numbers)


def run_block(code: str, where: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, where, "exec"), {"__name__": "__readme__"})
    return out.getvalue()


README_BLOCKS = python_blocks(ROOT / "README.md")


def test_readme_has_python_examples():
    assert len(README_BLOCKS) >= 6
    assert not any(fragment for _, _, fragment in README_BLOCKS)


def check_block(code: str, where: str) -> None:
    """Run ``code``; what it prints must match its ``print(...)  # TEXT`` promises."""
    promised = promised_output(code)
    printed = run_block(code, where).splitlines()
    assert len(printed) == len(promised), (where, printed, promised)
    for got, expected in zip(printed, promised, strict=True):
        assert same_output(got, expected), f"{where}: printed {got!r}, promised {expected!r}"


@pytest.mark.parametrize(("line", "code"), [(b[0], b[1]) for b in README_BLOCKS])
def test_readme_block_runs_and_prints_what_it_promises(line: int, code: str):
    assert promised_output(code), f"README.md:{line}: the block shows no expected output"
    check_block(code, f"README.md:{line}")


def test_same_output_compares_text_exactly_and_numbers_closely():
    assert same_output("7.2706 torch.Size([1, 2])", "7.2707 torch.Size([1, 2])")
    assert not same_output("7.3 torch.Size([1, 2])", "7.2 torch.Size([1, 2])")
    assert not same_output("['cls']", "['l1']")


DOC_BLOCKS = [
    (path.name, line, code)
    for path in sorted((ROOT / "docs").glob("*.md"))
    for line, code, fragment in python_blocks(path)
    if not fragment
]


@pytest.mark.parametrize(("page", "line", "code"), DOC_BLOCKS)
def test_complete_docs_blocks_run(page: str, line: int, code: str, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a block may write files
    check_block(code, f"docs/{page}:{line}")


def test_the_detr_recipe_is_a_complete_block():
    recipes = [code for page, _, code in DOC_BLOCKS if page == "detection_loss.md"]
    assert any("SetCriterion(" in code and "loss_dict = criterion(" in code for code in recipes)
