"""`onnxport run` (and `python -m onnxport.cli --config-dir ...`, the platform's form):
convert a training run's checkpoint through `execute_conversion`, tracked in MLflow."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from onnxport.commands.console import console, setup_logging, stdout


def run_command(
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
    from onnxport.artifact.manifest import read_manifest
    from onnxport.commands.render import ChildLines, ProgressPrinter, manifest_tables
    from onnxport.orchestration import execute_conversion

    setup_logging(verbose)
    logging.getLogger("onnxport.orchestration").setLevel(logging.INFO)

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
        on_log_line=ChildLines(console, verbose, indent="  "),
        on_progress=ProgressPrinter(console),
    )
    # The path alone goes to stdout, last, for the pipeline that called us.
    for table in manifest_tables(read_manifest(output)):
        console.print(table)
    stdout.print(str(output), highlight=False, soft_wrap=True)
