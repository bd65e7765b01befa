"""Benchmark: convert a DistilBERT-base-sized token classifier, measure time and peak memory.

Builds once (into --workdir) a checkpoint with the default `DistilBertConfig()` and
num_labels=9 (66M parameters, random weights, seed 0, safetensors) plus a WordPiece tokenizer
trained offline, then runs `onnxport convert <ckpt> -o <out> --json --force` as a child
process, --runs times. For each run it measures wall time and the child's peak RSS three
ways: psutil sampling of the process tree every --interval seconds (also attributed to the
stage printed on stderr at that moment), the child's own ru_maxrss from os.wait4, and the
manifest's `peak_rss_mb`. Afterwards it recomputes the fp32 max abs diff and argmax
agreement per validation shape with onnxport's own validation code.

Run from the repository root:

    .venv/bin/python benchmarks/convert_distilbert_base.py --runs 3 \\
        --json-out /tmp/onnxport-bench/result.json

Targets (issue): peak RSS <= 3x the fp32 weight size, fp32 max abs diff < 1e-4,
argmax agreement 1.0 on every shape.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

NUM_LABELS = 9
TARGET_RSS_RATIO = 3.0
TARGET_MAX_ABS_DIFF = 1e-4
TARGET_AGREEMENT = 1.0
MB = 1024.0 * 1024.0
# The CLI's ProgressPrinter prints "… <label>" on stderr when a stage starts and
# "✓ <label> 1.2 s" when it ends; the labels are the stages' own (onnxport.progress.Stage).
START_LINE = re.compile(r"^…\s+(?P<label>.+?)\s*$")
DONE_LINE = re.compile(r"^[✓✗]\s+(?P<label>.+?)\s+[\d.]+ s\s*$")


def stage_names() -> dict[str, str]:
    """Progress label -> stage name."""
    from onnxport.progress import Stage

    return {stage.label: stage.value for stage in Stage}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def build_checkpoint(directory: Path, vocab_size: int, seed: int = 0) -> Path:
    """The DistilBERT-base token classifier and its tokenizer, built once into `directory`;
    another `seed`: the same config with other weights."""
    if (directory / "model.safetensors").is_file() and (directory / "tokenizer.json").is_file():
        return directory
    import torch
    from transformers import DistilBertConfig, DistilBertForTokenClassification

    from onnxport.demo.training import corpus, train_wordpiece_tokenizer

    print(f"building the checkpoint in {directory} (once)", file=sys.stderr)
    directory.mkdir(parents=True, exist_ok=True)
    train_wordpiece_tokenizer(corpus(), directory, vocab_size=vocab_size)
    # The config keeps DistilBERT-base's vocab_size of 30522: the embedding matrix is the real
    # size; the tokenizer's ids are simply all smaller than it.
    config = DistilBertConfig(num_labels=NUM_LABELS)
    torch.manual_seed(seed)
    model = DistilBertForTokenClassification(config).eval()
    model.save_pretrained(directory, safe_serialization=True)
    return directory


def git_revision() -> str | None:
    """The repository's commit, with `+dirty` when src/ has uncommitted changes."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "src"], cwd=root, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        return None
    return f"{head}+dirty" if head and dirty else head or None


def weights_bytes(checkpoint: Path) -> int:
    return sum(f.stat().st_size for f in checkpoint.glob("*.safetensors"))


def tree_rss(process: psutil.Process) -> int:
    """Resident bytes of a process and all its descendants (0 once it has exited)."""
    total = 0
    try:
        members = [process, *process.children(recursive=True)]
    except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
        return 0
    for member in members:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            total += member.memory_info().rss
    return total


@dataclass
class Monitor:
    """Samples the child's tree RSS and timestamps the stage lines it prints on stderr."""

    pid: int
    interval: float
    started: float
    samples: list[tuple[float, int]] = field(default_factory=list)
    events: list[tuple[float, str, str]] = field(default_factory=list)  # (t, stage, start|done)
    stderr_lines: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    labels: dict[str, str] = field(default_factory=stage_names)

    def sample(self) -> None:
        process = psutil.Process(self.pid)
        while not self.stop.is_set():
            rss = tree_rss(process)
            if rss:
                self.samples.append((time.perf_counter() - self.started, rss))
            self.stop.wait(self.interval)

    def read_stderr(self, stream: Any) -> None:
        for raw in iter(stream.readline, b""):
            now = time.perf_counter() - self.started
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.stderr_lines.append(line)
            for pattern, kind in ((START_LINE, "start"), (DONE_LINE, "done")):
                match = pattern.match(line.strip())
                if match:
                    label = match["label"]
                    self.events.append((now, self.labels.get(label, label), kind))
        stream.close()

    def stage_at(self, t: float) -> str:
        """The stage running at time t: `startup` (imports) before the first, `exit` after."""
        current = "startup"
        for when, stage, kind in self.events:
            if when > t:
                break
            current = stage if kind == "start" else f"after_{stage}"
        return "exit" if current == "after_publish" else current

    def peak_per_stage(self) -> dict[str, float]:
        peaks: dict[str, float] = {}
        for t, rss in self.samples:
            stage = self.stage_at(t)
            peaks[stage] = max(peaks.get(stage, 0.0), rss / MB)
        return {k: round(v, 1) for k, v in peaks.items()}


