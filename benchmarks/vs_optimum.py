"""Benchmark: onnxport against Hugging Face Optimum's `optimum-cli export onnx`, in one run.

On the same checkpoint (by default the DistilBERT-base-sized token classifier of
`convert_distilbert_base.py`: 66M parameters, random weights), runs `onnxport convert` and
`optimum-cli export onnx` as child processes, alternating which goes first, --runs times
each, and measures each one's wall time and peak memory (psutil polling of the child's
process tree, and the child's own ru_maxrss). Then it loads both exported fp32 models in
this process's ONNX Runtime, with the same threads and session options, and times them
interleaved on the same tokenized sample text.

Optimum is not a dependency of onnxport (it pins an older transformers): this script
installs it into its own virtual environment (--venv, created once) with pip, taking
torch 2.13.0 from the local CPU wheel through a constraints file. When it cannot be
installed, the script says so and stops.

    .venv/bin/python benchmarks/vs_optimum.py --runs 3 --json-out /tmp/vs-optimum.json

Then the next checkpoint of the architecture (issue 16): a second checkpoint, same config,
other weights (seed 1), converted by onnxport after the first (its graph from the export cache
the first conversion filled; the first-checkpoint runs pass --force, which exports and stores
the entry anew) and by Optimum, alternating; and the first checkpoint again with another
quantize setting (`--quantize int8`), which reuses the export too. The export cache is
`<workdir>/export-cache`, emptied at the start.

Targets (issue 5): onnxport's wall time (it validates on 3 shapes, Optimum on 1) at most
1.0x Optimum's; its peak memory at most 0.6x Optimum's; its fp32 model's latency at most
that of Optimum's model. Issue 16: the next checkpoint's wall time at most 0.8x Optimum's on
that checkpoint; the first checkpoint with int8 at most 0.5x its first conversion's. `--tiny`
checks the script on a tiny model in about a minute (its figures mean nothing); run the real
comparison on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from common import checkpoint, machine, now, tree_rss

from onnxport.artifact.manifest import read_manifest
from onnxport.benchmark.runtimes import directory_inputs
from onnxport.verify.timing import measure_interleaved, open_onnx

MB = 1024.0 * 1024.0
OPTIMUM_REQUIREMENTS = (
    "optimum[onnxruntime]==2.1.0",
    "optimum-onnx[onnxruntime]==0.1.0",
    "transformers>=4.36,<4.58",  # optimum-onnx 0.1.0's range; onnxport runs transformers 5
)
TORCH_PIN = "torch==2.13.0"
TASK = "token-classification"
TARGETS = {
    "wall_time_ratio": 1.0,
    "peak_memory_ratio": 0.6,
    "latency_ratio": 1.0,
    "next_checkpoint_wall_ratio": 0.8,
    "other_quantize_wall_ratio": 0.5,
}
# Random weights leave near-tied argmaxes that int8 moves (benchmarks/latency.py does the same);
# the fp32 model's elementwise gate is unchanged.
INT8_ARGS = ("--quantize", "int8", "--min-agreement", "0.9")


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def ensure_optimum(venv: Path) -> dict[str, str]:
    """Optimum in its own venv, installed once; returns the versions installed there."""
    cli = venv / "bin" / "optimum-cli"
    if not cli.is_file():
        import onnxruntime

        print(f"installing Optimum into {venv} (once)", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        constraints = venv / "constraints.txt"
        # The same torch as onnxport's (pip takes the local CPU wheel, not a CUDA build) and
        # the same ONNX Runtime, so that Optimum validates with the runtime we measure with.
        constraints.write_text(f"{TORCH_PIN}\nonnxruntime=={onnxruntime.__version__}\n")
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
        done = subprocess.run(
            [*pip, "-c", str(constraints), *OPTIMUM_REQUIREMENTS],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0 or not cli.is_file():
            raise SystemExit(
                "Optimum cannot be installed here, so there is nothing to compare with:\n"
                f"pip install -c {constraints} {' '.join(OPTIMUM_REQUIREMENTS)} failed:\n"
                f"{_tail(done.stderr or done.stdout)}"
            )
    probe = (
        "import importlib.metadata as m, json; print(json.dumps({p: m.version(p) for p in "
        "('optimum', 'optimum-onnx', 'transformers', 'torch', 'onnx', 'onnxruntime')}))"
    )
    out = subprocess.run(
        [str(venv / "bin" / "python"), "-c", probe], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)


def run_measured(command: list[str], interval: float) -> dict[str, Any]:
    """Run `command`; its wall time and peak memory (process tree, polled; and wait4)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.update({"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"})
    started = time.perf_counter()
    child = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env
    )
    peak = 0
    stop = threading.Event()

    def poll() -> None:
        nonlocal peak
        process = psutil.Process(child.pid)
        while not stop.is_set():
            peak = max(peak, tree_rss(process))
            stop.wait(interval)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    stderr: list[str] = []
    reader = threading.Thread(target=lambda: stderr.extend(child.stderr), daemon=True)
    reader.start()
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)
    stop.set()
    poller.join(timeout=5)
    reader.join(timeout=5)
    if child.returncode != 0:
        raise SystemExit(
            f"{' '.join(command)} failed (exit {child.returncode}):\n{_tail(''.join(stderr))}"
        )
    return {
        "wall_seconds": round(wall, 2),
        "peak_rss_mb_tree_polled": round(peak / MB, 1),
        "peak_rss_mb_wait4": round(usage.ru_maxrss / 1024.0, 1),
    }


