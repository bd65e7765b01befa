"""The conversion pipeline: load, export, validate, smoke test, publish.

`convert(request)` runs the stages in order inside a staging directory and publishes it only
when every stage passed. Each stage is a typed function from the other modules; this module
wires them, times them, and folds their results into the `Manifest`.
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
from dataclasses import dataclass, field
from pathlib import Path

from onnxport import __version__
from onnxport.config import ConversionConfig
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
from onnxport.evaluation import metric_failure, prepare_evaluation
from onnxport.export import export_to_onnx
from onnxport.localize import localize_fp32_failure
from onnxport.manifest import (
    MANIFEST_FILENAME,
    Manifest,
    OutputRecord,
    TaskMetricRecord,
    sha256_file,
)
from onnxport.passes import apply_sequence, optimize_passes, quantization_pass
from onnxport.publish import Staging, check_output_location
from onnxport.records import (
    export_record,
    file_record,
    smoke_test_record,
    source_record,
    validation_record,
)
from onnxport.report import render_reports
from onnxport.sources import Source, load_source
from onnxport.testing import smoke_test_onnx_model
from onnxport.validate import DEFAULT_TOLERANCES, Tolerance, compute_references, validate_model
from onnxport.variants import (
    EXPORT_DIRNAME,
    data_file_of,
    make_variant,
    move_model,
    pass_context,
    pass_record,
)

logger = logging.getLogger(__name__)

STAGES = ("load", "export", "passes", "validate", "quantize", "smoke_test", "publish")


@dataclass(frozen=True)
class StageEvent:
    stage: str
    status: str  # "start", "done", "failed"
    seconds: float | None = None
    detail: str | None = None


ProgressCallback = Callable[[StageEvent], None]


def _ignore(_: StageEvent) -> None:
    return None


@dataclass(frozen=True)
class ConversionRequest:
    """Everything one conversion needs; the CLI and the orchestration layer both build one."""

    source_path: Path
    output_dir: Path
    config: ConversionConfig = field(default_factory=ConversionConfig)
    force: bool = False
    conv_fp: str | None = None
    lineage: dict[str, str] = field(default_factory=dict)


@dataclass
class _Run:
    request: ConversionRequest
    progress: ProgressCallback
    timings: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def stage(self, name: str, error_type: type[OnnxportError]) -> Iterator[None]:
        """Time a stage and report it; unexpected exceptions become the stage's error type."""
        self.progress(StageEvent(name, "start"))
        started = time.perf_counter()
        try:
            yield
        except OnnxportError:
            self.timings[name] = time.perf_counter() - started
            self.progress(StageEvent(name, "failed", self.timings[name]))
            raise
        except Exception as e:
            self.timings[name] = time.perf_counter() - started
            self.progress(StageEvent(name, "failed", self.timings[name]))
            message = one_line(e)
            raise error_type(f"{name} failed: {type(e).__name__}: {message}") from e
        self.timings[name] = time.perf_counter() - started
        self.progress(StageEvent(name, "done", self.timings[name]))


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


def _tolerance(config: ConversionConfig, variant: str) -> Tolerance:
    default = DEFAULT_TOLERANCES.get(variant, DEFAULT_TOLERANCES["fp32"])
    if variant != "fp32":
        return default
    return Tolerance(
        atol=config.validation.atol or default.atol,
        rtol=default.rtol if config.validation.rtol is None else config.validation.rtol,
    )


def _copy_companions(source: Source, directory: Path) -> None:
    for file in source.files_to_copy:
        shutil.copy2(file, directory / file.name)


def _seal(manifest: Manifest, directory: Path) -> None:
    """Write reports and manifest; the manifest records every other file's checksum."""
    for name, content in render_reports(manifest).items():
        (directory / name).write_bytes(content)
    manifest.files = {
        p.name: sha256_file(p)
        for p in sorted(directory.iterdir())
        if p.is_file() and p.name != MANIFEST_FILENAME
    }
    (directory / MANIFEST_FILENAME).write_text(manifest.to_json(), encoding="utf-8")