def run_conversion(
    executable: Path, checkpoint: Path, output: Path, interval: float, extra: list[str]
) -> dict[str, Any]:
    """One measured `onnxport convert` in a child process."""
    command = [str(executable), "convert", str(checkpoint), "-o", str(output), "--json", "--force"]
    command += extra
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
    stdout_file = output.with_name(output.name + ".stdout.json")
    started = time.perf_counter()
    with stdout_file.open("wb") as stdout:
        child = subprocess.Popen(command, stdout=stdout, stderr=subprocess.PIPE, env=env)
        monitor = Monitor(child.pid, interval, started)
        threads = [
            threading.Thread(target=monitor.sample, daemon=True),
            threading.Thread(target=monitor.read_stderr, args=(child.stderr,), daemon=True),
        ]
        for thread in threads:
            thread.start()
        # wait4 reaps the child and returns its own rusage: ru_maxrss of this run alone
        # (RUSAGE_CHILDREN would be the maximum over every child so far).
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - started
        child.returncode = os.waitstatus_to_exitcode(status)
        monitor.stop.set()
        for thread in threads:
            thread.join(timeout=10)
    if child.returncode != 0:
        tail = "\n".join(monitor.stderr_lines[-20:])
        raise SystemExit(f"onnxport convert failed (exit {child.returncode}):\n{tail}")
    manifest = json.loads(stdout_file.read_text(encoding="utf-8"))
    fp32 = manifest["outputs"][0]
    validation = fp32["validation"]
    sampled_peak = max((rss for _, rss in monitor.samples), default=0) / MB
    return {
        "wall_seconds": round(wall, 2),
        "peak_rss_mb_sampled": round(sampled_peak, 1),
        "peak_rss_mb_wait4": round(usage.ru_maxrss / 1024.0, 1),
        "peak_rss_mb_manifest": manifest.get("peak_rss_mb"),
        "peak_rss_mb_per_stage_sampled": monitor.peak_per_stage(),
        "samples": len(monitor.samples),
        "user_seconds": round(usage.ru_utime, 2),
        "system_seconds": round(usage.ru_stime, 2),
        "timings": manifest.get("timings", {}),
        "exporter": manifest["export"]["exporter"],
        "opset": manifest["export"]["opset"],
        "onnx_size_mb": round(
            ((fp32.get("size_bytes") or 0) + (fp32.get("data_size_bytes") or 0)) / MB, 1
        ),
        "max_abs_diff": {k: v["max_abs_diff"] for k, v in validation["outputs"].items()},
        "task_agreement": validation["task_agreement"]["value"],
        "validation_passed": validation["passed"],
        "versions": manifest.get("versions", {}),
        "model_file": fp32["file"],
    }


def per_shape_figures(checkpoint: Path, model_path: Path) -> list[dict[str, Any]]:
    """fp32 max abs diff and argmax agreement per shape, with the pipeline's own functions.

    The manifest keeps the worst figure over the shapes; this runs `validate_model` on one
    shape at a time with the same references (same inputs and seed) as the pipeline.
    """
    from onnxport.preparation import validation_shapes
    from onnxport.request.config import ConversionConfig
    from onnxport.sources import load_source
    from onnxport.verify.references import compute_references
    from onnxport.verify.validate import DEFAULT_TOLERANCES, Judging, validate_model

    config = ConversionConfig()
    source = load_source(checkpoint, config.source)
    references = compute_references(
        source, validation_shapes(source, config), seed=config.validation.seed
    )
    source.module = None  # type: ignore[assignment]
    rows = []
    for reference in references:
        result = validate_model(
            model_path,
            [reference],
            task=source.task,
            judging=Judging(DEFAULT_TOLERANCES["fp32"]),
            min_agreement=config.validation.min_task_agreement,
        )
        rows.append(
            {
                "shape": list(reference.shape),
                "max_abs_diff": max(c.max_abs_diff for c in result.outputs.values()),
                "agreement": result.task_agreement.value,
                "metric": result.task_agreement.metric,
                "passed": result.passed,
            }
        )
    return rows


