"""Stage results to manifest records: how each typed result is written down."""

from __future__ import annotations

from pathlib import Path

from onnxport.export import ExportResult
from onnxport.manifest import (
    AttemptRecord,
    ExportRecord,
    OutputRecord,
    SmokeTestRecord,
    SourceRecord,
    ValidationRecord,
    sha256_file,
)
from onnxport.sources import Source
from onnxport.testing import SmokeTestResult
from onnxport.validate import ValidationResult


def source_record(source: Source) -> SourceRecord:
    return SourceRecord(
        path=str(source.path.absolute()),
        kind=source.kind,
        task=source.task.value,
        architecture=source.architecture,
        model_type=source.model_type,
        num_parameters=source.num_parameters,
        weights_sha256={f.name: sha256_file(f) for f in source.weight_files},
    )


def export_record(result: ExportResult) -> ExportRecord:
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


def file_record(record: OutputRecord, directory: Path) -> None:
    model = directory / record.file
    record.sha256 = sha256_file(model)
    record.size_bytes = model.stat().st_size
    if record.data_file:
        data = directory / record.data_file
        record.data_sha256 = sha256_file(data)
        record.data_size_bytes = data.stat().st_size
