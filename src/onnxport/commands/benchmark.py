"""`onnxport benchmark OUT_DIR` and `onnxport report OUT_DIR`, registered by `cli.py`.

The benchmark command measures, records the figures in the manifest, re-renders the reports
and, inside a tracked run (`MLFLOW_RUN_ID`), logs them to MLflow. `onnxport convert
--benchmark` calls `benchmark_published` on the directory it has just published.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from onnxport.artifact.manifest import Manifest
from onnxport.artifact.records.benchmark import BenchmarkRecord
from onnxport.artifact.report import REPORT_HTML_FILENAME, REPORT_PLOT_FILENAME, rerender_reports
from onnxport.artifact.report.benchmark_tables import (
    DECODE_HEADERS,
    decode_row,
    latency_row,
    unstable_note,
)
from onnxport.benchmark import (
    DEFAULT_ITERATIONS,
    DEFAULT_NEW_TOKENS,
    DEFAULT_ROUNDS,
    DEFAULT_WARMUP,
    BenchmarkSettings,
    benchmark_directory,
    record_benchmark,
)
from onnxport.commands.console import console, literal, print_path, stdout
from onnxport.commands.flags import FlagNames
from onnxport.commands.render import ProgressPrinter
from onnxport.errors import BenchmarkInputError
from onnxport.verify.timing import default_threads

FLAGS = FlagNames(arguments={"include_pytorch=False": "--no-pytorch"})
"""What `benchmark` takes as flags, said in the errors it prints (`commands.flags`)."""


def parse_sizes(text: str, option: str) -> tuple[int, ...]:
    """`"1,8"` -> (1, 8); anything else is a one-line input error."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise BenchmarkInputError(f"{option} is empty: give comma-separated positive integers")
    try:
        return tuple(int(item) for item in items)
    except ValueError:
        raise BenchmarkInputError(
            f"{option} takes comma-separated positive integers, not {text!r}"
        ) from None


def run_benchmark(
    output_dir: Path,
    settings: BenchmarkSettings,
    *,
    include_pytorch: bool,
    console: Console,
    manifest: Manifest | None = None,
) -> Manifest:
    """Measure, record in the manifest, re-render the reports, log to MLflow when tracked;
    returns the manifest written, the figures in its `benchmark`. The benchmark stage's
    progress lines go to `console`, as `onnxport convert`'s do. `manifest`: the directory's,
    when the caller has just published it (the directory is not read again)."""
    result = benchmark_directory(
        output_dir,
        settings,
        include_pytorch=include_pytorch,
        progress=ProgressPrinter(console),
        manifest=manifest,
    )
    written = record_benchmark(output_dir, result, manifest)
    if os.environ.get("MLFLOW_RUN_ID"):
        from onnxport.tracking.benchmark import log_benchmark

        log_benchmark(result, Path(output_dir))
    if result.unstable:
        console.print(literal(f"! {unstable_note(result)}", "yellow"))
    return written


def benchmark_published(output_dir: Path, manifest: Manifest, console: Console) -> Manifest:
    """The last stage of `onnxport convert --benchmark`, on the directory it has just
    published with `manifest`: the default grid, PyTorch included.

    Its table goes to `console` (stderr) with the progress lines, so that `--json` keeps
    stdout for the manifest; returns the manifest with the benchmark recorded.
    """
    written = run_benchmark(
        output_dir, BenchmarkSettings(), include_pytorch=True, console=console, manifest=manifest
    )
    for table in benchmark_tables(written.benchmark):
        console.print(table)
    return written


def benchmark_tables(result: BenchmarkRecord) -> list[Table]:
    """The latencies, and a text-generation conversion's decode figures."""
    tables = [benchmark_table(result)]
    if result.generation is not None:
        decode = Table(title=f"decode, {result.settings.new_tokens} new tokens (greedy, batch 1)")
        for index, column in enumerate(DECODE_HEADERS):
            decode.add_column(column, justify="left" if index == 0 else "right")
        for d in result.generation.decode:
            decode.add_row(*(literal(cell) for cell in decode_row(result, d)))
        tables.append(decode)
    return tables


