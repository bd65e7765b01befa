"""Benchmark: `execute_conversion` called again, in a fresh process, with the same inputs.

The demo's project (`onnxport.demo.project`: the résumé tagger trained once, a training
output laid out as a pipeline writes it) is converted once in this process; then each of
--runs fresh Python processes calls `execute_conversion` with the same arguments, which
returns the complete directory without a conversion (it records the reuse in MLflow). Per
run: the process's whole wall time (interpreter start to exit, as a platform step pays it)
and the call's own time inside it. Then one more run with `python -X importtime`, whose
largest imports say where the time goes.

    .venv/bin/python benchmarks/reuse.py --runs 5

Target (issue 27): the call returns in < 1 s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import machine, now

CALL = """
import json, sys, time
started = time.perf_counter()
from onnxport.orchestration import execute_conversion
arguments = json.loads(sys.argv[1])
output = execute_conversion(**arguments)
print(json.dumps({"seconds": time.perf_counter() - started, "output": str(output)}))
"""


def _arguments(root: Path) -> dict[str, object]:
    from onnxport.demo.project import prepare_demo_project

    project = prepare_demo_project(root)
    return {
        "root_dir": str(project.root),
        "config_dir": str(project.config_dir),
        "parent_training_output_dir": str(project.training_dir),
        "parent_spec_fp": project.spec_fp,
        "parent_exec_fp": project.exec_fp,
        "experiment_config": None,
        "conversion_experiment_name": "onnxport-reuse",
        "platform": "local",
    }


def _fresh_call(arguments: dict[str, object], *extra: str) -> tuple[float, dict, str]:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, *extra, "-c", CALL, json.dumps(arguments)],
        capture_output=True,
        text=True,
        check=True,
    )
    wall = time.perf_counter() - started
    return wall, json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


def _largest_imports(stderr: str, count: int = 12) -> list[tuple[str, float]]:
    """`-X importtime`'s cumulative microseconds of the top-level imports, largest first."""
    found = []
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = (part.strip() for part in line.split("|", 2))
        if cumulative.isdigit() and not name.startswith(" "):
            found.append((name.strip(), int(cumulative) / 1e6))
    return sorted(found, key=lambda item: -item[1])[:count]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("/tmp/onnxport-reuse"))
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args(argv)

    arguments = _arguments(args.root)
    first_wall, first, _ = _fresh_call(arguments)  # converts, or reuses an earlier one
    print(f"first call: {first_wall:.2f} s (the call {first['seconds']:.2f} s)")
    walls, calls = [], []
    for run in range(args.runs):
        wall, reused, _ = _fresh_call(arguments)
        if reused["output"] != first["output"]:
            raise SystemExit(f"run {run + 1} returned {reused['output']}, not {first['output']}")
        walls.append(wall)
        calls.append(reused["seconds"])
        print(f"reuse {run + 1}/{args.runs}: process {wall:.2f} s, call {reused['seconds']:.2f} s")
    _, _, stderr = _fresh_call(arguments, "-X", "importtime")
    largest = _largest_imports(stderr)
    result = {
        "machine": machine(),
        "measured_at": now(),
        "process_s": {"min": min(walls), "median": statistics.median(walls), "max": max(walls)},
        "call_s": {"min": min(calls), "median": statistics.median(calls), "max": max(calls)},
        "largest_imports_s": dict(largest),
    }
    print(
        f"reuse in a fresh process: the call {result['call_s']['median']:.2f} s median "
        f"(min {result['call_s']['min']:.2f}), the whole process "
        f"{result['process_s']['median']:.2f} s; target < 1 s"
    )
    print("largest imports (cumulative s): " + ", ".join(f"{n} {s:.2f}" for n, s in largest))
    if args.json_out:
        args.json_out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