def summarize(runs: list[dict[str, Any]], weights_mb: float) -> dict[str, Any]:
    def median(key: str) -> float:
        return round(statistics.median(r[key] for r in runs), 2)

    stages = list(dict.fromkeys(s for r in runs for s in r["timings"]))
    phases = list(dict.fromkeys(s for r in runs for s in r["peak_rss_mb_per_stage_sampled"]))
    peak = max(
        max(r["peak_rss_mb_sampled"], r["peak_rss_mb_wait4"], r["peak_rss_mb_manifest"] or 0)
        for r in runs
    )
    return {
        "wall_seconds_median": median("wall_seconds"),
        "peak_rss_mb_sampled_median": median("peak_rss_mb_sampled"),
        "peak_rss_mb_wait4_median": median("peak_rss_mb_wait4"),
        "peak_rss_mb_manifest_median": median("peak_rss_mb_manifest"),
        "peak_rss_mb_max": peak,
        "ratio_peak_to_weights": round(peak / weights_mb, 2),
        "timings_median": {
            s: round(statistics.median(r["timings"].get(s, 0.0) for r in runs), 2) for s in stages
        },
        "peak_rss_mb_per_stage_median": {
            p: round(
                statistics.median(r["peak_rss_mb_per_stage_sampled"].get(p, 0.0) for r in runs), 1
            )
            for p in phases
        },
    }


