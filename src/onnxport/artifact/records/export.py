"""How the model became an ONNX graph: each exporter's try, the export cache, the
passes (`onnxport.export`, `onnxport.passes`)."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from onnxport.artifact.records import Record
from onnxport.names import StrEnum
from onnxport.request.export_config import Exporter


class AttemptRecord(Record):
    """One exporter's try: whether it produced the model, and why not."""

    exporter: Exporter
    ok: bool
    error: str | None = None
    seconds: float = 0.0
    traced_layers: int | None = None
    """The layers the exporter traced when it repeated them for the others
    (`export.layers`); None: it traced the whole model."""


class CacheStatus(StrEnum):
    """What the export cache did for a conversion."""

    HIT = "hit"
    """The graph came from the cache and this checkpoint's weights were bound into it."""
    MISS = "miss"
    """Exported (and stored, when `ExportCacheRecord.stored`)."""
    REFRESH = "refresh"
    """Exported whatever the cache held (`ConversionRequest.refresh_export_cache`), then
    stored."""
    OFF = "off"
    """Not used (`execution.export_cache: false`, or a cache that cannot be used)."""
    UNSUPPORTED = "unsupported"
    """A source or exporter whose graph the cache cannot hold."""


class ExportCacheRecord(Record):
    """What the export cache did for this conversion (`onnxport.export.cache`)."""

    status: CacheStatus
    key: str | None = None
    """The entry's key: a digest of what decides the graph (config, task, settings, versions)."""
    created_at: str | None = None
    """When the entry used or stored was made."""
    versions: dict[str, str] = Field(default_factory=dict)
    """The library versions the entry was made with."""
    stored: bool = False
    reason: str | None = None
    """Why the cache was not used, or why its entry was made again (a damaged one)."""


class ExportRecord(Record):
    exporter: Exporter
    """The exporter that produced the model."""
    opset: int
    seconds: float
    attempts: list[AttemptRecord]
    cache: ExportCacheRecord | None = None
    """Whether the graph came from the export cache."""


class PassRecord(Record):
    """One pass from one ONNX file to the next (`onnxport.passes`)."""

    name: str
    seconds: float = 0.0
    nodes_before: int | None = None
    nodes_after: int | None = None
    details: dict[str, Any] = Field(default_factory=dict)