def benchmark_table(result: BenchmarkRecord) -> Table:
    """The latencies; the title stays short (the directory is printed on a line of its own)."""
    table = Table(
        title=f"benchmark ({result.settings.threads} threads)",
        caption=literal(unstable_note(result), "yellow") if result.unstable else None,
    )
    for column in ("batch", result.size_name, "runtime", "p50 ms", "p90 ms", "p99 ms"):
        table.add_column(column, justify="left" if column == "runtime" else "right")
    table.add_column("samples/s", justify="right")
    table.add_column("speed-up vs PyTorch", justify="right")
    for t in result.timings:
        table.add_row(*(literal(cell) for cell in latency_row(result, t)))
    return table


def benchmark_command(
    output_dir: Annotated[Path, typer.Argument(help="An onnxport output directory.")],
    batch_sizes: Annotated[
        str, typer.Option(help="Comma-separated batch sizes.", show_default=True)
    ] = "1,8",
    seq_lengths: Annotated[
        str,
        typer.Option(help="Comma-separated sequence lengths (vision: the model's image size)."),
    ] = "32,128",
    threads: Annotated[
        int | None, typer.Option(help="Threads for both runtimes (default: all usable CPUs).")
    ] = None,
    iterations: Annotated[
        int, typer.Option(help="Timed runs per runtime and shape.")
    ] = DEFAULT_ITERATIONS,
    warmup: Annotated[int, typer.Option(help="Untimed runs before them.")] = DEFAULT_WARMUP,
    new_tokens: Annotated[
        int, typer.Option(help="Text generation: tokens generated after each prompt.")
    ] = DEFAULT_NEW_TOKENS,
    rounds: Annotated[
        int, typer.Option(help="Text generation: interleaved rounds, each runtime once per round.")
    ] = DEFAULT_ROUNDS,
    no_pytorch: Annotated[
        bool, typer.Option("--no-pytorch", help="Benchmark the ONNX models alone (no torch).")
    ] = False,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the figures as JSON instead of a table.")
    ] = False,
) -> None:
    """Measure PyTorch eager and every published ONNX model, interleaved; update the report.

    A text-generation conversion is measured generating: prefill latency at each of
    --seq-lengths (batch 1), decode tokens/s over --new-tokens after 3 chat prompts, and each
    runtime's peak RSS, each runtime in a process of its own, in --rounds interleaved rounds.
    """
    settings = BenchmarkSettings(
        batch_sizes=parse_sizes(batch_sizes, "--batch-sizes"),
        seq_lengths=parse_sizes(seq_lengths, "--seq-lengths"),
        threads=default_threads() if threads is None else threads,
        iterations=iterations,
        warmup=warmup,
        new_tokens=new_tokens,
        rounds=rounds,
    )
    written = run_benchmark(output_dir, settings, include_pytorch=not no_pytorch, console=console)
    result = written.benchmark
    if json_output:
        stdout.print_json(result.model_dump_json())
        return
    print_path(stdout, "output", output_dir)
    for table in benchmark_tables(result):
        stdout.print(table)
    print_path(
        stdout, "report", f"{output_dir / REPORT_HTML_FILENAME} (plot: {REPORT_PLOT_FILENAME})"
    )


def report_command(
    output_dir: Annotated[Path, typer.Argument(help="An onnxport output directory.")],
) -> None:
    """Render report.md, report.html (and report.png) again from the manifest."""
    manifest = rerender_reports(output_dir)
    written = [n for n in manifest.files if n.startswith("report.")]
    stdout.print(
        "\n".join(str(output_dir / name) for name in sorted(written)),
        soft_wrap=True,
        highlight=False,
    )
