"""``detloss bench``'s results file (one section per device) and its hand-off of ``device``
to the scripts: text handling and toy scripts only, no benchmark runs."""

from __future__ import annotations

import json
import sys

from detloss.app import benchrunner
from detloss.app.benchrunner import NOTES, PREAMBLE, replace_section

CPU = "## CPU\n\nWritten on day 1.\n\n| bench_a | cpu row |"
GPU = "## CUDA (Some GPU 80GB)\n\nWritten on day 2.\n\n| bench_a | gpu row |"
NOTE_TEXT = "\n\nNotes, with a heading of their own:\n\n## not a section\n"


def _file(*sections: str) -> str:
    return PREAMBLE + "\n" + "\n\n".join(sections) + "\n\n" + NOTES + NOTE_TEXT


def test_a_run_rewrites_only_its_own_section():
    new_cpu = "## CPU\n\nWritten on day 3.\n\n| bench_a | new cpu row |"
    text = replace_section(_file(CPU, GPU), new_cpu)
    assert text == _file(new_cpu, GPU)
    new_gpu = GPU.replace("gpu row", "new gpu row")
    assert replace_section(text, new_gpu + "\n\n") == _file(new_cpu, new_gpu)


def test_a_new_device_gets_a_section_after_the_others():
    other = "## CUDA (Another GPU)\n\n| bench_a | other row |"
    assert replace_section(_file(CPU, GPU), other) == _file(CPU, GPU, other)
    # Rewriting a file with its own section changes nothing.
    assert replace_section(_file(CPU, GPU), CPU) == _file(CPU, GPU)


def test_old_layouts_and_a_missing_file():
    # A file from before the sections: its table goes, the notes stay.
    old = "# Benchmark results\n\n| bench_a | old row |\n\n" + NOTES + NOTE_TEXT
    assert replace_section(old, CPU) == _file(CPU)
    assert replace_section("", CPU) == PREAMBLE + "\n" + CPU + "\n\n" + NOTES + "\n"


def test_note_rows_have_no_times():
    row = benchrunner._row("bench_x", {"name": "not run on cuda", "note": "host only"}, 2)
    assert row == "| bench_x | not run on cuda | 2 | | | | host only |"


def test_timed_rows_give_the_thread_count_and_paired_ratios():
    row = {"name": "op", "baseline_s": [0.004, 0.002, 0.003], "ours_s": [0.001, 0.001, 0.002]}
    assert benchrunner._row("bench_x", row, 1) == (
        "| bench_x | op | 1 | 3.00 | 1.00 | 1.50 / 2.00 / 4.00 |  |"
    )


def _child(tmp_path, monkeypatch, source: str, kwargs: dict) -> list[dict]:
    monkeypatch.setattr(sys, "path", list(sys.path))  # _child puts the script's folder first
    script, result = tmp_path / "bench_toy.py", tmp_path / "rows.json"
    script.write_text(source)
    benchrunner._child([str(script), json.dumps(kwargs), str(result)])
    return json.loads(result.read_text())


def test_device_is_passed_when_run_accepts_it(tmp_path, monkeypatch):
    source = (
        "def run(repeats, quick=False, device='cpu'):\n"
        "    return [{'name': f'{device} {quick}', 'baseline_s': [1.0], 'ours_s': [1.0]}]\n"
    )
    rows = _child(tmp_path, monkeypatch, source, {"repeats": 1, "quick": True, "device": "cuda"})
    assert rows[0]["name"] == "cuda True"


def test_a_script_without_device_runs_on_the_cpu_only(tmp_path, monkeypatch):
    source = (
        "def run(repeats):\n    return [{'name': 'ran', 'baseline_s': [1.0], 'ours_s': [1.0]}]\n"
    )
    rows = _child(tmp_path, monkeypatch, source, {"repeats": 1, "quick": True, "device": "cpu"})
    assert rows[0]["name"] == "ran"
    rows = _child(tmp_path, monkeypatch, source, {"repeats": 1, "quick": True, "device": "cuda"})
    assert rows == [{"name": "not run", "note": "run() takes no device argument: not run on cuda"}]