def compare_latency(
    onnxport_dir: Path, optimum_model: Path, args: argparse.Namespace
) -> dict[str, Any]:
    """Both fp32 models in this process's ONNX Runtime, same options, interleaved."""
    ours = onnxport_dir / read_manifest(onnxport_dir).output("fp32").file  # type: ignore[union-attr]
    make_inputs, kind = directory_inputs(onnxport_dir, ours)
    runtimes = [
        open_onnx("onnxport fp32", ours, threads=args.threads),
        open_onnx("optimum fp32", optimum_model, threads=args.threads),
    ]
    inputs = make_inputs(args.batch, args.seq_length)
    ours_out, theirs_out = (np.asarray(r.run(inputs)[0]) for r in runtimes)  # type: ignore[index]
    timings = measure_interleaved(
        runtimes,
        [(args.batch, args.seq_length)],
        make_inputs,
        iterations=args.iterations,
        warmup=args.warmup,
    )
    return {
        "inputs": kind,
        "max_abs_diff_between_models": float(np.abs(ours_out - theirs_out).max()),
        "timings": {t.runtime: {"p50_ms": t.p50_ms, "p90_ms": t.p90_ms} for t in timings},
    }


def _median(runs: list[dict[str, Any]], key: str) -> float:
    return round(statistics.median(r[key] for r in runs), 2)


def _figures(runs: list[dict[str, Any]]) -> dict[str, Any]:
    keys = ("wall_seconds", "peak_rss_mb_tree_polled", "peak_rss_mb_wait4")
    return {"runs": runs, "median": {k: _median(runs, k) for k in keys}}


