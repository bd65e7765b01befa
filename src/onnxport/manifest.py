"""The manifest: one record of a conversion, written as `manifest.json`.

Each stage returns a small result; the pipeline folds them into this model, and the terminal
table, `report.md` and the MLflow run all render it. Other tools read the JSON, so keys are
only ever added, never renamed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from onnxport.errors import OutputError, one_line

MANIFEST_FILENAME = "manifest.json"
REPORT_FILENAME = "report.md"


class _Record(BaseModel):
    model_config = ConfigDict(extra="allow", ser_json_inf_nan="strings")


class SourceRecord(_Record):
    path: str
    kind: str
    task: str
    architecture: str
    model_type: str | None = None
    num_parameters: int = 0
    weights_sha256: dict[str, str] = Field(default_factory=dict)


class AttemptRecord(_Record):
    exporter: str
    ok: bool
    error: str | None = None
    seconds: float = 0.0


class ExportRecord(_Record):
    exporter: str
    opset: int
    seconds: float
    attempts: list[AttemptRecord]


class OutputComparisonRecord(_Record):
    max_abs_diff: float
    max_rel_diff: float
    atol: float
    rtol: float
    passed: bool
    worst_shape: list[int] = Field(default_factory=list)


class TaskAgreementRecord(_Record):
    metric: str
    value: float
    minimum: float
    passed: bool


class TaskMetricRecord(_Record):
    """The task metric on the labelled evaluation set (`validation.eval_file`)."""

    metric: str
    value: float
    pytorch: float
    max_drop: float
    passed: bool
    examples: int


class ValidationRecord(_Record):
    passed: bool
    shapes: list[list[int]]
    outputs: dict[str, OutputComparisonRecord]
    task_agreement: TaskAgreementRecord
    task_metric: TaskMetricRecord | None = None
    elementwise_gate: bool = True
    failures: list[str] = Field(default_factory=list)
    seconds: float = 0.0


class SmokeTestRecord(_Record):
    passed: bool
    output_shapes: dict[str, list[int]] = Field(default_factory=dict)
    problems: list[str] = Field(default_factory=list)
    seconds: float = 0.0


class PassRecord(_Record):
    name: str
    seconds: float = 0.0
    nodes_before: int | None = None
    nodes_after: int | None = None
    details: dict[str, Any] = Field(default_factory=dict)


class OutputRecord(_Record):
    file: str
    variant: str
    published: bool = True
    sha256: str | None = None
    size_bytes: int | None = None
    data_file: str | None = None
    data_sha256: str | None = None
    data_size_bytes: int | None = None
    passes: list[PassRecord] = Field(default_factory=list)
    validation: ValidationRecord | None = None
    localization: dict[str, Any] | None = None
    """Where a failed variant parts ways with its reference (`onnxport.localize`)."""
    smoke_test: SmokeTestRecord | None = None

    @property
    def total_size_bytes(self) -> int | None:
        """The model file and its external data file together: what the variant weighs."""
        if self.size_bytes is None:
            return None
        return self.size_bytes + (self.data_size_bytes or 0)


class Manifest(_Record):
    onnxport_version: str
    created_at: str
    status: str = "complete"
    conv_fp: str | None = None
    lineage: dict[str, str] = Field(default_factory=dict)
    source: SourceRecord
    export: ExportRecord
    outputs: list[OutputRecord]
    timings: dict[str, float] = Field(default_factory=dict)
    peak_rss_mb: float | None = None
    versions: dict[str, str] = Field(default_factory=dict)
    config: dict[str, Any] = Field(default_factory=dict)
    benchmark: dict[str, Any] | None = None
    """`onnxport benchmark`'s figures (see `onnxport.benchmark.BenchmarkResult`), if run."""
    files: dict[str, str] = Field(default_factory=dict)
    """sha256 of every file in the directory but manifest.json: what `verify` checks."""

    def output(self, variant: str) -> OutputRecord | None:
        return next((o for o in self.outputs if o.variant == variant), None)

    def published_outputs(self) -> list[OutputRecord]:
        return [o for o in self.outputs if o.published]

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2, ensure_ascii=False) + "\n"


def sha256_file(path: Path, *, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(directory: Path) -> Manifest:
    path = Path(directory) / MANIFEST_FILENAME
    try:
        return Manifest.model_validate_json(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise OutputError(
            f"{directory} holds no {MANIFEST_FILENAME}, so it is not a complete onnxport output",
            hint="convert again",
        ) from e
    except (ValueError, OSError) as e:
        raise OutputError(f"{path} is damaged: {one_line(e, 200)}") from e


def verify_directory(directory: Path) -> list[str]:
    """What is wrong with an output directory; empty when it is complete and intact."""
    directory = Path(directory)
    if not (directory / MANIFEST_FILENAME).is_file():
        return [f"no {MANIFEST_FILENAME}"]
    try:
        manifest = read_manifest(directory)
    except OutputError as e:
        return [str(e)]
    if manifest.status != "complete":
        return [f"status is {manifest.status!r}"]
    problems = []
    for name, expected in manifest.files.items():
        file = directory / name
        if not file.is_file():
            problems.append(f"{name} is missing")
        elif sha256_file(file) != expected:
            problems.append(f"{name} does not match its checksum")
    if not manifest.files:
        problems.append("the manifest lists no files")
    return problems
