"""`onnxport convert SOURCE -o OUT`: parse the flags, build the request, convert, render."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from onnxport.commands.console import console, setup_logging, stdout
from onnxport.commands.flags import FlagNames
from onnxport.process import freeze_startup_objects
from onnxport.request.config import ConversionConfig, load_conversion_config
from onnxport.request.export_config import Exporter, ExternalData, OptimizeLevel
from onnxport.tasks import Task

FLAGS = FlagNames(
    keys={
        "onnx.opset_version": "--opset",
        "onnx.exporter": "--exporter",
        "onnx.quantization": "--quantize",
        "onnx.optimize": "--optimize",
        "validation.min_task_agreement": "--min-agreement",
        "validation.localize": "--localize",
        "output.external_data": "--external-data",
        "output.keep_debug_metadata": "--keep-debug-metadata",
        "execution.export_cache": "--cache",
        "source.task": "--task",
        "source.allow_pickle": "--allow-pickle",
        "source.trust_remote_code": "--trust-remote-code",
        "source.factory": "--factory",
        "source.input_spec": "--input-spec",
    },
    arguments={
        "force=True": "--force",
        "include_pytorch=False": "onnxport benchmark --no-pytorch",
    },
)
"""The settings `convert` takes as flags, said in the errors it prints (`commands.flags`)."""


def _config(config_file: Path | None) -> ConversionConfig:
    return load_conversion_config(config_file) if config_file else ConversionConfig()


def convert_command(
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
        typer.Option(
            help="Also publish a variant: int8 (dynamic), int8-static, fp16, none, or auto "
            "(the fastest int8 setting that passes the gate, searched)."
        ),
    ] = None,
    optimize: Annotated[
        OptimizeLevel | None,
        typer.Option(help="Graph optimization level; auto: the fastest that validates, measured."),
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
    keep_debug_metadata: Annotated[
        bool,
        typer.Option(
            help="Keep the exporter's stack traces in the models (they hold this machine's "
            "file paths)."
        ),
    ] = False,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="A conversion.yaml file.")
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            help="Replace a complete output directory; export even when the export cache "
            "holds the graph, and store it again."
        ),
    ] = False,
    cache: Annotated[
        bool,
        typer.Option(
            help="Take the graph from the export cache when it holds this architecture's "
            "(binding this checkpoint's weights into it); --no-cache: always export."
        ),
    ] = True,
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
    from onnxport.commands.render import ProgressPrinter, print_manifest
    from onnxport.pipeline import convert as run_conversion
    from onnxport.request import ConversionRequest

    setup_logging(verbose)
    settings = _config(config).with_overrides(
        onnx={
            "opset_version": opset,
            "exporter": exporter.value if exporter else None,
            "quantization": quantize,
            "optimize": optimize.value if optimize else None,
        },
        validation={"min_task_agreement": min_agreement, "localize": None if localize else False},
        output={
            "external_data": external_data.value if external_data else None,
            "keep_debug_metadata": keep_debug_metadata or None,
        },
        execution={"export_cache": None if cache else False},
        source={
            "task": task.value if task else None,
            "allow_pickle": allow_pickle or None,
            "trust_remote_code": trust_remote_code or None,
            "factory": factory,
            "input_spec": str(input_spec) if input_spec else None,
        },
    )
    request = ConversionRequest(
        source_path=source,
        output_dir=output,
        config=settings,
        force=force,
        refresh_export_cache=force,
    )
    freeze_startup_objects()
    manifest = run_conversion(request, progress=ProgressPrinter(console))
    if benchmark:
        from onnxport.commands.benchmark import benchmark_published

        manifest = benchmark_published(output, manifest, console)
    if json_output:
        stdout.print_json(manifest.to_json())
        return
    print_manifest(stdout, manifest, output)
