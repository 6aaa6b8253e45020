"""Every public function and class documents its shapes and runs its example
(docs/conventions.md, "Docstrings"): a ``Shape:`` section and an ``Example:`` of doctest
lines, executed here.
"""

from __future__ import annotations

import doctest
import inspect

import pytest
import torch

import detloss
from _public import public_names

PUBLIC = {
    name: value
    for name, value in public_names().items()
    if inspect.isfunction(value) or inspect.isclass(value)
}


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_docstring_has_shape_and_example(name):
    doc = inspect.getdoc(PUBLIC[name]) or ""
    assert "\nShape:" in "\n" + doc, f"{name}: no Shape: section"
    assert "\nExample:" in "\n" + doc or "\nExamples:" in "\n" + doc, f"{name}: no Example:"
    assert ">>> " in doc, f"{name}: the example has no doctest lines"


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_docstring_example_runs(name):
    value = PUBLIC[name]
    module = inspect.getmodule(value)
    globs = {**vars(module), "torch": torch, "detloss": detloss} if module else {}
    finder = doctest.DocTestFinder(recurse=False)
    tests = finder.find(value, name, globs=globs)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    report: list[str] = []
    for test in tests:
        runner.run(test, out=report.append)
    results = runner.summarize(verbose=False)
    assert results.attempted > 0, f"{name}: no example ran"
    assert results.failed == 0, "".join(report)
