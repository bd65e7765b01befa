"""What `onnxport benchmark` logs to MLflow: its figures as metrics, its reports as
artifacts."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING

from onnxport.artifact.manifest import REPORT_FILENAME
from onnxport.errors import TrackingError, one_line
from onnxport.tracking.store import quiet_mlflow

if TYPE_CHECKING:  # the benchmark module imports onnxruntime; the parent process need not
    from onnxport.artifact.records.benchmark import BenchmarkRecord


def benchmark_metrics(result: BenchmarkRecord) -> dict[str, float]:
    """`benchmark.<runtime>.b<batch>.s<size>.p50_ms` and the like, per runtime and shape; a
    text-generation conversion's `benchmark.<runtime>.decode.tokens_per_s` and the like."""
    from onnxport.artifact.records.benchmark import PYTORCH

    metrics: dict[str, float] = {}
    for runtime in result.runtimes:
        metrics[f"benchmark.{runtime.name}.load_seconds"] = runtime.load_seconds
        if runtime.rss_growth_mb is not None:
            metrics[f"benchmark.{runtime.name}.rss_growth_mb"] = runtime.rss_growth_mb
    for t in result.timings:
        prefix = f"benchmark.{t.runtime}.b{t.batch_size}.s{t.size}"
        metrics[f"{prefix}.p50_ms"] = t.p50_ms
        metrics[f"{prefix}.p90_ms"] = t.p90_ms
        metrics[f"{prefix}.p99_ms"] = t.p99_ms
        metrics[f"{prefix}.throughput"] = t.throughput
        speedup = result.speedup(t)
        if speedup is not None and t.runtime != PYTORCH:
            metrics[f"{prefix}.speedup_vs_pytorch"] = round(speedup, 4)
    if result.generation is not None:
        for decode in result.generation.decode:
            prefix = f"benchmark.{decode.runtime}.decode"
            metrics[f"{prefix}.tokens_per_s"] = decode.tokens_per_s
            metrics[f"{prefix}.peak_rss_mb"] = decode.peak_rss_mb
            if decode.bandwidth_share is not None:
                metrics[f"{prefix}.bandwidth_share"] = decode.bandwidth_share
        metrics["benchmark.memory_bandwidth_gb_s"] = result.generation.bandwidth_gb_s
    # Unstable figures log no speed-up (`BenchmarkRecord.speedup`); this says why.
    metrics["benchmark.unstable"] = 1.0 if result.unstable else 0.0
    return {k.replace("-", "_"): v for k, v in metrics.items()}


def log_benchmark(result: BenchmarkRecord, directory: Path) -> None:
    """Log benchmark figures as metrics and the reports as artifacts to the active run, or
    to the run `MLFLOW_RUN_ID` names."""
    quiet_mlflow()
    import mlflow

    from onnxport.artifact.report import REPORT_HTML_FILENAME, REPORT_PLOT_FILENAME

    run = contextlib.nullcontext() if mlflow.active_run() else mlflow.start_run()
    try:
        with run:
            mlflow.log_metrics(benchmark_metrics(result))
            for name in (REPORT_FILENAME, REPORT_HTML_FILENAME, REPORT_PLOT_FILENAME):
                if (directory / name).is_file():
                    mlflow.log_artifact(str(directory / name))
    except Exception as e:  # MLflow and its stores raise many types
        message = one_line(e)
        raise TrackingError(f"cannot log the benchmark to MLflow: {message}") from e
