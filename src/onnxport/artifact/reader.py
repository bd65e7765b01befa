"""Open a published directory, once, for every tool that reads one (predict, benchmark,
report, debug, the Azure ML download): the same checks and the same errors everywhere.

A directory opens when it is a directory, holds a readable manifest of a complete
conversion, and every file matches its checksum. Whatever is wrong is an `OutputError`
naming the directory and what to do; no torch is imported here.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from onnxport.artifact.manifest import Manifest, read_manifest, verify_directory
from onnxport.artifact.records.outputs import OutputRecord
from onnxport.errors import OutputError, one_line

CONVERT_AGAIN = "convert again"


@dataclass(frozen=True)
class PublishedDirectory:
    """A complete, intact onnxport output directory and its manifest."""

    path: Path
    manifest: Manifest

    @classmethod
    def open(cls, path: Path, *, tolerate: Sequence[str] = ()) -> PublishedDirectory:
        """Open `path`; `tolerate`: files whose absence or damage is no reason to refuse
        (the reports, for a tool that renders them again)."""
        path = Path(path)
        if not path.is_dir():
            raise OutputError(
                f"{path} is not a directory", hint="pass the output directory of onnxport convert"
            )
        manifest = read_manifest(path)
        problems = [p for p in verify_directory(path) if not p.startswith(tuple(tolerate))]
        if problems:
            raise OutputError(f"{path} is damaged: {'; '.join(problems[:3])}", hint=CONVERT_AGAIN)
        return cls(path, manifest)

    def published(self) -> list[OutputRecord]:
        return self.manifest.published_outputs()

    def output(self, variant: str) -> OutputRecord:
        """The published model `variant`, or an error that lists the published ones."""
        published = ", ".join(o.variant for o in self.published()) or "none"
        output = self.manifest.output(variant)
        if output is None:
            raise OutputError(
                f"{self.path} has no '{variant}' variant", hint=f"published: {published}"
            )
        if not output.published:
            why = (
                output.validation.failures[0]
                if output.validation and output.validation.failures
                else ""
            )
            raise OutputError(
                f"the '{variant}' variant of {self.path} was not published"
                + (f": {why}" if why else ""),
                hint=f"published: {published}",
            )
        return output

    def model_file(self, variant: str) -> Path:
        return self.path / self.output(variant).file

    def json_file(self, name: str, *, required: bool = True) -> dict[str, Any]:
        """A JSON object published beside the model (`config.json`, ...); {} when it is
        absent and not `required`."""
        file = self.path / name
        if not file.is_file() and not required:
            return {}
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise OutputError(f"cannot read {file}: {one_line(e, 200)}", hint=CONVERT_AGAIN) from e
        if not isinstance(data, dict):
            raise OutputError(f"{file} does not hold a JSON object", hint=CONVERT_AGAIN)
        return data
