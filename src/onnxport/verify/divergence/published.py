"""The library side of `onnxport debug`: where each published model of a directory diverges
from its reference, node by node, whether its gate passed it or not. The fp32 model is
compared with PyTorch by the yardstick its validation recorded, each variant with the graph it
was made from by the tolerance its validation recorded, all on one input (batch 1).

The checkpoint is the one the manifest records, loaded with the manifest's settings. Nothing
is written to the directory; the graph the variants were made from, when it is not the
published fp32 model, is exported again into a temporary directory.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from onnxport.artifact.manifest import MANIFEST_FILENAME
from onnxport.artifact.reader import PublishedDirectory
from onnxport.artifact.records.divergence import DivergenceRecord
from onnxport.names import Variant
from onnxport.request.config import ConversionConfig, parse_conversion_config
from onnxport.tasks import Modality
from onnxport.verify.divergence.pytorch import divergence_from_pytorch
from onnxport.verify.divergence.variant import divergence_from_base
from onnxport.verify.validate import Judging

if TYPE_CHECKING:  # loading imports torch: only the comparison does, when it runs
    from onnxport.sources.base import Source

DEFAULT_LENGTH = 37
"""The sequence length of the input compared (an image model's is its own image size)."""


def published_divergences(
    directory: Path, *, length: int = DEFAULT_LENGTH
) -> dict[Variant, DivergenceRecord]:
    """Per published model of `directory`, where it diverges from its reference.

    Args:
        directory: a complete onnxport output directory.
        length: the sequence length of the input compared, for a text model.

    Raises `OutputError` for a directory that is not a complete, intact output, and the
    loader's errors for a checkpoint that is no longer there or no longer loads.
    """
    from onnxport.sources import load_source

    published = PublishedDirectory.open(directory)
    manifest = published.manifest
    config = parse_conversion_config(
        manifest.config, origin=str(published.path / MANIFEST_FILENAME)
    )
    checkpoint = Path(manifest.source.path)
    fp32 = published.output(Variant.FP32)
    source = load_source(checkpoint, config.source)
    size = source.example_shape[1] if source.modality is Modality.VISION else length
    inputs = {k: v.numpy() for k, v in source.make_inputs(1, size, 0).items()}
    variants = [out for out in published.published() if out.variant is not Variant.FP32]
    with tempfile.TemporaryDirectory(prefix="onnxport-debug-") as scratch:
        base = _variant_base(published, source, config, Path(scratch)) if variants else None
        del source  # loaded again after the ONNX side has run: never both in memory
        found = {
            Variant.FP32: divergence_from_pytorch(
                lambda: load_source(checkpoint, config.source),
                published.path / fp32.file,
                inputs,
                opset=manifest.export.opset,
                judging=Judging.recorded(fp32.validation),
            )
        }
        for out in variants:
            assert base is not None
            found[out.variant] = divergence_from_base(
                base,
                published.path / out.file,
                inputs,
                tolerance=Judging.recorded(out.validation).tolerance,
            )
    return found


def _variant_base(
    published: PublishedDirectory, source: Source, config: ConversionConfig, scratch: Path
) -> Path:
    """The graph the variants were made from: the published fp32 model when no pass changed
    it, else the graph as exported (a conversion quantizes that one and publishes the
    optimized one), exported again into `scratch` the way the conversion exported it."""
    from onnxport.export.cache.use import CacheUse, ExportSettings, export_with_cache

    fp32 = published.output(Variant.FP32)
    if not fp32.passes:
        return published.path / fp32.file
    path = scratch / fp32.file
    export_with_cache(
        source,
        path,
        ExportSettings(
            opset_version=published.manifest.export.opset,
            exporter=published.manifest.export.exporter,
            external_data=config.output.external_data,
            keep_debug_metadata=config.output.keep_debug_metadata,
            repeat_layers=config.onnx.repeat_layers,
        ),
        CacheUse.USE if config.execution.export_cache else CacheUse.OFF,
    )
    return path
