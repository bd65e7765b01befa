"""Benchmark: median latency of PyTorch eager and each published ONNX variant, interleaved.

Builds (once, into --workdir) the DistilBERT-base-sized token classifier of
`convert_distilbert_base.py` (66M parameters, random weights), converts it twice with
`onnxport convert` (reused when already there):

- with the published default settings: `model_fp32.onnx` as users get it;
- with `--optimize LEVEL --quantize int8 --min-agreement 0.9`: the optimized fp32 model and
  its int8 variant (random weights make argmax fragile, hence the lower gate, as in issue 4);

then loads PyTorch eager and the three ONNX models in one process, with the same threads,
and times them on the same tokenized sample text, interleaved: each iteration runs every
runtime once, in rotating order. Prints each median latency and its ratio to PyTorch's.

    .venv/bin/python benchmarks/latency.py --optimize extended --json-out /tmp/latency.json

Targets (issue 4, batch 1, sequence 128, 2 threads): fp32 as published by default at most
0.65x PyTorch eager's median latency; int8 at most 0.33x. Run it on a quiet machine:
`uptime` should show a load well under the number of cores. `--tiny` runs the same steps on
a tiny model in seconds, to check the script itself (its figures mean nothing).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from common import checkpoint, machine, now

from onnxport.artifact.manifest import read_manifest, verify_directory
from onnxport.benchmark.runtimes import open_pytorch, rss_bytes, source_inputs, warm_up
from onnxport.verify.timing import measure_interleaved, open_onnx

TARGETS = {"fp32 (default)": 0.65, "int8": 0.33}


def _converted_already(output: Path, ckpt: Path, optimize: str, quantize: str) -> bool:
    if verify_directory(output):
        return False
    manifest = read_manifest(output)
    onnx = manifest.config.get("onnx", {})
    settings = (onnx.get("optimize"), onnx.get("quantization"))
    return manifest.source.path == str(ckpt) and settings == (optimize, quantize)


def convert(
    onnxport: Path,
    ckpt: Path,
    output: Path,
    *,
    optimize: str = "none",
    quantize: str = "none",
    min_agreement: float | None = None,
    reconvert: bool = False,
) -> list[str]:
    """`onnxport convert` into `output`, unless a complete conversion of `ckpt` with the
    same settings is there already. Returns the command, for the record."""
    command = [str(onnxport), "convert", str(ckpt), "-o", str(output), "--force"]
    if optimize != "none":
        command += ["--optimize", optimize]
    if quantize != "none":
        command += ["--quantize", quantize]
    if min_agreement is not None:
        command += ["--min-agreement", str(min_agreement)]
    if not reconvert and _converted_already(output, ckpt, optimize, quantize):
        print(f"reusing {output}", file=sys.stderr)
        return command
    print(" ".join(command), file=sys.stderr)
    done = subprocess.run(command, stdout=subprocess.DEVNULL, check=False)
    if done.returncode != 0:
        raise SystemExit(f"onnxport convert failed (exit {done.returncode}): {' '.join(command)}")
    return command


def measure(args: argparse.Namespace, default_dir: Path, optimized_dir: Path) -> dict[str, Any]:
    before = rss_bytes()
    pytorch, source = open_pytorch(read_manifest(default_dir), threads=args.threads)
    make_inputs, kind = source_inputs(source)
    inputs = make_inputs(args.batch, args.seq_length)
    runtimes = [warm_up(pytorch, inputs, args.warmup, rss_before=before)]
    optimized = read_manifest(optimized_dir)
    models = [("fp32 (default)", default_dir / "model_fp32.onnx")] + [
        (
            out.variant if out.variant != "fp32" else f"fp32 (optimize {args.optimize})",
            optimized_dir / out.file,
        )
        for out in optimized.published_outputs()
    ]
    for name, path in models:
        before = rss_bytes()
        runtime = open_onnx(name, path, threads=args.threads, spinning=args.onnx_spinning)
        runtimes.append(warm_up(runtime, inputs, args.warmup, rss_before=before))
    timings = measure_interleaved(
        runtimes,
        [(args.batch, args.seq_length)],
        make_inputs,
        iterations=args.iterations,
        warmup=args.warmup,
    )
    reference = next(t for t in timings if t.runtime == "pytorch").p50_ms
    rows = []
    for runtime, timing in zip(runtimes, timings):
        ratio = timing.p50_ms / reference
        target = TARGETS.get(runtime.name)
        rows.append(
            {
                "runtime": runtime.name,
                "file": runtime.figures.file,
                "size_mb": round(runtime.figures.size_bytes / 1e6, 1),
                "p50_ms": timing.p50_ms,
                "p90_ms": timing.p90_ms,
                "p99_ms": timing.p99_ms,
                "ratio_to_pytorch": round(ratio, 3),
                "target": target,
                "passed": None if target is None else ratio <= target,
            }
        )
    return {"inputs": kind, "rows": rows}


def render(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        f"latency, batch {result['batch']}, sequence {result['seq_length']}, "
        f"{result['threads']} threads, {result['iterations']} interleaved iterations "
        f"({result['inputs']})",
        f"CPU: {m['cpu']} x{m['cpus']}, load average {m['load_average_1m_5m']}; {result['date']}",
        "",
        f"{'runtime':<26}{'file':<18}{'MB':>8}{'p50 ms':>10}{'p90 ms':>10}{'p99 ms':>10}"
        f"{'x PyTorch':>11}  target",
    ]
    for r in result["rows"]:
        verdict = (
            ""
            if r["target"] is None
            else (f"<= {r['target']}: {'PASS' if r['passed'] else 'FAIL'}")
        )
        lines.append(
            f"{r['runtime']:<26}{r['file'] or '-':<18}{r['size_mb']:>8}{r['p50_ms']:>10.2f}"
            f"{r['p90_ms']:>10.2f}{r['p99_ms']:>10.2f}{r['ratio_to_pytorch']:>11.3f}  {verdict}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/onnxport-latency"))
    parser.add_argument("--optimize", choices=("basic", "extended"), default="extended")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seq-length", type=int, default=128)
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--min-agreement", type=float, default=0.9)
    parser.add_argument(
        "--onnx-spinning", action="store_true", help="let ONNX Runtime's idle threads spin"
    )
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="reuse a complete conversion with the same settings in --workdir (it may have been "
        "made by an older onnxport: by default every run converts afresh)",
    )
    parser.add_argument("--tiny", action="store_true", help="a tiny model: checks the script")
    parser.add_argument("--json-out", type=Path, help="write the figures as JSON here")
    parser.add_argument("--onnxport", type=Path, default=Path(sys.executable).with_name("onnxport"))
    args = parser.parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    ckpt = checkpoint(args.workdir, tiny=args.tiny)
    tag = "tiny" if args.tiny else "base"
    default_dir = args.workdir / f"onnx-{tag}-default"
    optimized_dir = args.workdir / f"onnx-{tag}-{args.optimize}-int8"
    commands = [
        convert(args.onnxport, ckpt, default_dir, reconvert=not args.reuse),
        convert(
            args.onnxport,
            ckpt,
            optimized_dir,
            optimize=args.optimize,
            quantize="int8",
            min_agreement=args.min_agreement,
            reconvert=not args.reuse,
        ),
    ]
    load = os.getloadavg()[0]
    if load > 0.5 * (os.cpu_count() or 1):
        print(f"warning: load average {load:.1f}: the figures will be noisy", file=sys.stderr)
    import onnxruntime
    import torch

    result: dict[str, Any] = {
        "benchmark": "latency",
        "date": now(),
        "command": " ".join([sys.executable, *sys.argv]),
        "conversions": [" ".join(c) for c in commands],
        "machine": machine(),
        "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__},
        "checkpoint": str(ckpt),
        "batch": args.batch,
        "seq_length": args.seq_length,
        "threads": args.threads,
        "iterations": args.iterations,
        "onnx_spinning": args.onnx_spinning,
        **measure(args, default_dir, optimized_dir),
    }
    print(render(result))
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        print(f"\nwrote {args.json_out}")
    passed = [r["passed"] for r in result["rows"] if r["passed"] is not None]
    return 0 if all(passed) else 1


if __name__ == "__main__":
    sys.exit(main())
