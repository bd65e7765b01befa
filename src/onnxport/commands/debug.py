"""`onnxport debug OUT_DIR`: where does each published model part ways with its reference?"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from onnxport.commands.console import literal
from onnxport.request.config import Exporter, SourceConfig, parse_conversion_config

if TYPE_CHECKING:
    from onnxport.artifact.reader import PublishedDirectory
    from onnxport.sources.base import Source


def debug_command(
    output_dir: Annotated[Path, typer.Argument(help="A converted output directory.")],
    length: Annotated[int, typer.Option(help="Sequence length of the input compared.")] = 37,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Compare every published model node by node: fp32 with PyTorch (by the yardstick its
    validation recorded), each variant with the fp32 graph it was made from."""
    from rich.console import Console
    from rich.table import Table

    from onnxport.artifact.reader import PublishedDirectory
    from onnxport.commands.console import setup_logging
    from onnxport.sources import load_source
    from onnxport.verify.divergence.pytorch import divergence_from_pytorch
    from onnxport.verify.divergence.variant import divergence_from_base
    from onnxport.verify.validate import DEFAULT_TOLERANCES, Judging

    setup_logging(verbose=False)
    published = PublishedDirectory.open(output_dir)
    manifest = published.manifest
    fp32 = published.output("fp32")
    settings = SourceConfig.model_validate(manifest.config.get("source", {}))
    source = load_source(Path(manifest.source.path), settings)
    size = source.example_shape[1] if source.modality.value == "vision" else length
    inputs = {k: v.numpy() for k, v in source.make_inputs(1, size, 0).items()}
    variants = [out for out in published.published() if out.variant != "fp32"]
    # The yardstick that judged the fp32 model: the error budget, or the tolerance.
    judging = Judging.recorded(fp32.validation)
    with tempfile.TemporaryDirectory(prefix="onnxport-debug-") as scratch:
        base = _variant_base(published, source, Path(scratch)) if variants else None
        del source  # loaded again after the ONNX side has run: never both in memory
        results = {
            "fp32": divergence_from_pytorch(
                lambda: load_source(Path(manifest.source.path), settings),
                published.path / fp32.file,
                inputs,
                opset=manifest.export.opset,
                judging=judging,
            )
        }
        for out in variants:
            results[out.variant] = divergence_from_base(
                base,
                published.path / out.file,
                inputs,
                tolerance=DEFAULT_TOLERANCES.get(out.variant, judging.tolerance),
            )
    if json_output:
        print(json.dumps({k: v.model_dump(mode="json") for k, v in results.items()}, indent=2))
        return
    table = Table(title=literal(f"onnxport debug: {output_dir}"))
    for column in ("variant", "against", "values compared", "finding"):
        table.add_column(column)
    for variant, found in results.items():
        finding = found.summary() if found.first or found.note else "no divergence"
        # A remedy holds brackets (`quantize.nodes_to_exclude: [node]`): never markup.
        table.add_row(variant, found.against, str(found.compared), literal(finding))
    Console(width=140).print(table)


def _variant_base(published: PublishedDirectory, source: Source, scratch: Path) -> Path:
    """The graph the variants were made from: the published fp32 model when no pass changed
    it, else the graph as exported (the pipeline quantizes that one and publishes the
    optimized one), exported again into `scratch` the way the conversion exported it."""
    from onnxport.export.cache.use import CacheUse, ExportSettings, export_with_cache

    fp32 = published.output("fp32")
    if not fp32.passes:
        return published.path / fp32.file
    manifest = published.manifest
    config = parse_conversion_config(manifest.config, origin=str(published.path / "manifest.json"))
    path = scratch / fp32.file
    export_with_cache(
        source,
        path,
        ExportSettings(
            opset_version=manifest.export.opset,
            exporter=Exporter(manifest.export.exporter),
            external_data=config.output.external_data,
            keep_debug_metadata=config.output.keep_debug_metadata,
        ),
        CacheUse.USE if config.execution.export_cache else CacheUse.OFF,
    )
    return path