def convert(
    request: ConversionRequest,
    progress: ProgressCallback = _ignore,
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
    run = _Run(request, progress)
    with Staging(request.output_dir) as staging:
        work = staging.path
        with run.stage("load", SourceError):
            source = load_source(request.source_path, config.source)
            references = compute_references(
                source, validation_shapes(source, config), seed=config.validation.seed
            )
            loaded = source_record(source)
            evaluation = None
            if config.validation.eval_file:
                evaluation = prepare_evaluation(
                    source, config.validation.eval_file, config.validation.max_metric_drop
                )
        fp32 = OutputRecord(file=config.output.filename("fp32"), variant="fp32")
        exported_dir = work / EXPORT_DIRNAME
        with run.stage("export", ExportError):
            exported = export_to_onnx(
                source,
                exported_dir / fp32.file,
                opset_version=config.onnx.opset_version,
                exporter=config.onnx.exporter,
                external_data=config.output.external_data,
            )
        context = pass_context(source, exported.exporter, config, references)
        # PyTorch is done: the references hold its answers. Free its memory before ORT runs.
        source.module = None  # type: ignore[assignment]
        gc.collect()  # the exported graph holds reference cycles to the Parameters
        optimize = optimize_passes(config)
        if optimize:
            with run.stage("passes", PassError):
                results = apply_sequence(
                    optimize, exported_dir / fp32.file, work / fp32.file, context
                )
                fp32.passes = [pass_record(r) for r in results]
        else:
            move_model(exported_dir / fp32.file, work / fp32.file)
        fp32.data_file = data_file_of(work / fp32.file)
        with run.stage("validate", ValidationError):
            result = validate_model(
                work / fp32.file,
                references,
                task=source.task,
                variant="fp32",
                tolerance=_tolerance(config, "fp32"),
                min_agreement=config.validation.min_task_agreement,
            )
            fp32.validation = validation_record(result)
            if not result.passed:
                after = f" after {', '.join(p.name for p in fp32.passes)}" if fp32.passes else ""
                where = ""
                if config.validation.localize:
                    found = localize_fp32_failure(
                        request.source_path,
                        config.source,
                        work / fp32.file,
                        references,
                        result,
                        opset=config.onnx.opset_version,
                    )
                    where = f"; {found.summary()}" if found else ""
                raise ValidationError(
                    f"the fp32 ONNX model{after} does not compute what PyTorch computes: "
                    f"{'; '.join(result.failures[:3])}{where}",
                    hint="nothing was published; try onnx.optimize: none, "
                    "onnx.exporter: torchscript, or another opset",
                )
            if evaluation is not None:
                judged = evaluation.judge(work / fp32.file)
                fp32.validation.task_metric = TaskMetricRecord(**judged)
                if not judged["passed"]:
                    fp32.validation.passed = False
                    raise ValidationError(
                        f"the fp32 ONNX model loses accuracy: {metric_failure(judged)}",
                        hint="nothing was published; try onnx.optimize: none or "
                        "onnx.exporter: torchscript, or raise validation.max_metric_drop",
                    )
        outputs = [fp32]
        variant_pass = quantization_pass(config)
        if variant_pass is not None:
            # Quantized from the graph as exported: fused attention ops hide their weights
            # from the quantizer (DistilBERT-base int8 from the fused graph: 37% of fp32's
            # size; from the exported graph: 25%). ONNX Runtime fuses it at load time.
            base = exported_dir / fp32.file if optimize else work / fp32.file
            with run.stage("quantize", QuantizationError):
                outputs.append(
                    make_variant(
                        variant_pass,
                        work,
                        base,
                        references,
                        source.task,
                        config,
                        context,
                        evaluation=evaluation,
                    )
                )
        shutil.rmtree(exported_dir, ignore_errors=True)
        if config.onnx.run_smoke_test:
            with run.stage("smoke_test", SmokeTestError):
                for out in (o for o in outputs if o.published):
                    smoke = smoke_test_onnx_model(work / out.file, references[0].inputs)
                    out.smoke_test = smoke_test_record(smoke)
                    if not smoke.passed:
                        raise SmokeTestError(
                            f"the published {out.file} fails its smoke test: "
                            f"{'; '.join(smoke.problems)}"
                        )
        with run.stage("publish", PublishError):
            publish_started = time.perf_counter()
            _copy_companions(source, work)
            for out in outputs:
                if out.published:
                    file_record(out, work)
            manifest = Manifest(
                onnxport_version=__version__,
                created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                conv_fp=request.conv_fp,
                lineage=dict(request.lineage),
                source=loaded,
                export=export_record(exported),
                outputs=outputs,
                timings={k: round(v, 3) for k, v in run.timings.items()},
                peak_rss_mb=round(peak_rss_mb(), 1),
                versions=library_versions(),
                config=config.model_dump(mode="json"),
            )
            # The publish time recorded is that of copying and checksumming; the rename
            # that follows takes milliseconds.
            manifest.timings["publish"] = round(time.perf_counter() - publish_started, 3)
            _seal(manifest, work)
            if before_publish is not None:
                before_publish(manifest, work)
            final = staging.publish()
        logger.info("conversion complete: %s", final)
        return manifest
