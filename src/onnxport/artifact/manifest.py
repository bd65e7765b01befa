"""The manifest: one record of a conversion, made of the stages' records (`records`) and
written as `manifest.json`; the terminal table, the reports and the MLflow run render it.

A directory is complete when it holds a manifest and every file matches the checksum the
manifest holds for it (`verify_directory`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import Field

from onnxport.artifact.records import Record
from onnxport.artifact.records.benchmark import BenchmarkRecord, MachineRecord
from onnxport.artifact.records.export import ExportRecord
from onnxport.artifact.records.outputs import OutputRecord
from onnxport.artifact.records.source import SourceRecord
from onnxport.errors import OutputError, one_line

MANIFEST_FILENAME = "manifest.json"
REPORT_FILENAME = "report.md"


class Manifest(Record):
    """A conversion, written once as `manifest.json` when its directory is sealed: a manifest
    exists only for a complete conversion (earlier manifests said so in a `status` key,
    which is read and kept like any key this version does not know)."""

    onnxport_version: str
    created_at: str
    conv_fp: str | None = None
    lineage: dict[str, str] = Field(default_factory=dict)
    source: SourceRecord
    export: ExportRecord
    outputs: list[OutputRecord]
    timings: dict[str, float] = Field(default_factory=dict)
    peak_rss_mb: float | None = None
    versions: dict[str, str] = Field(default_factory=dict)
    config: dict[str, Any] = Field(default_factory=dict)
    machine: MachineRecord | None = None
    """The machine that converted: measured choices (`auto` settings) are true for it."""
    benchmark: BenchmarkRecord | None = None
    """`onnxport benchmark`'s figures, once it has run on the directory."""
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
