"""The export stage with the cache: bind this checkpoint's weights into the graph an earlier
export of the same architecture kept, or export and keep the graph for the next one.

Under the entry's lock: a conversion that finds the entry binds; one that does not exports
and stores, while another converting the same architecture waits and then binds. A damaged
entry, or one whose graph does not take the weights, is removed and made again. The bound
model then goes through the same passes, gate and smoke test as an exported one. Nothing
about the cache can fail a conversion: a cache that cannot be used is exported around.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from onnxport.artifact.records.export import CacheStatus, ExportCacheRecord, ExportRecord
from onnxport.errors import CacheError
from onnxport.export.cache.hint import HINT_FIELD, checkpoint_hint
from onnxport.export.cache.key import cache_key, key_material, uncacheable
from onnxport.export.cache.store import ExportCache, StoredEntry
from onnxport.export.exporter import export_from_template, export_to_onnx
from onnxport.export.template import TemplateData
from onnxport.request.export_config import Exporter, ExternalData
from onnxport.sources.base import Source

logger = logging.getLogger(__name__)


TURNED_OFF = "turned off (execution.export_cache: false)"


class CacheUse(str, Enum):
    USE = "use"
    REFRESH = "refresh"
    """Export whatever the cache holds, then store (`ConversionRequest.refresh_export_cache`)."""
    OFF = "off"
    """Neither read nor write (`execution.export_cache: false`)."""


@dataclass(frozen=True)
class ExportSettings:
    """`export_to_onnx`'s settings (`onnx` and `output` sections of the config)."""

    opset_version: int
    exporter: Exporter
    external_data: ExternalData
    keep_debug_metadata: bool
    repeat_layers: bool = True


def _export(
    source: Source,
    output_path: Path,
    settings: ExportSettings,
    keep: Callable[[TemplateData], None] | None = None,
) -> ExportRecord:
    return export_to_onnx(
        source,
        output_path,
        opset_version=settings.opset_version,
        exporter=settings.exporter,
        external_data=settings.external_data,
        keep_debug_metadata=settings.keep_debug_metadata,
        repeat_layers=settings.repeat_layers,
        keep_template=keep,
    )


def export_with_cache(
    source: Source, output_path: Path, settings: ExportSettings, use: CacheUse
) -> ExportRecord:
    """`export_to_onnx`, with the graph from the export cache when it holds this
    architecture's; the record's `cache` says what the cache did."""
    if use is CacheUse.OFF:
        record = _export(source, output_path, settings)
        return _with(record, ExportCacheRecord(status=CacheStatus.OFF, reason=TURNED_OFF))
    reason = uncacheable(source, settings.exporter, settings.opset_version)
    if reason is not None:
        logger.info("export cache: not used: %s", reason)
        record = _export(source, output_path, settings)
        return _with(record, ExportCacheRecord(status=CacheStatus.UNSUPPORTED, reason=reason))
    try:
        cache = ExportCache.from_environment()
        cache.ensure()
    except CacheError as e:  # the conversion goes on without the cache
        logger.warning("export cache: not used: %s", e)
        record = _export(source, output_path, settings)
        return _with(record, ExportCacheRecord(status=CacheStatus.OFF, reason=e.message))
    material = key_material(
        source,
        opset=settings.opset_version,
        keep_debug_metadata=settings.keep_debug_metadata,
        repeat_layers=settings.repeat_layers,
    )
    try:
        with cache.lock(cache_key(material)) as held:
            return _locked(cache, material, held, source, output_path, settings, use)
    except CacheError as e:  # only the lock raises it, before anything is exported
        logger.warning("export cache: not used: %s", e)
        record = _export(source, output_path, settings)
        return _with(record, ExportCacheRecord(status=CacheStatus.OFF, reason=e.message))


def _locked(
    cache: ExportCache,
    material: dict,
    held: bool,
    source: Source,
    output_path: Path,
    settings: ExportSettings,
    use: CacheUse,
) -> ExportRecord:
    """Bind from the entry of `material`'s key, or export and store it; `held`: whether this
    process holds the key's lock (without it, nothing is read or written)."""
    key = cache_key(material)
    damage = None
    if not held:
        damage = "another conversion held the entry's lock too long: exported without it"
    elif use is CacheUse.USE:
        lookup = cache.load(key)
        if lookup.found is not None:
            record = _bind(source, output_path, lookup.found, settings)
            if record is not None:
                cache.touch(key)
                return record
            damage = f"entry {key}'s graph did not take this checkpoint's weights"
            cache.remove(key)
        damage = damage or lookup.damage
    kept: list[TemplateData] = []
    record = _export(source, output_path, settings, kept.append)
    status = CacheStatus.REFRESH if use is CacheUse.REFRESH else CacheStatus.MISS
    if not kept or not held:
        why = damage or "only the dynamo exporter's graph can be kept"
        return _with(record, ExportCacheRecord(status=status, key=key, reason=why))
    info = {
        "architecture": source.architecture,
        "model_type": source.model_type,
        "task": source.task.value,
        "opset": settings.opset_version,
        "versions": material["versions"],
        "key_material": material,
        HINT_FIELD: checkpoint_hint(
            source.path,
            opset=settings.opset_version,
            keep_debug_metadata=settings.keep_debug_metadata,
            repeat_layers=settings.repeat_layers,
        ),
    }
    try:
        entry = cache.store(key, kept[0].graph, kept[0].bindings, info)
    except OSError as e:  # a full disk: this conversion goes on, the next one exports
        logger.warning("export cache: cannot store entry %s: %s", key, e)
        why = f"cannot store the entry: {e.strerror or e}"
        return _with(record, ExportCacheRecord(status=status, key=key, reason=why))
    stored = ExportCacheRecord(
        status=status,
        key=key,
        created_at=entry.created_at,
        versions=entry.versions,
        stored=True,
        reason=damage,
    )
    return _with(record, stored)


def _bind(
    source: Source, output_path: Path, found: StoredEntry, settings: ExportSettings
) -> ExportRecord | None:
    """The stored graph with `source`'s weights in `output_path`, or None when it failed."""
    entry = found.entry
    attempt = export_from_template(
        source,
        output_path,
        TemplateData(found.graph, found.bindings),
        opset_version=settings.opset_version,
        external_data=settings.external_data,
    )
    if not attempt.ok:
        logger.warning("export cache: entry %s cannot be used: %s", entry.key, attempt.error)
        return None
    logger.info(
        "export cache: bound the weights into entry %s (made %s) in %.1f s",
        entry.key,
        entry.created_at,
        attempt.seconds,
    )
    return ExportRecord(
        exporter=attempt.exporter,
        opset=settings.opset_version,
        seconds=attempt.seconds,
        attempts=[attempt],
        cache=ExportCacheRecord(
            status=CacheStatus.HIT,
            key=entry.key,
            created_at=entry.created_at,
            versions=entry.versions,
        ),
    )


def _with(record: ExportRecord, cache: ExportCacheRecord) -> ExportRecord:
    return record.model_copy(update={"cache": cache})
