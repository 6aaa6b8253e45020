"""``detloss bench``: run every ``benchmarks/bench_*.py`` and rewrite ``benchmarks/RESULTS.md``.

Each script exposes ``run(repeats) -> list[dict]`` with rows ``{"name", "baseline_s",
"ours_s", "note"}``; ``quick`` and ``device`` are passed when ``run`` accepts them. A row
without times is a note (e.g. a host-only benchmark on ``--device cuda``). Ratios are
baseline / detloss per repeat, reported as min / median / max. Every script runs in a
fresh interpreter, so that the memory one benchmark leaves behind (a large, fragmented
heap) does not slow down the next.

The results file has one section per device (``## CPU``, ``## CUDA (<GPU name>)``), each
with its own machine lines and table: a run rewrites only the section of its device, so
CPU and GPU figures taken on different machines live side by side (the GPU's name is part
of the heading, so each GPU model keeps its own). The text after ``<!-- notes -->`` is
kept as it is.
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
    candidates += [Path.cwd() / "benchmarks"]
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
    parameters = inspect.signature(module.run).parameters
    if "quick" not in parameters:
        kwargs.pop("quick", None)
    threads = kwargs.pop("threads", None)
    if threads is not None:
        # Scripts that take ``threads`` also size their peers' pools by it.
        if "threads" in parameters:
            kwargs["threads"] = threads
        import torch

        torch.set_num_threads(threads)
    if "device" not in parameters:
        device = kwargs.pop("device", "cpu")
        if device != "cpu":
            # Running it anyway would put CPU figures into the table of another device.
            note = f"run() takes no device argument: not run on {device}"
            result.write_text(json.dumps([{"name": "not run", "note": note}]))
            return
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


def _heading(device: str) -> str:
    """The section title of a device; a later run on the same device replaces that section."""
    if device == "cpu":
        return "## CPU"
    import torch

    return f"## CUDA ({torch.cuda.get_device_name(0)})"


def _machine(device: str) -> list[str]:
    import numpy
    import scipy
    import torch

    lines = [
        f"- machine: {platform.machine()}, {os.cpu_count()} logical CPUs visible; "
        "each script run once per torch thread count (the threads column)",
        f"- processor: {platform.processor() or 'unknown'}",
        f"- python {platform.python_version()}, torch {torch.__version__}, "
        f"numpy {numpy.__version__}, scipy {scipy.__version__}",
    ]
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        lines.append(
            f"- CUDA device: {props.name}, {props.total_memory / 2**30:.0f} GiB, compute "
            f"capability {props.major}.{props.minor}, CUDA {torch.version.cuda}"
        )
    elif torch.cuda.is_available():
        lines.append(f"- run on the CPU; CUDA device unused: {torch.cuda.get_device_name(0)}")
    else:
        lines.append("- no CUDA device (CPU only)")
    return lines


def _row(script: str, row: dict, threads: int | str = "") -> str:
    if not row.get("ours_s"):
        return f"| {script} | {row['name']} | {threads} | | | | {row.get('note', '')} |"
    base, ours = row["baseline_s"], row["ours_s"]
    ratios = sorted(b / o for b, o in zip(base, ours, strict=False) if o > 0)
    med = statistics.median
    return (
        f"| {script} | {row['name']} | {threads} | {med(base) * 1e3:.2f} | {med(ours) * 1e3:.2f} | "
        f"{ratios[0]:.2f} / {med(ratios):.2f} / {ratios[-1]:.2f} | {row.get('note', '')} |"
    )


NOTES = "<!-- notes -->"

PREAMBLE = """# Benchmark results

One section per device, each written by `detloss bench` (`--device cuda` for a GPU), which
rewrites only the section of the device it ran on.

Times are medians in milliseconds; the ratio is baseline / detloss per repeat
(min / median / max). Where the scripts alternate the two sides, each repeat pairs
neighbouring calls, each timed right after an untimed call of the same function. Every
script asserts that both sides give the same result. On a GPU both sides run on the device,
and each timed region ends with `torch.cuda.synchronize()`.
"""

TABLE_HEADER = [
    "| script | benchmark | threads | baseline ms | detloss ms | speed-up min / median / max | note |",
    "|---|---|---|---|---|---|---|",
]


def _sections(body: str) -> dict[str, str]:
    """The ``## `` sections of ``body`` by their heading line, in file order; the text
    before the first heading (the preamble, which :func:`replace_section` writes anew)
    is dropped."""
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in body.splitlines():
        if line.startswith("## "):
            current = sections.setdefault(line.rstrip(), [])
        if current is not None:
            current.append(line)
    return {heading: "\n".join(lines).rstrip() for heading, lines in sections.items()}


def replace_section(previous: str, section: str) -> str:
    """The results file ``previous`` with ``section`` (whose first line is its ``## ``
    heading) in place of the section of the same heading, or after the others if there is
    none; the other sections and the text from ``<!-- notes -->`` on are kept as they are."""
    body, _, notes = previous.partition(NOTES)
    sections = _sections(body)
    section = section.strip()
    sections[section.splitlines()[0].rstrip()] = section
    return PREAMBLE + "\n" + "\n\n".join(sections.values()) + "\n\n" + NOTES + (notes or "\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="detloss bench", description=__doc__)
    parser.add_argument("--dir", help="benchmarks folder (default: ./benchmarks)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--only", nargs="*", help="script names to run (e.g. bench_match)")
    parser.add_argument(
        "--threads",
        type=int,
        nargs="+",
        default=[1, 2],
        help="torch thread counts; every script runs once per count (default: 1 2)",
    )
    parser.add_argument("--output", help="results file (default: <dir>/RESULTS.md)")
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="where both sides run (cuda: the current GPU; pick one with CUDA_VISIBLE_DEVICES)",
    )
    args = parser.parse_args(argv)

    folder = _find_benchmarks(args.dir)
    if args.device == "cuda":
        import torch

        # Fail once, before any script runs, instead of once per script.
        if not torch.cuda.is_available():
            raise SystemExit("detloss bench: --device cuda, but torch sees no CUDA device")
    scripts = sorted(folder.glob("bench_*.py"))
    if args.only:
        scripts = [s for s in scripts if s.stem in args.only]
    lines: list[str] = []
    failures = 0
    for script in scripts:
        for threads in args.threads:
            print(f"== {script.stem}, {threads} thread(s)", flush=True)
            kwargs = {
                "repeats": args.repeats,
                "quick": args.quick,
                "device": args.device,
                "threads": threads,
            }
            try:
                rows = _run_script(script, kwargs)
            except Exception:  # a broken script is reported, the others still run
                failures += 1
                traceback.print_exc()
                lines.append(f"| {script.stem} | failed: see the console | {threads} | | | | |")
                continue
            for row in rows:
                lines.append(_row(script.stem, row, threads))
                print(lines[-1], flush=True)

    output = Path(args.output) if args.output else folder / "RESULTS.md"
    command = "detloss bench" + (" --device cuda" if args.device == "cuda" else "")
    section = [
        _heading(args.device),
        "",
        f"Written by `{command}` on {_dt.date.today().isoformat()}"
        + (" (quick sizes)" if args.quick else "")
        + f", {args.repeats} timed repeats; each script in a fresh process.",
        "",
        *_machine(args.device),
        "",
        *TABLE_HEADER,
        *lines,
    ]
    previous = output.read_text() if output.exists() else ""
    output.write_text(replace_section(previous, "\n".join(section)))
    print(f"wrote {output}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