def alternate(
    commands: dict[str, list[str]],
    runs: int,
    interval: float,
    outputs: dict[str, Path] | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """Each command `runs` times, the order turning round each time; `outputs`: directories
    removed before their tool's runs (onnxport without --force, which would export again)."""
    measured: dict[str, list[dict[str, Any]]] = {tool: [] for tool in commands}
    for i in range(runs):
        order = list(commands) if i % 2 == 0 else list(reversed(commands))
        for tool in order:
            if outputs and tool in outputs:
                shutil.rmtree(outputs[tool], ignore_errors=True)
            print(f"run {i + 1}/{runs}: {tool}", file=sys.stderr)
            measured[tool].append(run_measured(commands[tool], interval))
            print(f"  {measured[tool][-1]}", file=sys.stderr)
    return measured


def next_checkpoint(first: Path, args: argparse.Namespace) -> dict[str, Any]:
    """A second checkpoint (same config, other weights) converted after the first, by onnxport
    (binding into the export cache's graph) and Optimum; and the first with int8."""
    ckpt = checkpoint(args.workdir, tiny=args.tiny, seed=1)
    tag = "tiny" if args.tiny else "base"
    outputs = {
        "onnxport": args.workdir / f"onnxport-{tag}-next",
        "optimum": args.workdir / f"optimum-{tag}-next",
        "onnxport int8": args.workdir / f"onnxport-{tag}-int8",
    }
    onnxport = [str(args.onnxport), "convert"]
    commands = {
        "onnxport": [*onnxport, str(ckpt), "-o", str(outputs["onnxport"]), *args.onnxport_arg],
        "optimum": [
            str(args.venv / "bin" / "optimum-cli"),
            *("export", "onnx", "--model", str(ckpt), "--task", TASK, str(outputs["optimum"])),
        ],
        "onnxport int8": [
            *(*onnxport, str(first), "-o", str(outputs["onnxport int8"])),
            *INT8_ARGS,
            *args.onnxport_arg,
        ],
    }
    runs = alternate(commands, args.runs, args.interval, outputs)
    caches = []
    for tool in ("onnxport", "onnxport int8"):
        manifest = read_manifest(outputs[tool])
        fp32 = manifest.output("fp32")
        if manifest.export.cache is None or manifest.export.cache.status != "hit":
            raise SystemExit(f"{tool}: the graph did not come from the export cache")
        if fp32 is None or fp32.validation is None or len(fp32.validation.shapes) < 3:
            raise SystemExit(f"{tool}: fp32 was not validated on three shapes")
        caches.append(manifest.export.cache)
    return {
        "checkpoint": str(ckpt),
        "commands": {k: " ".join(v) for k, v in commands.items()},
        "cache": f"from the export cache, entry {caches[0].key} made {caches[0].created_at}",
        **{tool: _figures(measured) for tool, measured in runs.items()},
    }


def summarize(result: dict[str, Any]) -> list[tuple[str, float, float, bool]]:
    ours, theirs = result["onnxport"]["median"], result["optimum"]["median"]
    latency = result["latency"]["timings"]
    following = result["next_checkpoint"]
    ratios = {
        "wall_time_ratio": ours["wall_seconds"] / theirs["wall_seconds"],
        "peak_memory_ratio": ours["peak_rss_mb_tree_polled"] / theirs["peak_rss_mb_tree_polled"],
        "latency_ratio": latency["onnxport fp32"]["p50_ms"] / latency["optimum fp32"]["p50_ms"],
        "next_checkpoint_wall_ratio": following["onnxport"]["median"]["wall_seconds"]
        / following["optimum"]["median"]["wall_seconds"],
        "other_quantize_wall_ratio": following["onnxport int8"]["median"]["wall_seconds"]
        / ours["wall_seconds"],
    }
    return [(k, round(v, 3), TARGETS[k], v <= TARGETS[k]) for k, v in ratios.items()]


def render(result: dict[str, Any]) -> str:
    m, ours, theirs = result["machine"], result["onnxport"], result["optimum"]
    latency, following = result["latency"], result["next_checkpoint"]
    lines = [
        f"onnxport vs optimum-cli export onnx: {result['checkpoint']} "
        f"({result['num_parameters'] / 1e6:.1f}M parameters), {len(ours['runs'])} runs each",
        f"CPU: {m['cpu']} x{m['cpus']}, load average {m['load_average_1m_5m']}; {result['date']}",
        f"optimum {result['optimum_versions']['optimum']} (optimum-onnx "
        f"{result['optimum_versions']['optimum-onnx']}, transformers "
        f"{result['optimum_versions']['transformers']}); onnxport validates on "
        f"{ours['validation_shapes']}, optimum on one shape",
        "",
        f"{'median of runs':<34}{'onnxport':>12}{'optimum':>12}{'ratio':>9}",
    ]
    for key, label in (
        ("wall_seconds", "wall seconds"),
        ("peak_rss_mb_tree_polled", "peak RSS MB (process tree)"),
        ("peak_rss_mb_wait4", "peak RSS MB (wait4 ru_maxrss)"),
    ):
        a, b = ours["median"][key], theirs["median"][key]
        lines.append(f"{label:<34}{a:>12}{b:>12}{a / b:>9.3f}")
    a = latency["timings"]["onnxport fp32"]["p50_ms"]
    b = latency["timings"]["optimum fp32"]["p50_ms"]
    lines += [
        f"{'fp32 latency p50 ms':<34}{a:>12.2f}{b:>12.2f}{a / b:>9.3f}",
        f"  (batch {result['batch']}, sequence {result['seq_length']}, {result['threads']} "
        f"threads, {result['iterations']} interleaved iterations; the two models' outputs "
        f"differ by at most {latency['max_abs_diff_between_models']:.2g})",
        "",
        f"next checkpoint (same config, other weights; onnxport's graph {following['cache']})",
    ]
    for tool in ("onnxport", "optimum", "onnxport int8"):
        figures = following[tool]["median"]
        what = "first checkpoint, --quantize int8" if tool == "onnxport int8" else "wall seconds"
        lines.append(
            f"  {tool:<14}{what:<34}{figures['wall_seconds']:>8}  "
            f"peak {figures['peak_rss_mb_wait4']} MiB"
        )
    lines += ["", "targets:"]
    for name, value, target, ok in result["targets"]:
        lines.append(f"  {'PASS' if ok else 'FAIL'}  {name} {value} <= {target}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/onnxport-vs-optimum"))
    parser.add_argument("--venv", type=Path, default=Path("/tmp/optimum-venv"))
    parser.add_argument("--runs", type=int, default=3, help="measured runs of each tool")
    parser.add_argument("--interval", type=float, default=0.05, help="RSS polling, seconds")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seq-length", type=int, default=128)
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--tiny", action="store_true", help="a tiny model: checks the script")
    parser.add_argument("--json-out", type=Path, help="write the figures as JSON here")
    parser.add_argument("--onnxport", type=Path, default=Path(sys.executable).with_name("onnxport"))
    parser.add_argument(
        "--onnxport-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="one more argument for `onnxport convert` (repeat: --onnxport-arg=--optimize "
        "--onnxport-arg=extended); default: onnxport's default settings",
    )
    args = parser.parse_args(argv)

    optimum_versions = ensure_optimum(args.venv)
    ckpt = checkpoint(args.workdir, tiny=args.tiny)
    tag = "tiny" if args.tiny else "base"
    ours_dir, theirs_dir = args.workdir / f"onnxport-{tag}", args.workdir / f"optimum-{tag}"
    commands = {
        "onnxport": [
            *(str(args.onnxport), "convert", str(ckpt), "-o", str(ours_dir), "--force"),
            *args.onnxport_arg,
        ],
        "optimum": [
            str(args.venv / "bin" / "optimum-cli"),
            *("export", "onnx", "--model", str(ckpt), "--task", TASK, str(theirs_dir)),
        ],
    }
    load = os.getloadavg()[0]
    if load > 0.5 * (os.cpu_count() or 1):
        print(f"warning: load average {load:.1f}: the figures will be noisy", file=sys.stderr)
    # onnxport's export cache for this run only: the first checkpoint's runs fill it.
    os.environ["ONNXPORT_CACHE"] = str(args.workdir / "export-cache")
    shutil.rmtree(args.workdir / "export-cache", ignore_errors=True)
    runs = alternate(commands, args.runs, args.interval)
    manifest = read_manifest(ours_dir)
    result: dict[str, Any] = {
        "benchmark": "vs_optimum",
        "date": now(),
        "command": " ".join([sys.executable, *sys.argv]),
        "machine": machine(),
        "checkpoint": str(ckpt),
        "num_parameters": manifest.source.num_parameters,
        "optimum_versions": optimum_versions,
        "onnxport_versions": manifest.versions,
        "commands": {k: " ".join(v) for k, v in commands.items()},
        "onnxport": {
            **_figures(runs["onnxport"]),
            "validation_shapes": manifest.outputs[0].validation.shapes,  # type: ignore[union-attr]
        },
        "optimum": _figures(runs["optimum"]),
        "batch": args.batch,
        "seq_length": args.seq_length,
        "threads": args.threads,
        "iterations": args.iterations,
        "latency": compare_latency(ours_dir, theirs_dir / "model.onnx", args),
        "next_checkpoint": next_checkpoint(ckpt, args),
    }
    result["targets"] = summarize(result)
    print(render(result))
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        print(f"\nwrote {args.json_out}")
    return 0 if all(ok for *_, ok in result["targets"]) else 1


if __name__ == "__main__":
    sys.exit(main())
