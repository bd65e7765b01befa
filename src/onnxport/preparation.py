"""Before the passes: load the source, compute PyTorch's answers, export. The only part of a
conversion that needs torch.

`prepare` runs the load and export stages and returns what the rest of the pipeline needs,
torch-free (`Prepared`). For a large model (`execution.isolate_export`, by default above
`ISOLATE_ABOVE_BYTES` of weights) it runs in a process of its own (`onnxport.isolation`)
which ends before the passes begin: the model, the traced program and torch itself leave
memory, and the passes and quantization run with what they need only. The child reports
its stages and hands over its result (or its typed error) on its channel.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from onnxport.artifact.records.export import ExportRecord
from onnxport.artifact.records.source import SourceRecord
from onnxport.errors import CacheError, ExportError, SourceError
from onnxport.isolation.parent import call
from onnxport.passes.base import PassContext
from onnxport.progress import ProgressCallback, Stage, StageClock
from onnxport.request import ConversionRequest
from onnxport.request.config import ConversionConfig
from onnxport.request.export_config import Exporter, Quantization
from onnxport.request.sections import IsolateExport
from onnxport.tasks import Task
from onnxport.verify.evaluation import Evaluation
from onnxport.verify.generation import GenerationProof
from onnxport.verify.shapes import validation_shapes
from onnxport.verify.validate import Reference

if TYPE_CHECKING:  # loading imports torch: only `prepare` does, when it runs
    from onnxport.sources.base import Source

logger = logging.getLogger(__name__)

ISOLATE_ABOVE_BYTES = 64 * 1024**2
"""`isolate_export: auto` exports in a process of its own above this many bytes of weights
(a child costs a few seconds of imports; below this size it would cost more than it saves)."""
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".pt2", ".ckpt")


@dataclass(frozen=True)
class Prepared:
    """What the passes, the gate and publishing need of the source and its export."""

    source: SourceRecord
    task: Task
    references: list[Reference]
    evaluation: Evaluation | None
    export: ExportRecord
    context: PassContext
    files_to_copy: Mapping[str, Path]
    float64_skipped: str | None = None
    """Why PyTorch's float64 answers are missing although the error budget asked for them."""
    generation: GenerationProof | None = None
    """PyTorch's greedy generations, for a text-generation model's generation proof."""


def prepare(request: ConversionRequest, exported: Path, clock: StageClock) -> Prepared:
    """Load, compute the references, export to `exported` (or bind the weights into the
    export cache's graph of this architecture); in this process. An image model whose graph
    refuses other sizes than its own is exported again at its own, declared fixed."""
    from onnxport.export.cache.use import CacheUse, ExportSettings, export_with_cache
    from onnxport.passes import pass_context
    from onnxport.sources import load_source
    from onnxport.verify.references import (
        pytorch_answers,
        pytorch_evaluation,
        pytorch_generation,
    )

    config = request.config
    with clock.stage(Stage.LOAD, SourceError):
        source = load_source(request.source_path, config.source)
        references, float64_skipped = pytorch_answers(
            source, validation_shapes(source, config), config
        )
        evaluation = pytorch_evaluation(source, config)
        generation = pytorch_generation(source, config)
    use = CacheUse.REFRESH if request.refresh_export_cache else CacheUse.USE
    if not config.execution.export_cache:
        use = CacheUse.OFF
    settings = ExportSettings(
        opset_version=config.onnx.opset_version,
        exporter=config.onnx.exporter,
        external_data=config.output.external_data,
        keep_debug_metadata=config.output.keep_debug_metadata,
        repeat_layers=config.onnx.repeat_layers,
    )
    with clock.stage(Stage.EXPORT, ExportError):
        export = export_with_cache(source, exported, settings, use)
        fixed = _fixed_resolution_fallback(source, exported, references, config)
        if fixed is not None:
            source, references = fixed
            export = export_with_cache(source, exported, settings, use)
    prepared = Prepared(
        source=source.record(),
        task=source.task,
        references=references,
        evaluation=evaluation,
        export=export,
        context=pass_context(source, export.exporter, config),
        files_to_copy=source.files_to_copy,
        float64_skipped=float64_skipped,
        generation=generation,
    )
    # PyTorch is done: the references hold its answers. Free its memory before ORT runs.
    source.module = None  # type: ignore[assignment]
    gc.collect()  # the exported graph holds reference cycles to the Parameters
    return prepared