def render(result: dict[str, Any]) -> str:
    runs, summary = result["runs"], result["summary"]
    label_width = 34
    header = f"{'':<{label_width}}" + "".join(f"{f'run {i + 1}':>11}" for i in range(len(runs)))
    header += f"{'median':>11}"
    lines = [
        f"onnxport convert, DistilBERT-base token classification "
        f"({result['checkpoint']['num_parameters'] / 1e6:.1f}M parameters)",
        f"CPU: {result['machine']['cpu']} x{result['machine']['cpus']}, "
        f"{result['machine']['memory_gb']} GB, load average "
        f"{result['machine']['loadavg_before'][0]}; fp32 weights "
        f"{result['checkpoint']['weights_mb']:.1f} MB (MB = 2^20 bytes throughout)",
        "",
        header,
    ]

    def row(label: str, values: list[Any], median: Any) -> None:
        cells = "".join(f"{v:>11}" for v in [*values, median])
        lines.append(f"{label:<{label_width}}{cells}")

    row("wall seconds", [r["wall_seconds"] for r in runs], summary["wall_seconds_median"])
    for key, label in (
        ("peak_rss_mb_sampled", "peak RSS MB (psutil, 50 ms)"),
        ("peak_rss_mb_wait4", "peak RSS MB (wait4 ru_maxrss)"),
        ("peak_rss_mb_manifest", "peak RSS MB (manifest)"),
    ):
        row(label, [r[key] for r in runs], summary[f"{key}_median"])
    weights = result["checkpoint"]["weights_mb"]
    row(
        "ratio peak / weights",
        [round(max(r["peak_rss_mb_sampled"], r["peak_rss_mb_wait4"]) / weights, 2) for r in runs],
        summary["ratio_peak_to_weights"],
    )
    for stage, value in summary["timings_median"].items():
        row(f"  {stage} s", [r["timings"].get(stage, "-") for r in runs], value)
    for phase, value in summary["peak_rss_mb_per_stage_median"].items():
        row(
            f"  peak RSS MB during {phase}",
            [r["peak_rss_mb_per_stage_sampled"].get(phase, "-") for r in runs],
            value,
        )
    first = runs[0]
    lines += [
        "",
        f"exporter {first['exporter']}, opset {first['opset']}, "
        f"ONNX size {first['onnx_size_mb']} MB; manifest worst max abs diff "
        f"{max(first['max_abs_diff'].values()):.3g}, agreement {first['task_agreement']:.4f}",
    ]
    if result.get("per_shape"):
        lines += ["", f"{'shape':<12}{'max abs diff':>14}{'argmax agreement':>18}{'passed':>8}"]
        for s in result["per_shape"]:
            shape = "x".join(map(str, s["shape"]))
            lines.append(
                f"{shape:<12}{s['max_abs_diff']:>14.3g}{s['agreement']:>18.4f}{s['passed']!s:>8}"
            )
    lines += ["", "targets:"]
    for name, ok, detail in result["targets"]:
        lines.append(f"  {'PASS' if ok else 'FAIL'}  {name}: {detail}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/onnxport-bench"))
    parser.add_argument("--runs", type=int, default=3, help="measured conversions")
    parser.add_argument("--interval", type=float, default=0.05, help="RSS sampling, seconds")
    parser.add_argument("--vocab-size", type=int, default=2000, help="tokenizer vocabulary")
    parser.add_argument("--json-out", type=Path, help="write the figures as JSON here")
    parser.add_argument(
        "--skip-per-shape", action="store_true", help="skip the per-shape recomputation"
    )
    parser.add_argument(
        "--onnxport",
        type=Path,
        default=Path(sys.executable).with_name("onnxport"),
        help="the onnxport executable (default: beside this Python)",
    )
    parser.add_argument(
        "--onnxport-arg",
        action="append",
        default=[],
        help="an extra `onnxport convert` argument, repeatable: "
        "--onnxport-arg=--quantize --onnxport-arg=int8",
    )
    args = parser.parse_args(argv)

    checkpoint = build_checkpoint(args.workdir / "distilbert-base-token-cls", args.vocab_size)
    weights_mb = weights_bytes(checkpoint) / MB
    output = args.workdir / "onnx"
    load_before = [round(x, 2) for x in os.getloadavg()]
    runs = []
    for i in range(args.runs):
        print(f"run {i + 1}/{args.runs}: onnxport convert {checkpoint}", file=sys.stderr)
        runs.append(
            run_conversion(args.onnxport, checkpoint, output, args.interval, args.onnxport_arg)
        )
        print(
            f"  {runs[-1]['wall_seconds']} s, peak RSS {runs[-1]['peak_rss_mb_wait4']} MB",
            file=sys.stderr,
        )
    per_shape = (
        []
        if args.skip_per_shape
        else per_shape_figures(checkpoint, output / runs[-1]["model_file"])
    )
    manifest = json.loads((output / "manifest.json").read_text(encoding="utf-8"))
    summary = summarize(runs, weights_mb)
    worst_diff = max(
        [max(r["max_abs_diff"].values()) for r in runs] + [s["max_abs_diff"] for s in per_shape]
    )
    worst_agreement = min([r["task_agreement"] for r in runs] + [s["agreement"] for s in per_shape])
    result: dict[str, Any] = {
        "benchmark": "convert_distilbert_base",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(
            [str(args.onnxport), "convert", str(checkpoint), "-o", str(output), "--json", "--force"]
        ),
        "machine": {
            "cpu": cpu_model(),
            "cpus": os.cpu_count(),
            "memory_gb": round(psutil.virtual_memory().total / 1024**3, 1),
            "python": platform.python_version(),
            "loadavg_before": load_before,
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        },
        "revision": git_revision(),
        "versions": runs[0]["versions"],
        "checkpoint": {
            "path": str(checkpoint),
            "num_parameters": manifest["source"]["num_parameters"],
            "weights_mb": round(weights_mb, 1),
            "vocab_size_config": 30522,
            "tokenizer_vocab_size": args.vocab_size,
            "num_labels": NUM_LABELS,
        },
        "runs": runs,
        "summary": summary,
        "per_shape": per_shape,
        "targets": [
            (
                f"peak RSS <= {TARGET_RSS_RATIO:g}x weights",
                summary["ratio_peak_to_weights"] <= TARGET_RSS_RATIO,
                f"{summary['peak_rss_mb_max']} MB = {summary['ratio_peak_to_weights']}x "
                f"{weights_mb:.1f} MB (limit {TARGET_RSS_RATIO * weights_mb:.0f} MB)",
            ),
            (
                f"fp32 max abs diff < {TARGET_MAX_ABS_DIFF:g}",
                worst_diff < TARGET_MAX_ABS_DIFF,
                f"{worst_diff:.3g}",
            ),
            (
                f"argmax agreement = {TARGET_AGREEMENT:g}",
                worst_agreement >= TARGET_AGREEMENT,
                f"{worst_agreement:.4f}",
            ),
        ],
    }
    print(render(result))
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        print(f"\nwrote {args.json_out}")
    return 0 if all(ok for _, ok, _ in result["targets"]) else 1


if __name__ == "__main__":
    sys.exit(main())
