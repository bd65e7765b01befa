"""Benchmark: does the variant search publish the fastest model that passes the gate?

Converts one checkpoint with `onnxport convert --optimize auto --quantize auto` and with each
fixed setting a user could pick by hand:

- fp32 at `--optimize none`, `basic`, `extended`;
- int8 dynamic per-tensor (`--quantize int8`), dynamic per-channel (a conversion.yaml with
  `quantize.per_channel: true`), static QDQ (`--quantize int8-static`), each quantized from
  the exported graph;

all with the same gate (`--min-agreement`, when given). A fixed setting the gate refuses
publishes nothing, and is listed with its error line. Then every published model of every
conversion is loaded in one process and timed interleaved (each iteration runs every model
once, in rotating order), batch 1, at each `--lengths`, on tokenized sample text, with the
threads the search measured with (`ONNXPORT_THREADS`, else the process's CPUs).

Target (issue 15): each variant `auto` published (fp32, int8) at least as fast as the fastest
fixed setting of its kind that passed, within 5%, at every length. The auto conversion's own
search table (candidates, gate metric, latency, chosen) is printed too.

    .venv/bin/python benchmarks/variant_search.py --json-out /tmp/variant-search.json
    .venv/bin/python benchmarks/variant_search.py --checkpoint PATH --min-agreement none

The default checkpoint is the DistilBERT-base-sized token classifier of
`convert_distilbert_base.py` (random weights: argmax is fragile, hence `--min-agreement 0.9`,
as in issue 4). `--tiny` checks the script in seconds (its figures mean nothing). Run it on a
quiet machine: `uptime` well under the number of cores.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import onnx
import yaml
from common import checkpoint, machine, now

from onnxport.artifact.manifest import read_manifest
from onnxport.benchmark.runtimes import directory_inputs, rss_bytes, warm_up
from onnxport.verify.timing import default_threads, measure_interleaved, open_onnx

TOLERANCE = 0.05
"""An auto variant passes when its median is at most 5% above the fastest fixed setting's."""

# name -> (kind, convert flags, conversion.yaml content or None)
SETTINGS: dict[str, tuple[str, list[str], dict[str, Any] | None]] = {
    "auto": ("auto", ["--optimize", "auto", "--quantize", "auto"], None),
    "fp32 none": ("fp32", [], None),
    "fp32 basic": ("fp32", ["--optimize", "basic"], None),
    "fp32 extended": ("fp32", ["--optimize", "extended"], None),
    "int8 dynamic per-tensor": ("int8", ["--quantize", "int8"], None),
    "int8 dynamic per-channel": (
        "int8",
        [],
        {"onnx": {"quantization": "int8"}, "quantize": {"per_channel": True}},
    ),
    "int8 static": ("int8", ["--quantize", "int8-static"], None),
}


def convert(
    onnxport: Path, ckpt: Path, output: Path, flags: list[str], config: dict[str, Any] | None
) -> dict[str, Any]:
    """`onnxport convert` into `output`; the command, its exit code and its error line."""
    command = [str(onnxport), "convert", str(ckpt), "-o", str(output), "--force", *flags]
    with tempfile.TemporaryDirectory() as scratch:
        if config is not None:
            config_file = Path(scratch) / "conversion.yaml"
            config_file.write_text(yaml.safe_dump(config), encoding="utf-8")
            command += ["--config", str(config_file)]
        print(" ".join(command), file=sys.stderr)
        done = subprocess.run(command, capture_output=True, text=True, check=False)
    errors = [line for line in done.stderr.splitlines() if line.startswith("error")]
    return {
        "command": " ".join(command),
        "exit_code": done.returncode,
        "error": errors[-1] if errors else None,
    }


def published_models(name: str, kind: str, output: Path) -> list[tuple[str, str, Path]]:
    """(runtime name, kind, model file) of every model a conversion published."""
    manifest = read_manifest(output)
    models = []
    for out in manifest.published_outputs():
        variant_kind = "fp32" if out.variant == "fp32" else "int8"
        if kind not in ("auto", variant_kind):
            continue  # a fixed int8 setting's fp32 is "fp32 none" again
        label = f"auto {out.variant}" if kind == "auto" else name
        models.append((label, variant_kind, output / out.file))
    return models


