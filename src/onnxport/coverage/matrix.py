"""Run coverage entries through the conversion pipeline and record one row each.

Each entry is built into a scratch directory and converted by `pipeline.convert`, the same
call `onnxport convert` makes: same loader, exporters, validation and manifest. A failure
of any stage is a row with its reason, never an exception: the matrix always completes.
"""

from __future__ import annotations

import gc
import logging
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from onnxport.artifact.manifest import Manifest
from onnxport.artifact.report.tables import resolution_note
from onnxport.coverage.registry import CoverageEntry
from onnxport.errors import OnnxportError, one_line
from onnxport.pipeline import convert
from onnxport.request import ConversionRequest
from onnxport.request.config import ConversionConfig
from onnxport.sources.quirks import MODEL_TYPE_QUIRKS

logger = logging.getLogger(__name__)

REASON_LENGTH = 1000


@dataclass(frozen=True)
class CoverageRow:
    """The result of one entry: what exported it, whether it validated, how close it is."""

    architecture: str
    task: str
    model_class: str
    validated: bool
    exporter: str | None
    opset: int
    max_abs_diff: float | None
    seconds: float
    error_ratio: float | None = None
    """The worst ratio of the ONNX model's error to PyTorch's own, against float64."""
    reason: str | None = None
    """Failures: the failed stage and its one-line message."""
    notes: str | None = None
    """The entry's note, and exporters that failed before the one that worked."""


def _notes(entry: CoverageEntry, manifest: Manifest | None) -> str | None:
    """The entry's note, what the loader knows of its model type, failed exporters, and
    the image sizes an image model takes."""
    notes = [entry.note]
    known = MODEL_TYPE_QUIRKS.get(entry.model_type)
    if known is not None and known.note:
        notes.append(known.note)
    if manifest is not None:
        for attempt in manifest.export.attempts:
            if not attempt.ok and attempt.error:
                notes.append(f"{attempt.exporter} failed: {one_line(attempt.error, 160)}")
        notes.append(resolution_note(manifest))
    return "; ".join(n for n in notes if n) or None


def _max_abs_diff(manifest: Manifest) -> float | None:
    validation = manifest.outputs[0].validation
    if validation is None or not validation.outputs:
        return None
    return max(o.max_abs_diff for o in validation.outputs.values())


def _error_ratio(manifest: Manifest) -> float | None:
    validation = manifest.outputs[0].validation
    ratios = [o.error_ratio for o in validation.outputs.values()] if validation else []
    return max((r for r in ratios if r is not None), default=None)


def run_entry(
    entry: CoverageEntry, workdir: Path, *, base: ConversionConfig | None = None
) -> CoverageRow:
    """Build `entry`'s checkpoint under `workdir`, convert it with `base` (default: the
    default settings), and describe the result."""
    config = base or ConversionConfig()
    scratch = Path(workdir) / entry.name.replace("/", "__")
    if scratch.exists():
        shutil.rmtree(scratch)
    scratch.mkdir(parents=True)
    manifest: Manifest | None = None
    reason: str | None = None
    started = time.perf_counter()
    try:
        checkpoint = entry.build(scratch / "checkpoint")
    except Exception as e:  # transformers refuses the tiny config: the registry is wrong
        checkpoint = None
        reason = one_line(f"build: {type(e).__name__}: {e}", REASON_LENGTH)
    if checkpoint is not None:
        started = time.perf_counter()
        request = ConversionRequest(
            source_path=checkpoint, output_dir=scratch / "onnx", config=config
        )
        try:
            manifest = convert(request)
        except OnnxportError as e:
            reason = one_line(f"{e.stage}: {e}", REASON_LENGTH)
        except Exception as e:  # a bug in onnxport or a library: recorded, the matrix goes on
            logger.exception("coverage entry %s raised", entry.name)
            reason = one_line(f"internal error: {type(e).__name__}: {e}", REASON_LENGTH)
    seconds = time.perf_counter() - started
    shutil.rmtree(scratch, ignore_errors=True)
    gc.collect()
    return CoverageRow(
        architecture=entry.architecture,
        task=entry.task.value,
        model_class=entry.model_class,
        validated=manifest is not None,
        exporter=manifest.export.exporter if manifest else None,
        opset=manifest.export.opset if manifest else config.onnx.opset_version,
        max_abs_diff=_max_abs_diff(manifest) if manifest else None,
        error_ratio=_error_ratio(manifest) if manifest else None,
        seconds=seconds,
        reason=reason,
        notes=_notes(entry, manifest),
    )


def run_matrix(
    entries: Iterable[CoverageEntry],
    workdir: Path,
    *,
    base: ConversionConfig | None = None,
    on_row: Callable[[CoverageEntry, CoverageRow], None] | None = None,
) -> list[CoverageRow]:
    """Run every entry in order; `on_row` hears of each result as it comes."""
    rows = []
    for entry in entries:
        logger.info("coverage: %s", entry.name)
        row = run_entry(entry, workdir, base=base)
        rows.append(row)
        if on_row is not None:
            on_row(entry, row)
    return rows
