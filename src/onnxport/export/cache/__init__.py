"""The export cache: one export per architecture, the next checkpoint's weights bound into it.

A conversion's graph depends on the architecture, the task, the export settings and the
library versions, not on the weights (`export.template`). `key` digests those into an entry
key; `use.export_with_cache` binds a new checkpoint's weights into the entry's graph, or
exports and stores it; `store` keeps the entries on disk (atomic, checked, locked, evicted
least recently used first) and imports no torch, for `onnxport cache list|prune`; `hint` tells,
from config.json alone, whether the cache probably holds a checkpoint's graph (where to run it).
"""

from onnxport.export.cache.store import (
    CACHE_ENV,
    MAX_SIZE_ENV,
    CacheEntry,
    ExportCache,
    cache_root,
    parse_size,
)

__all__ = ["CACHE_ENV", "MAX_SIZE_ENV", "CacheEntry", "ExportCache", "cache_root", "parse_size"]