def search_tables(output: Path) -> list[dict[str, Any]]:
    manifest = read_manifest(output)
    tables = []
    for out in manifest.outputs:
        if out.search is not None:
            tables.append({"variant": out.variant, **out.search.model_dump(mode="json")})
    return tables


def verdicts(rows: list[dict[str, Any]], lengths: list[int]) -> list[dict[str, Any]]:
    """Each auto variant against the fastest fixed setting of its kind, per length."""
    found = []
    for auto in (r for r in rows if r["runtime"].startswith("auto ")):
        fixed = [
            r for r in rows if r["kind"] == auto["kind"] and not r["runtime"].startswith("auto")
        ]
        for length in lengths:
            key = f"1x{length}"
            best = min(fixed, key=lambda r: r["p50_ms"][key]) if fixed else None
            ratio = auto["p50_ms"][key] / best["p50_ms"][key] if best else None
            # The same bytes as the fixed setting: any difference is the measurement's noise.
            same = best is not None and best["graph_sha256"] == auto["graph_sha256"]
            found.append(
                {
                    "variant": auto["runtime"],
                    "shape": key,
                    "fastest_fixed": best["runtime"] if best else None,
                    "ratio": None if ratio is None else round(ratio, 3),
                    "same_model": same,
                    "passed": ratio is None or same or ratio <= 1 + TOLERANCE,
                }
            )
    return found


def graph_sha256(path: Path) -> str:
    """The checksum of a model's graph (nodes and weights), not of its metadata: two
    conversions that made the same graph have the same one."""
    graph = onnx.load(str(path), load_external_data=False).graph
    return hashlib.sha256(graph.SerializeToString(deterministic=True)).hexdigest()


def measure(
    models: list[tuple[str, str, Path]], lengths: list[int], args: argparse.Namespace
) -> list[dict[str, Any]]:
    make_inputs, _ = directory_inputs(models[0][2].parent, models[0][2])
    runtimes = []
    for label, _kind, path in models:
        before = rss_bytes()
        runtime = open_onnx(label, path, threads=args.threads)
        inputs = make_inputs(1, lengths[0])
        runtimes.append(warm_up(runtime, inputs, args.warmup, rss_before=before))
    timings = measure_interleaved(
        runtimes,
        [(1, length) for length in lengths],
        make_inputs,
        iterations=args.iterations,
        warmup=args.warmup,
    )
    rows = []
    for label, kind, path in models:
        mine = [t for t in timings if t.runtime == label]
        rows.append(
            {
                "runtime": label,
                "kind": kind,
                "file": str(path),
                "size_mb": round(path.stat().st_size / 1e6, 1),
                "graph_sha256": graph_sha256(path),
                "p50_ms": {f"1x{t.size}": t.p50_ms for t in mine},
                "p90_ms": {f"1x{t.size}": t.p90_ms for t in mine},
            }
        )
    return rows


