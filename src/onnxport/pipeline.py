"""The conversion pipeline: load, export, validate, smoke test, publish.

`convert(request)` runs the stages in order inside a staging directory and publishes it only
when every stage passed. Each stage is a typed function from the other modules; this module
wires them, times them, and folds their results into the `Manifest`.
"""

from __future__ import annotations

import datetime as dt
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
    PublishError,
    SmokeTestError,
    SourceError,
    ValidationError,
)
from onnxport.export import ExportResult, export_to_onnx
from onnxport.manifest import (
    MANIFEST_FILENAME,
    REPORT_FILENAME,
    AttemptRecord,
    ExportRecord,
    Manifest,
    OutputRecord,
    SmokeTestRecord,
    SourceRecord,
    ValidationRecord,
    sha256_file,
)
from onnxport.publish import Staging, check_output_location
from onnxport.report import render_markdown
from onnxport.sources import Source, load_source
from onnxport.testing import SmokeTestResult, smoke_test_onnx_model
from onnxport.validate import (
    DEFAULT_TOLERANCES,
    Tolerance,
    ValidationResult,
    compute_references,
    validate_model,
)

logger = logging.getLogger(__name__)

STAGES = ("load", "export", "validate", "smoke_test", "publish")


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
            message = " ".join(str(e).split())[:300]
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


def _source_record(source: Source) -> SourceRecord:
    return SourceRecord(
        path=str(source.path.absolute()),
        kind=source.kind,
        task=source.task.value,
        architecture=source.architecture,
        model_type=source.model_type,
        num_parameters=source.num_parameters,
        weights_sha256={f.name: sha256_file(f) for f in source.weight_files},
    )


def _export_record(result: ExportResult) -> ExportRecord:
    return ExportRecord(
        exporter=result.exporter,
        opset=result.opset,
        seconds=round(result.seconds, 3),
        attempts=[
            AttemptRecord(exporter=a.exporter, ok=a.ok, error=a.error, seconds=round(a.seconds, 3))
            for a in result.attempts
        ],
    )


def validation_record(result: ValidationResult) -> ValidationRecord:
    return ValidationRecord.model_validate(
        {
            "passed": result.passed,
            "shapes": [list(s) for s in result.shapes],
            "outputs": {
                name: {
                    "max_abs_diff": c.max_abs_diff,
                    "max_rel_diff": c.max_rel_diff,
                    "atol": c.atol,
                    "rtol": c.rtol,
                    "passed": c.passed,
                    "worst_shape": list(c.worst_shape),
                }
                for name, c in result.outputs.items()
            },
            "task_agreement": vars(result.task_agreement),
            "elementwise_gate": result.elementwise_gate,
            "failures": list(result.failures),
            "seconds": round(result.seconds, 3),
        }
    )


def smoke_test_record(result: SmokeTestResult) -> SmokeTestRecord:
    return SmokeTestRecord(
        passed=result.passed,
        output_shapes=result.output_shapes,
        problems=list(result.problems),
        seconds=round(result.load_seconds + result.run_seconds, 3),
    )


def _file_record(record: OutputRecord, directory: Path) -> None:
    model = directory / record.file
    record.sha256 = sha256_file(model)
    record.size_bytes = model.stat().st_size
    if record.data_file:
        data = directory / record.data_file
        record.data_sha256 = sha256_file(data)
        record.data_size_bytes = data.stat().st_size


def _copy_companions(source: Source, directory: Path) -> None:
    for file in source.files_to_copy:
        shutil.copy2(file, directory / file.name)


def _seal(manifest: Manifest, directory: Path) -> None:
    """Write report and manifest; the manifest records every other file's checksum."""
    (directory / REPORT_FILENAME).write_text(render_markdown(manifest), encoding="utf-8")
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
            source_record = _source_record(source)
        fp32 = OutputRecord(file=config.output.filename("fp32"), variant="fp32")
        with run.stage("export", ExportError):
            exported = export_to_onnx(
                source,
                work / fp32.file,
                opset_version=config.onnx.opset_version,
                exporter=config.onnx.exporter,
            )
            fp32.data_file = exported.data_file.name if exported.data_file else None
        # PyTorch is done: the references hold its answers. Free its memory before ORT runs.
        source.module = None  # type: ignore[assignment]
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
                raise ValidationError(
                    f"the fp32 ONNX model does not compute what PyTorch computes: "
                    f"{'; '.join(result.failures[:3])}",
                    hint="nothing was published; see the exporter used in the log, "
                    "or try onnx.exporter: torchscript / another opset",
                )
        if config.onnx.run_smoke_test:
            with run.stage("smoke_test", SmokeTestError):
                smoke = smoke_test_onnx_model(work / fp32.file, references[0].inputs)
                fp32.smoke_test = smoke_test_record(smoke)
                if not smoke.passed:
                    raise SmokeTestError(
                        f"the published {fp32.file} fails its smoke test: "
                        f"{'; '.join(smoke.problems)}"
                    )
        with run.stage("publish", PublishError):
            publish_started = time.perf_counter()
            _copy_companions(source, work)
            _file_record(fp32, work)
            manifest = Manifest(
                onnxport_version=__version__,
                created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                conv_fp=request.conv_fp,
                lineage=dict(request.lineage),
                source=source_record,
                export=_export_record(exported),
                outputs=[fp32],
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
