"""`onnxport demo`: train (once) a small résumé entity tagger, convert it as a training
pipeline would, and show the validation, the held-out F1 and the benchmark."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from onnxport.commands.benchmark import benchmark_table
from onnxport.commands.console import console, print_path, setup_logging, stdout


def demo_command(
    root: Annotated[Path, typer.Option(help="Where the demo writes its project.")] = Path("demo"),
    cache_dir: Annotated[
        Path | None, typer.Option(help="Where the trained demo checkpoint is cached.")
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Train (once) a small résumé entity tagger, convert it as a pipeline would, show it all."""
    from rich.table import Table

    from onnxport.artifact.manifest import read_manifest
    from onnxport.commands.render import ChildLines, ProgressPrinter, print_manifest
    from onnxport.demo.project import prepare_demo_project, score_variants
    from onnxport.demo.training import HELD_OUT_EXAMPLES
    from onnxport.orchestration import execute_conversion

    setup_logging(verbose)
    logging.getLogger("onnxport.orchestration").setLevel(logging.INFO)
    logging.getLogger("onnxport.demo.training").setLevel(logging.INFO)
    console.print("[bold]1/4[/bold] demo model (trained once on synthetic résumé lines, cached)")
    project = prepare_demo_project(root, cache_dir)
    print_path(console, "    training output", project.training_dir)
    console.print("[bold]2/4[/bold] execute_conversion: export, optimize, int8, validate, track")

    output = execute_conversion(
        root_dir=project.root,
        config_dir=project.config_dir,
        parent_training_output_dir=project.training_dir,
        parent_spec_fp=project.spec_fp,
        parent_exec_fp=project.exec_fp,
        experiment_config=None,
        conversion_experiment_name="onnxport-demo",
        platform="local",
        on_log_line=ChildLines(console, verbose, indent="    "),
        on_progress=ProgressPrinter(console, indent="    "),
    )
    print_manifest(stdout, read_manifest(output), output)
    console.print(
        f"[bold]3/4[/bold] held-out entity F1 of each model ({HELD_OUT_EXAMPLES} synthetic "
        "résumé lines)"
    )
    scores = Table(title="held-out entity F1")
    scores.add_column("model")
    scores.add_column("entity F1", justify="right")
    for name, value in score_variants(output, project.training_dir).items():
        scores.add_row(name, f"{value:.4f}")
    stdout.print(scores)
    console.print("[bold]4/4[/bold] benchmark: PyTorch eager against each ONNX model")
    stdout.print(benchmark_table(_demo_benchmark(output)))
    print_path(stdout, "report", f"{output / 'report.html'} (and report.md)")
    print_path(
        stdout,
        "MLflow UI",
        f".venv/bin/mlflow ui --backend-store-uri sqlite:///{project.root}/mlflow.db",
    )


def _demo_benchmark(output: Path):
    """The demo conversion's benchmark: measured once (batch 1, sequences 32 and 128), then
    read back from the manifest, as the conversion itself is reused."""
    from onnxport.artifact.manifest import read_manifest
    from onnxport.benchmark import BenchmarkSettings
    from onnxport.commands.benchmark import run_benchmark

    recorded = read_manifest(output).benchmark
    if recorded is not None:
        console.print("    [dim]reusing the recorded benchmark[/dim]")
        return recorded
    settings = BenchmarkSettings(batch_sizes=(1,), seq_lengths=(32, 128), iterations=30)
    return run_benchmark(output, settings, include_pytorch=True, console=console).benchmark