def _fixed_resolution_fallback(
    source: Source, exported: Path, references: list[Reference], config: ConversionConfig
) -> tuple[Source, list[Reference]] | None:
    """For an image model PyTorch runs at any size whose exported graph refuses another size
    (a size fixed inside it at export): the source with its own resolution fixed, declared
    with the reason, and the references at that resolution; None when the graph takes them
    all. A model that validates at its own resolution is not refused for the others."""
    from onnxport.sources.huggingface_inputs import native_side, with_fixed_resolution
    from onnxport.verify.validate import first_refusal

    side = native_side(source)
    if side is None:
        return None
    own, others = [], []
    for ref in references:
        at_own_side = ref.inputs["pixel_values"].shape[2:] == (side, side)
        (own if at_own_side else others).append(ref)
    refusal = first_refusal(exported, others) if others else None
    if refusal is None:
        return None
    reason = f"the exported graph takes no other size although PyTorch does: {refusal}"
    logger.warning("%s; exported again at its fixed resolution %dx%d", reason, side, side)
    fixed = with_fixed_resolution(source, reason)
    if not own:  # validation.shapes named other sizes only: validate at the defaults
        from onnxport.verify.references import pytorch_answers

        own, _ = pytorch_answers(fixed, list(fixed.default_shapes), config)
    return fixed, own


def weights_on_disk(path: Path) -> int:
    """The bytes of weights a source holds, read from file sizes alone (no torch); 0 for a
    path that cannot be read (loading it then names the problem)."""
    path = Path(path)
    try:
        if path.is_file():
            return path.stat().st_size
        if not path.is_dir():
            return 0
        return sum(p.stat().st_size for p in path.iterdir() if p.suffix in _WEIGHT_SUFFIXES)
    except OSError:
        return 0


def isolated(request: ConversionRequest) -> bool:
    """Whether `request`'s load and export run in a process of its own: as configured, or
    for `auto`, a large model unless it makes no quantized variant and the export cache
    probably holds its graph. Binding weights into a cached graph leaves no export's memory
    behind, but quantizing where torch was loaded still costs more (DistilBERT-base int8,
    next checkpoint: 1348 MiB in one process, 976 MiB isolated; fp32 only: 1016 and 955)."""
    setting = request.config.execution.isolate_export
    if setting is IsolateExport.AUTO:
        if weights_on_disk(request.source_path) <= ISOLATE_ABOVE_BYTES:
            return False
        quantized = request.config.onnx.quantization is not Quantization.NONE
        return quantized or not _probably_cached(request)
    return setting is IsolateExport.ALWAYS


def _probably_cached(request: ConversionRequest) -> bool:
    from onnxport.export.cache.hint import HINT_FIELD, checkpoint_hint
    from onnxport.export.cache.store import ExportCache

    config = request.config
    if not config.execution.export_cache or request.refresh_export_cache:
        return False
    if config.onnx.exporter is Exporter.TORCHSCRIPT:
        return False
    hint = checkpoint_hint(
        request.source_path,
        opset=config.onnx.opset_version,
        keep_debug_metadata=config.output.keep_debug_metadata,
        repeat_layers=config.onnx.repeat_layers,
    )
    try:
        return hint is not None and ExportCache.from_environment().holds(HINT_FIELD, hint)
    except (OSError, CacheError):  # an unreadable cache: the export says why, in its stage
        return False


def prepare_in_a_child(request: ConversionRequest, exported: Path, clock: StageClock) -> Prepared:
    """`prepare` in a process of its own (`isolation.parent.call`): its stages reach `clock`
    as they happen, its error comes back as the same typed error, its death as an
    `ExportError`."""
    return call(
        _prepare,
        (request, exported),
        name="export",
        error_type=ExportError,
        on_event=clock.relay,
        on_line=lambda line: logger.info("[export] %s", line),
    ).value


def _prepare(job: tuple[ConversionRequest, Path], progress: ProgressCallback) -> Prepared:
    """The export child's work."""
    request, exported = job
    return prepare(request, exported, StageClock(progress))