def render(result: dict[str, Any]) -> str:
    m = result["machine"]
    keys = [f"1x{n}" for n in result["lengths"]]
    lines = [
        f"variant search, batch 1, {result['threads']} threads, {result['iterations']} "
        f"interleaved iterations; checkpoint {result['checkpoint']}",
        f"CPU: {m['cpu']} x{m['cpus']}, load average {m['load_average_1m_5m']}; {result['date']}",
        "",
        "conversions:",
    ]
    for name, run in result["conversions"].items():
        outcome = "published" if run["exit_code"] == 0 else f"refused: {run['error']}"
        lines.append(f"  {name:<26}{outcome}")
    for table in result["searches"]:
        lines += ["", f"auto's search for {table['variant']} ({table['target']}):"]
        for c in table["candidates"]:
            latency = " ".join(f"{k} {v:.2f} ms" for k, v in c["latency_ms"].items())
            excluded = f" excluding {','.join(c['excluded_nodes'])}" if c["excluded_nodes"] else ""
            mark = "*" if c["chosen"] else " "
            agreement = "-" if c["agreement"] is None else f"{c['agreement']:.4f}"
            lines.append(
                f" {mark}{c['name']:<32}{'pass' if c['passed'] else 'FAIL':<6}"
                f"agreement {agreement}  {latency}{excluded}"
            )
    lines += ["", f"{'model':<28}{'MB':>8}" + "".join(f"{'p50 ' + k:>14}" for k in keys)]
    for r in result["rows"]:
        lines.append(
            f"{r['runtime']:<28}{r['size_mb']:>8}"
            + "".join(f"{r['p50_ms'][k]:>11.2f} ms" for k in keys)
        )
    lines += ["", f"target: each auto variant <= {1 + TOLERANCE:.2f}x the fastest fixed setting"]
    for v in result["verdicts"]:
        ratio = "-" if v["ratio"] is None else f"{v['ratio']:.3f}x {v['fastest_fixed']}"
        same = "  (the same graph: the difference is noise)" if v["same_model"] else ""
        lines.append(
            f"  {v['variant']:<12}{v['shape']:<8}{ratio:<40}"
            f"{'PASS' if v['passed'] else 'FAIL'}{same}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/onnxport-variant-search"))
    parser.add_argument("--checkpoint", type=Path, help="default: DistilBERT-base-sized, random")
    parser.add_argument(
        "--min-agreement",
        default="0.9",
        help="the gate for every conversion; 'none' keeps onnxport's default",
    )
    parser.add_argument("--lengths", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--threads", type=int, default=default_threads())
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--only", nargs="+", choices=list(SETTINGS), help="a subset of settings")
    parser.add_argument("--tiny", action="store_true", help="a tiny model: checks the script")
    parser.add_argument("--json-out", type=Path, help="write the figures as JSON here")
    parser.add_argument("--onnxport", type=Path, default=Path(sys.executable).with_name("onnxport"))
    args = parser.parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ["ONNXPORT_THREADS"] = str(args.threads)  # the search measures as we do
    ckpt = args.checkpoint or checkpoint(args.workdir, tiny=args.tiny)
    gate = [] if args.min_agreement == "none" else ["--min-agreement", args.min_agreement]
    conversions: dict[str, dict[str, Any]] = {}
    models: list[tuple[str, str, Path]] = []
    for name in args.only or list(SETTINGS):
        kind, flags, config = SETTINGS[name]
        output = args.workdir / "out" / name.replace(" ", "-")
        conversions[name] = convert(args.onnxport, ckpt, output, flags + gate, config)
        if conversions[name]["exit_code"] == 0:
            models += published_models(name, kind, output)
    if not models:
        raise SystemExit("no conversion published a model")
    load = os.getloadavg()[0]
    if load > 0.5 * (os.cpu_count() or 1):
        print(f"warning: load average {load:.1f}: the figures will be noisy", file=sys.stderr)
    import onnxruntime

    auto_dir = args.workdir / "out" / "auto"
    auto_published = conversions.get("auto", {}).get("exit_code") == 0
    rows = measure(models, args.lengths, args)
    result: dict[str, Any] = {
        "benchmark": "variant_search",
        "date": now(),
        "command": " ".join([sys.executable, *sys.argv]),
        "machine": machine(),
        "versions": {"onnxruntime": onnxruntime.__version__},
        "checkpoint": str(ckpt),
        "lengths": args.lengths,
        "threads": args.threads,
        "iterations": args.iterations,
        "conversions": conversions,
        "searches": search_tables(auto_dir) if auto_published else [],
        "rows": rows,
        "verdicts": verdicts(rows, args.lengths),
    }
    print(render(result))
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        print(f"\nwrote {args.json_out}")
    return 0 if all(v["passed"] for v in result["verdicts"]) else 1


if __name__ == "__main__":
    sys.exit(main())
