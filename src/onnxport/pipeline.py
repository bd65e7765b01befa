"""The conversion pipeline, wiring only: load, export, passes, the gate, smoke test, publish.

`convert(request)` runs the stages in order inside a staging directory and publishes it only
when every stage passed. Each stage is a typed function of another module that returns its
record; this module times the stages, reports them, and makes the manifest of the records.
"""

from __future__ import annotations

import datetime as dt
import gc
import logging
import platform as _platform
import resource
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from onnxport import __version__
from onnxport.artifact.manifest import Manifest
from onnxport.artifact.publish import Staging, check_output_location, finish_output, seal
from onnxport.artifact.records import OutputRecord, SmokeTestRecord, ValidationRecord
from onnxport.errors import (
    ExportError,
    OnnxportError,
    PassError,
    PublishError,
    QuantizationError,
    SmokeTestError,
    SourceError,
    ValidationError,
    one_line,
)
from onnxport.export import export_to_onnx
from onnxport.export.external_data import move_model
from onnxport.passes import (
    apply_pass,
    apply_sequence,
    optimize_passes,
    pass_context,
    quantization_pass,
)
from onnxport.progress import ProgressCallback, Stage, StageEvent, Status, ignore_progress
from onnxport.request import ConversionRequest
from onnxport.request.config import ConversionConfig, OptimizeLevel, Quantization
from onnxport.sources import Source, load_source
from onnxport.sources.checkpoint_files import publish_companions
from onnxport.testing import smoke_test_onnx_model
from onnxport.verify.compare import Tolerance
from onnxport.verify.divergence import locate_fp32_failure, locate_variant_failure
from onnxport.verify.evaluation import Evaluation, prepare_evaluation
from onnxport.verify.gate import Candidate, Rules, judge
from onnxport.verify.validate import DEFAULT_TOLERANCES, Reference, compute_references

logger = logging.getLogger(__name__)

EXPORT_DIRNAME = ".export"


class _Stages:
    """Times each stage once, reports it, and turns an unexpected exception into the
    stage's error type: the one clock of a stage is the one its events and the manifest
    show."""

    def __init__(self, progress: ProgressCallback) -> None:
        self.progress = progress
        self.timings: dict[str, float] = {}

    @contextmanager
    def stage(self, stage: Stage, error_type: type[OnnxportError]) -> Iterator[None]:
        self.progress(StageEvent(stage, Status.START))
        started = time.perf_counter()
        try:
            yield
        except Exception as e:
            seconds = self.timings[stage.value] = round(time.perf_counter() - started, 3)
            self.progress(StageEvent(stage, Status.FAILED, seconds))
            if isinstance(e, OnnxportError):
                raise
            message = one_line(e)
            raise error_type(f"{stage.value} failed: {type(e).__name__}: {message}") from e
        seconds = self.timings[stage.value] = round(time.perf_counter() - started, 3)
        self.progress(StageEvent(stage, Status.DONE, seconds))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def library_versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import onnxscript
    import torch
    import transformers

    return {
        "onnxport": __version__,
        "python": _platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "onnxscript": onnxscript.__version__,
    }


def validation_shapes(source: Source, config: ConversionConfig) -> list[tuple[int, int]]:
    shapes = config.validation.shapes or list(source.default_shapes)
    return [tuple(s) for s in shapes]  # type: ignore[misc]


def fp32_rules(config: ConversionConfig, evaluation: Evaluation | None) -> Rules:
    """The fp32 model matches PyTorch element by element, and on the task."""
    default = DEFAULT_TOLERANCES["fp32"]
    tolerance = Tolerance(
        atol=config.validation.atol or default.atol,
        rtol=default.rtol if config.validation.rtol is None else config.validation.rtol,
    )
    remedies = [
        "onnx.optimize: none" if config.onnx.optimize is not OptimizeLevel.NONE else "",
        "onnx.exporter: torchscript" if config.onnx.exporter.value != "torchscript" else "",
        "another opset",
    ]
    if evaluation is not None:
        remedies.append("a larger validation.max_metric_drop")
    return Rules(
        tolerance=tolerance,
        elementwise=True,
        min_agreement=config.validation.min_task_agreement,
        evaluation=evaluation,
        remedies=tuple(r for r in remedies if r),
    )


def variant_rules(config: ConversionConfig, evaluation: Evaluation | None) -> Rules:
    """A variant is judged on the task; its elementwise figures are recorded."""
    variant = config.onnx.quantization
    remedies = []
    if variant is Quantization.INT8:
        remedies.append("quantization: int8-static (calibrated)")
    if not config.quantize.per_channel:
        remedies.append("quantize.per_channel: true")
    if not config.validation.localize:
        remedies.append("validation.localize: true to find which node to leave in float")
    remedies.append("quantize.on_failure: skip to publish the fp32 model alone")
    return Rules(
        tolerance=DEFAULT_TOLERANCES[variant.value],
        elementwise=False,
        min_agreement=config.validation.min_task_agreement,
        evaluation=evaluation,
        on_failure=config.quantize.on_failure,
        remedies=tuple(remedies),
    )


