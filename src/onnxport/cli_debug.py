"""`onnxport debug OUT_DIR`: where does each published model part ways with its reference?"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer


def debug_command(
    output_dir: Annotated[Path, typer.Argument(help="A converted output directory.")],
    length: Annotated[int, typer.Option(help="Sequence length of the input compared.")] = 37,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Compare every published model node by node: fp32 with PyTorch, variants with fp32."""
    from rich.console import Console
    from rich.table import Table

    from onnxport.cli import _setup_logging
    from onnxport.config import SourceConfig
    from onnxport.errors import OutputError
    from onnxport.localize import localize_against_pytorch, localize_variant
    from onnxport.manifest import read_manifest
    from onnxport.sources import load_source

    _setup_logging(verbose=False)
    manifest = read_manifest(output_dir)
    fp32 = manifest.output("fp32")
    if fp32 is None or not fp32.published:
        raise OutputError(f"{output_dir} has no published fp32 model to compare")
    settings = SourceConfig.model_validate(manifest.config.get("source", {}))
    source = load_source(Path(manifest.source.path), settings)
    size = source.example_shape[1] if source.modality.value == "vision" else length
    inputs = {k: v.numpy() for k, v in source.make_inputs(1, size, 0).items()}
    del source  # loaded again after the ONNX side has run: never both in memory
    tolerance = next(iter(fp32.validation.outputs.values())) if fp32.validation else None
    results = {
        "fp32": localize_against_pytorch(
            lambda: load_source(Path(manifest.source.path), settings),
            Path(output_dir) / fp32.file,
            inputs,
            opset=manifest.export.opset,
            atol=tolerance.atol if tolerance else 1e-4,
            rtol=tolerance.rtol if tolerance else 1e-3,
        )
    }
    for out in manifest.published_outputs():
        if out.variant != "fp32":
            results[out.variant] = localize_variant(
                Path(output_dir) / fp32.file, Path(output_dir) / out.file, inputs
            )
    if json_output:
        print(json.dumps({k: v.to_dict() for k, v in results.items()}, indent=2, default=str))
        return
    table = Table(title=f"onnxport debug: {output_dir}")
    for column in ("variant", "against", "values compared", "finding"):
        table.add_column(column)
    for variant, found in results.items():
        finding = found.summary() if found.first or found.note else "no divergence"
        table.add_row(variant, found.against, str(found.compared), finding)
    Console(width=140).print(table)
