"""The `onnxport` command: parses, builds a request, calls the library, renders the result.

`--debug` (anywhere on the line) shows tracebacks; without it an error is one short message
and a non-zero exit code: 2 for input the user can fix, 1 for a conversion that failed.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console

from onnxport.cli_azureml import azureml_app
from onnxport.cli_benchmark import benchmark_command, benchmark_table, report_command
from onnxport.cli_debug import debug_command
from onnxport.cli_predict import predict_command
from onnxport.config import (
    ConversionConfig,
    Exporter,
    ExternalData,
    OptimizeLevel,
    load_conversion_config,
)
from onnxport.errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED, InternalError, OnnxportError
from onnxport.process import exit_process, freeze_startup_objects, own_process
from onnxport.tasks import Task

app = typer.Typer(
    name="onnxport",
    help="Convert trained PyTorch and Hugging Face models to validated ONNX models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Pipelines read our output from logs: keep tables whole rather than wrapped at 80 columns.
console = Console(stderr=True, width=None if sys.stderr.isatty() else 120)
stdout = Console(width=None if sys.stdout.isatty() else 120)


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    # torch.onnx logs optional-dependency notices (torchvision) at WARNING on every export.
    logging.getLogger("torch").setLevel(logging.INFO if verbose else logging.ERROR)
    # onnxruntime.quantization advises pre-processing on the root logger; we run shape
    # inference ourselves (see passes/quantize.py).
    for handler in logging.getLogger().handlers:
        handler.addFilter(
            lambda record: (
                "pre-processing before quantization" not in record.getMessage()
                and "run pre-processing" not in record.getMessage()
            )
        )


def _config(config_file: Path | None) -> ConversionConfig:
    return load_conversion_config(config_file) if config_file else ConversionConfig()


@app.command()
def convert(
    source: Annotated[
        Path,
        typer.Argument(
            help="Checkpoint directory (config.json + weights), torch.export .pt2, TorchScript "
            ".pt, or a weights file with --factory and --input-spec."
        ),
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output directory.")],
    task: Annotated[Task | None, typer.Option(help="Override the task from config.json.")] = None,
    opset: Annotated[int | None, typer.Option(help="ONNX opset (default 18).")] = None,
    exporter: Annotated[Exporter | None, typer.Option(help="Exporter to use.")] = None,
    quantize: Annotated[
        str | None,
        typer.Option(help="Also publish a variant: int8 (dynamic), int8-static, fp16, none."),
    ] = None,
    optimize: Annotated[
        OptimizeLevel | None, typer.Option(help="Graph optimization level.")
    ] = None,
    min_agreement: Annotated[
        float | None, typer.Option(help="Task-level accuracy gate for every variant (0-1).")
    ] = None,
    external_data: Annotated[
        ExternalData | None,
        typer.Option(
            help="Weights in <file>.data: auto (above 2 GB), always (less memory per "
            "ONNX Runtime session), never."
        ),
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="A conversion.yaml file.")
    ] = None,
    force: Annotated[bool, typer.Option(help="Replace a complete output directory.")] = False,
    allow_pickle: Annotated[
        bool, typer.Option(help="Load pickle-based weights (pytorch_model.bin).")
    ] = False,
    trust_remote_code: Annotated[
        bool, typer.Option(help="Run model code shipped with the checkpoint.")
    ] = False,
    factory: Annotated[
        str | None,
        typer.Option(help="module:callable that builds the model of a weights file (runs it)."),
    ] = None,
    input_spec: Annotated[
        Path | None,
        typer.Option(help="YAML/JSON: a plain model's input names, dtypes and shapes."),
    ] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the manifest as JSON instead of tables.")
    ] = False,
    localize: Annotated[
        bool, typer.Option(help="After a failed validation, find the first diverging node.")
    ] = True,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log each step.")] = False,
    benchmark: Annotated[
        bool, typer.Option(help="Then benchmark the published models against PyTorch.")
    ] = False,
) -> None:
    """Convert a checkpoint to a validated ONNX model."""
    from onnxport.pipeline import ConversionRequest
    from onnxport.pipeline import convert as run_conversion
    from onnxport.render import ProgressPrinter, manifest_tables

    _setup_logging(verbose)
    settings = _config(config).with_overrides(
        onnx={
            "opset_version": opset,
            "exporter": exporter.value if exporter else None,
            "quantization": quantize,
            "optimize": optimize.value if optimize else None,
        },
        validation={"min_task_agreement": min_agreement, "localize": None if localize else False},
        output={"external_data": external_data.value if external_data else None},
        source={
            "task": task.value if task else None,
            "allow_pickle": allow_pickle or None,
            "trust_remote_code": trust_remote_code or None,
            "factory": factory,
            "input_spec": str(input_spec) if input_spec else None,
        },
    )
    request = ConversionRequest(source_path=source, output_dir=output, config=settings, force=force)
    freeze_startup_objects()
    manifest = run_conversion(request, progress=ProgressPrinter(console))
    if benchmark:
        from onnxport.cli_benchmark import benchmark_published

        manifest = benchmark_published(output, console)
    if json_output:
        stdout.print_json(manifest.to_json())
        return
    for table in manifest_tables(manifest, str(output)):
        stdout.print(table)


@app.command()
def demo(
    root: Annotated[Path, typer.Option(help="Where the demo writes its project.")] = Path("demo"),
    cache_dir: Annotated[
        Path | None, typer.Option(help="Where the trained demo checkpoint is cached.")
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Train (once) a small résumé entity tagger, convert it as a pipeline would, show it all."""
    from rich.table import Table

    from onnxport.demo_project import prepare_demo_project, score_variants
    from onnxport.manifest import read_manifest
    from onnxport.orchestration import execute_conversion
    from onnxport.render import manifest_tables

    _setup_logging(verbose)
    logging.getLogger("onnxport.orchestration").setLevel(logging.INFO)
    logging.getLogger("onnxport.demo").setLevel(logging.INFO)
    console.print("[bold]1/4[/bold] demo model (trained once on synthetic résumé lines, cached)")
    project = prepare_demo_project(root, cache_dir)
    console.print(f"    training output: {project.training_dir}")
    console.print("[bold]2/4[/bold] execute_conversion: export, optimize, int8, validate, track")

    def show(line: str) -> None:
        if verbose or "onnxport.execution: stage" in line or " ERROR " in line:
            console.print(f"    [dim]{line}[/dim]", highlight=False)

    output = execute_conversion(
        root_dir=project.root,
        config_dir=project.config_dir,
        parent_training_output_dir=project.training_dir,
        parent_spec_fp=project.spec_fp,
        parent_exec_fp=project.exec_fp,
        experiment_config=None,
        conversion_experiment_name="onnxport-demo",
        platform="local",
        on_log_line=show,
    )
    console.print("[bold]3/4[/bold] held-out entity F1 of each model")
    for table in manifest_tables(read_manifest(output), str(output)):
        stdout.print(table)
    scores = Table(title="held-out entity F1 (300 synthetic résumé lines)")
    scores.add_column("model")
    scores.add_column("entity F1", justify="right")
    for name, value in score_variants(output, project.training_dir).items():
        scores.add_row(name, f"{value:.4f}")
    stdout.print(scores)
    console.print("[bold]4/4[/bold] benchmark: PyTorch eager against each ONNX model")
    stdout.print(benchmark_table(_demo_benchmark(output), str(output)))
    stdout.print(f"report:    {output / 'report.html'} (and report.md)", soft_wrap=True)
    stdout.print(
        f"MLflow UI: .venv/bin/mlflow ui --backend-store-uri sqlite:///{project.root}/mlflow.db",
        soft_wrap=True,
    )


