"""``detloss bench``: run every ``benchmarks/bench_*.py`` and rewrite ``benchmarks/RESULTS.md``.

Each script exposes ``run(repeats) -> list[dict]`` with rows ``{"name", "baseline_s",
"ours_s", "note"}``. Ratios are baseline / detloss per repeat, reported as
min / median / max. Every script runs in a fresh interpreter, so that the memory one
benchmark leaves behind (a large, fragmented heap) does not slow down the next.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.util
import inspect
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main"]


def _find_benchmarks(explicit: str | None) -> Path:
    candidates = [Path(explicit)] if explicit else []
    candidates += [Path.cwd() / "benchmarks", Path(__file__).resolve().parents[2] / "benchmarks"]
    for path in candidates:
        if path.is_dir() and any(path.glob("bench_*.py")):
            return path
    raise SystemExit("detloss bench: no benchmarks/ folder with bench_*.py scripts found")


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def _child(argv: Sequence[str]) -> None:
    """In the fresh interpreter: ``run(**kwargs)`` of one script, rows written as JSON."""
    script, kwargs, result = Path(argv[0]), json.loads(argv[1]), Path(argv[2])
    sys.path.insert(0, str(script.parent))
    module = _load(script)
    if "quick" not in inspect.signature(module.run).parameters:
        kwargs.pop("quick", None)
    result.write_text(json.dumps(module.run(**kwargs)))


def _run_script(script: Path, kwargs: dict) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "rows.json"
        # This file loaded by path: the child imports only what the script imports.
        code = (
            "import importlib.util, sys; "
            f"spec = importlib.util.spec_from_file_location('benchrunner', {__file__!r}); "
            "runner = importlib.util.module_from_spec(spec); spec.loader.exec_module(runner); "
            "runner._child(sys.argv[1:])"
        )
        command = [sys.executable, "-c", code, str(script), json.dumps(kwargs), str(result)]
        subprocess.run(command, check=True)
        return json.loads(result.read_text())


def _machine() -> list[str]:
    import numpy
    import scipy
    import torch

    lines = [
        f"- machine: {platform.machine()}, {os.cpu_count()} logical CPUs visible, "
        f"torch threads {torch.get_num_threads()}",
        f"- processor: {platform.processor() or 'unknown'}",
        f"- python {platform.python_version()}, torch {torch.__version__}, "
        f"numpy {numpy.__version__}, scipy {scipy.__version__}",
    ]
    if torch.cuda.is_available():
        lines.append(f"- CUDA device: {torch.cuda.get_device_name(0)}")
    else:
        lines.append("- no CUDA device (CPU only)")
    return lines


def _row(script: str, row: dict) -> str:
    base, ours = row["baseline_s"], row["ours_s"]
    ratios = sorted(b / o for b, o in zip(base, ours, strict=False) if o > 0)
    med = statistics.median
    return (
        f"| {script} | {row['name']} | {med(base) * 1e3:.2f} | {med(ours) * 1e3:.2f} | "
        f"{ratios[0]:.2f} / {med(ratios):.2f} / {ratios[-1]:.2f} | {row.get('note', '')} |"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="detloss bench", description=__doc__)
    parser.add_argument("--dir", help="benchmarks folder (default: ./benchmarks)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--only", nargs="*", help="script names to run (e.g. bench_match)")
    parser.add_argument("--output", help="results file (default: <dir>/RESULTS.md)")
    args = parser.parse_args(argv)

    folder = _find_benchmarks(args.dir)
    scripts = sorted(folder.glob("bench_*.py"))
    if args.only:
        scripts = [s for s in scripts if s.stem in args.only]
    lines: list[str] = []
    failures = 0
    for script in scripts:
        print(f"== {script.stem}", flush=True)
        try:
            rows = _run_script(script, {"repeats": args.repeats, "quick": args.quick})
        except Exception:  # a broken script is reported, the others still run
            failures += 1
            traceback.print_exc()
            lines.append(f"| {script.stem} | failed: see the console | | | | |")
            continue
        for row in rows:
            lines.append(_row(script.stem, row))
            print(lines[-1], flush=True)

    output = Path(args.output) if args.output else folder / "RESULTS.md"
    header = [
        "# Benchmark results",
        "",
        f"Written by `detloss bench` on {_dt.date.today().isoformat()}"
        + (" (quick sizes)" if args.quick else "")
        + f", {args.repeats} timed repeats; each script in a fresh process.",
        "",
        *_machine(),
        "",
        "Times are medians in milliseconds; the ratio is baseline / detloss per repeat "
        "(min / median / max). Where the scripts alternate the two sides, each repeat pairs "
        "neighbouring calls, each timed right after an untimed call of the same function. "
        "Every script asserts that both sides give the same result.",
        "",
        "| script | benchmark | baseline ms | detloss ms | speed-up min / median / max | note |",
        "|---|---|---|---|---|---|",
    ]
    previous = output.read_text() if output.exists() else ""
    notes = previous.split("<!-- notes -->", 1)[1] if "<!-- notes -->" in previous else "\n"
    output.write_text("\n".join(header + lines) + "\n\n<!-- notes -->" + notes)
    print(f"wrote {output}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