def convert(
    request: ConversionRequest,
    progress: ProgressCallback = ignore_progress,
    *,
    before_publish: Callable[[Manifest, Path], None] | None = None,
) -> Manifest:
    """Convert `request.source_path` into a validated ONNX model in `request.output_dir`.

    Args:
        request: what to convert, where, with which settings.
        progress: receives a `StageEvent` as each stage starts and ends.
        before_publish: called with the sealed manifest and the staging directory just
            before it is renamed into place (tracking uses it); if it raises, nothing is
            published.

    Returns the manifest of the published directory. Raises an `OnnxportError` subclass
    naming the failed stage; nothing is published then, and an earlier output is untouched.
    """
    config = request.config
    check_output_location(request.output_dir, force=request.force)
    run = _Stages(progress)
    with Staging(request.output_dir) as staging:
        work = staging.path
        with run.stage(Stage.LOAD, SourceError):
            source = load_source(request.source_path, config.source)
            references = compute_references(
                source, validation_shapes(source, config), seed=config.validation.seed
            )
            loaded = source.record()
            evaluation = None
            if config.validation.eval_file:
                evaluation = prepare_evaluation(
                    source, config.validation.eval_file, config.validation.max_metric_drop
                )
        fp32_file = config.output.filename("fp32")
        exported = work / EXPORT_DIRNAME / fp32_file
        with run.stage(Stage.EXPORT, ExportError):
            export = export_to_onnx(
                source,
                exported,
                opset_version=config.onnx.opset_version,
                exporter=config.onnx.exporter,
                external_data=config.output.external_data,
                keep_debug_metadata=config.output.keep_debug_metadata,
            )
        context = pass_context(source, export.exporter, config)
        # PyTorch is done: the references hold its answers. Free its memory before ORT runs.
        source.module = None  # type: ignore[assignment]
        gc.collect()  # the exported graph holds reference cycles to the Parameters
        optimize = optimize_passes(config)
        fp32_passes = ()
        if optimize:
            with run.stage(Stage.PASSES, PassError):
                fp32_passes = tuple(apply_sequence(optimize, exported, work / fp32_file, context))
        else:
            move_model(exported, work / fp32_file)

        def locate_fp32(model: Path, validation: ValidationRecord):
            return locate_fp32_failure(
                lambda: load_source(request.source_path, config.source),
                model,
                references,
                validation,
                opset=config.onnx.opset_version,
            )

        with run.stage(Stage.VALIDATE, ValidationError):
            outputs = [
                judge(
                    Candidate("fp32", work / fp32_file, fp32_passes),
                    references,
                    task=source.task,
                    rules=fp32_rules(config, evaluation),
                    locate=locate_fp32 if config.validation.localize else None,
                )
            ]
        variant_pass = quantization_pass(config)
        if variant_pass is not None:
            # Quantized from the graph as exported: fused attention ops hide their weights
            # from the quantizer (DistilBERT-base int8 from the fused graph: 37% of fp32's
            # size; from the exported graph: 25%). ONNX Runtime fuses it at load time.
            base = exported if optimize else work / fp32_file
            with run.stage(Stage.QUANTIZE, QuantizationError):
                outputs.append(
                    _variant(
                        variant_pass, base, work, references, source, config, context, evaluation
                    )
                )
        shutil.rmtree(work / EXPORT_DIRNAME, ignore_errors=True)
        smoke: dict[str, SmokeTestRecord] = {}
        if config.onnx.run_smoke_test:
            with run.stage(Stage.SMOKE_TEST, SmokeTestError):
                for out in (o for o in outputs if o.published):
                    smoke[out.variant] = smoke_test_onnx_model(
                        work / out.file, references[0].inputs
                    )
                    if not smoke[out.variant].passed:
                        raise SmokeTestError(
                            f"the published {out.file} fails its smoke test: "
                            f"{'; '.join(smoke[out.variant].problems)}"
                        )
        with run.stage(Stage.PUBLISH, PublishError):
            publish_started = time.perf_counter()
            publish_companions(source.files_to_copy, work)
            manifest = Manifest(
                onnxport_version=__version__,
                created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                conv_fp=request.conv_fp,
                lineage=dict(request.lineage),
                source=loaded,
                export=export,
                outputs=[finish_output(o, work, smoke.get(o.variant)) for o in outputs],
                # The publish time recorded is that of copying and checksumming; the rename
                # that follows takes milliseconds.
                timings={**run.timings, "publish": round(time.perf_counter() - publish_started, 3)},
                peak_rss_mb=round(peak_rss_mb(), 1),
                versions=library_versions(),
                config=config.model_dump(mode="json"),
            )
            manifest = seal(manifest, work)
            if before_publish is not None:
                before_publish(manifest, work)
            final = staging.publish()
        logger.info("conversion complete: %s", final)
        return manifest


def _variant(
    variant_pass,
    base: Path,
    work: Path,
    references: list[Reference],
    source: Source,
    config: ConversionConfig,
    context,
    evaluation: Evaluation | None,
) -> OutputRecord:
    """Make the quantized or float16 model from `base` and put it through the gate."""
    variant = config.onnx.quantization.value
    path = work / config.output.filename(variant)
    record = apply_pass(variant_pass, base, path, context)

    def locate(model: Path, validation: ValidationRecord):
        return locate_variant_failure(base, model, references, validation)

    return judge(
        Candidate(variant, path, (record,)),
        references,
        task=source.task,
        rules=variant_rules(config, evaluation),
        locate=locate if config.validation.localize else None,
    )