def _demo_benchmark(output: Path):
    """The demo conversion's benchmark: measured once (batch 1, sequences 32 and 128), then
    read back from the manifest, as the conversion itself is reused."""
    from onnxport.benchmark import BenchmarkResult, BenchmarkSettings
    from onnxport.cli_benchmark import run_benchmark
    from onnxport.manifest import read_manifest

    recorded = read_manifest(output).benchmark
    if recorded is not None:
        console.print("    [dim]reusing the recorded benchmark[/dim]")
        return BenchmarkResult.from_dict(recorded)
    settings = BenchmarkSettings(batch_sizes=(1,), seq_lengths=(32, 128), iterations=30)
    return run_benchmark(output, settings, include_pytorch=True, console=console)


@app.command("run")
def run_from_training(
    config_dir: Annotated[Path, typer.Option(help="Directory with conversion.yaml.")],
    parent_training_dir: Annotated[
        Path, typer.Option(help="Training output: …/spec_<fp>_exec_<fp>/v<n>.")
    ],
    parent_spec_fp: Annotated[str, typer.Option(help="The training run's spec fingerprint.")],
    parent_exec_fp: Annotated[str, typer.Option(help="The training run's exec fingerprint.")],
    root_dir: Annotated[Path, typer.Option(help="Project root for outputs and mlflow.db.")] = Path(
        "."
    ),
    experiment_name: Annotated[
        str | None, typer.Option(help="MLflow experiment (default: experiment.yaml's).")
    ] = None,
    platform: Annotated[str | None, typer.Option(help="local, azureml, colab, kaggle.")] = None,
    parent_training_run_id: Annotated[
        str | None, typer.Option(help="The training run's MLflow run id.")
    ] = None,
    force: Annotated[bool, typer.Option(help="Convert again even if a result exists.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Convert a training run's checkpoint, tracked in MLflow (`python -m onnxport.cli` form)."""
    from onnxport.manifest import read_manifest
    from onnxport.orchestration import execute_conversion
    from onnxport.render import manifest_tables

    _setup_logging(verbose)
    logging.getLogger("onnxport.orchestration").setLevel(logging.INFO)

    def show(line: str) -> None:
        if verbose or "onnxport.execution: stage" in line or " ERROR " in line:
            console.print(f"  [dim]{line}[/dim]", highlight=False)

    output = execute_conversion(
        root_dir=root_dir,
        config_dir=config_dir,
        parent_training_output_dir=parent_training_dir,
        parent_spec_fp=parent_spec_fp,
        parent_exec_fp=parent_exec_fp,
        experiment_config=None,
        conversion_experiment_name=experiment_name,
        platform=platform,
        parent_training_run_id=parent_training_run_id,
        force=force,
        on_log_line=show,
    )
    for table in manifest_tables(read_manifest(output), str(output)):
        console.print(table)
    stdout.print(str(output), highlight=False, soft_wrap=True)


app.command("predict")(predict_command)
app.command("debug")(debug_command)
app.command("benchmark")(benchmark_command)
app.command("report")(report_command)
app.add_typer(azureml_app, name="azureml")


def _print_error(error: BaseException, debug: bool) -> int:
    from rich.markup import escape  # messages hold brackets: "pip install 'onnxport[azureml]'"

    if debug:
        traceback.print_exception(error)
    if isinstance(error, OnnxportError):
        console.print(
            f"[red]error[/red] ({error.stage}): {escape(error.message)}",
            highlight=False,
            soft_wrap=True,
        )
        if error.hint:
            console.print(f"  hint: {error.hint}", highlight=False, soft_wrap=True, markup=False)
        return error.exit_code
    wrapped = InternalError(f"{type(error).__name__}: {error}")
    console.print(
        f"[red]internal error[/red]: {escape(wrapped.message)}\n"
        "  this is a bug in onnxport; rerun with --debug and report the traceback",
        highlight=False,
    )
    return wrapped.exit_code


def main(argv: list[str] | None = None) -> int:
    """Entry point of `onnxport` and `python -m onnxport.cli`."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("ONNXPORT_DEBUG") == "1"
    args = [a for a in args if a != "--debug"]
    if args and args[0].startswith("--") and args[0] not in ("--help", "-h"):
        # The platform calls `python -m onnxport.cli --config-dir ... --parent-training-dir ...`.
        args.insert(0, "run")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    try:
        # Without standalone mode, click returns a `typer.Exit(code)` as the value.
        returned = app(args=args, prog_name="onnxport", standalone_mode=False)
    except OnnxportError as e:
        return _print_error(e, debug)
    except typer.Exit as e:
        return e.exit_code
    except (typer.Abort, KeyboardInterrupt):
        return _interrupted()
    except Exception as e:
        import click

        # typer vendors its own click (typer._click): usage errors may be either kind.
        if isinstance(e, (click.ClickException, typer.TyperException)) and hasattr(e, "show"):
            e.show()
            return e.exit_code if e.exit_code else EXIT_BAD_INPUT
        return _print_error(e, debug)
    if returned == EXIT_INTERRUPTED:
        # Typer turns Ctrl-C inside a command into this return value, and says nothing.
        return _interrupted()
    return returned if isinstance(returned, int) else 0


def _interrupted() -> int:
    console.print("interrupted; nothing was published")
    return EXIT_INTERRUPTED


def run() -> NoReturn:
    """The `onnxport` command and `python -m onnxport.cli`: `main()`, then a fast exit."""
    own_process()
    exit_process(main())


if __name__ == "__main__":
    run()
