"""The export cache on disk: entries written atomically, checked before use, locked per key,
evicted least recently used first. No torch here: `onnxport cache` lists and prunes with this.

    $ONNXPORT_CACHE (default ~/.cache/onnxport)/
        exports/<key>/graph.onnx      the graph without weights (`export.template`)
                     /bindings.json   initializer -> the parameter or buffer it takes
                     /entry.json      what made it, and the sha256 of the two files above
        locks/<key>.lock              held while a conversion looks up, exports or stores

An entry is written in a temporary sibling and renamed into place, so a reader sees all of it
or none of it. A file whose checksum does not match makes the entry damaged: it is removed
and made again, never used. Each use touches `entry.json`: its modification time is the last
use, which eviction orders by.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from onnxport.errors import CacheError

logger = logging.getLogger(__name__)

CACHE_ENV = "ONNXPORT_CACHE"
MAX_SIZE_ENV = "ONNXPORT_CACHE_MAX_SIZE"
DEFAULT_MAX_BYTES = 1024**3
"""Entries hold graphs without weights (DistilBERT-base: ~0.2 MB), so 1 GiB keeps thousands."""
ENTRY_FORMAT = 1
GRAPH_FILE = "graph.onnx"
BINDINGS_FILE = "bindings.json"
ENTRY_FILE = "entry.json"
LOCK_TIMEOUT_SECONDS = 3600.0
"""How long a conversion waits for another exporting the same architecture, then exports
without the cache."""
_STALE_SECONDS = 3600.0  # a temporary directory this old belongs to a killed process
_TMP_PREFIX = ".tmp-"
_KEY = re.compile(r"[0-9a-f]{16,64}")
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*(?:([kmgt])(i)?)?b?", re.IGNORECASE)


def cache_root() -> Path:
    """onnxport's cache directory (the export cache's entries, the demo's model):
    `$ONNXPORT_CACHE`, else `$XDG_CACHE_HOME/onnxport`, else `~/.cache/onnxport`."""
    configured = os.environ.get(CACHE_ENV, "").strip()
    if configured:
        return Path(configured).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "onnxport"


def parse_size(text: str) -> int:
    """Bytes from `500MB`, `2GiB`, `1.5g` or `0`; a `CacheError` for anything else."""
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise CacheError(
            f"cannot read {text!r} as a size", hint="write it like 500MB, 2GiB or 0 (bytes)"
        )
    number, unit, binary = match.groups()
    power = "kmgt".index(unit.lower()) + 1 if unit else 0
    return int(float(number) * (1024 if binary else 1000) ** power)


def max_bytes_from_environment() -> int:
    configured = os.environ.get(MAX_SIZE_ENV, "").strip()
    return parse_size(configured) if configured else DEFAULT_MAX_BYTES


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class CacheEntry:
    """One entry as `entry.json` describes it, with its size and last use."""

    key: str
    path: Path
    info: dict[str, Any]
    size_bytes: int
    last_used: float

    @property
    def created_at(self) -> str | None:
        return self.info.get("created_at")

    @property
    def versions(self) -> dict[str, str]:
        return dict(self.info.get("versions") or {})


@dataclass(frozen=True)
class StoredEntry:
    """An entry read whole and checked: its graph and bindings are what was stored."""

    entry: CacheEntry
    graph: bytes
    bindings: dict[str, str]


@dataclass(frozen=True)
class Lookup:
    """A lookup's outcome: the entry found, or why the one under the key was removed."""

    found: StoredEntry | None = None
    damage: str | None = None


@dataclass
class ExportCache:
    root: Path
    max_bytes: int = DEFAULT_MAX_BYTES
    _entries_dir: Path = field(init=False)
    _locks_dir: Path = field(init=False)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self._entries_dir = self.root / "exports"
        self._locks_dir = self.root / "locks"

    @classmethod
    def from_environment(cls) -> ExportCache:
        return cls(cache_root(), max_bytes_from_environment())

    def ensure(self) -> None:
        """Create the cache's directories; a `CacheError` when they cannot be."""
        try:
            self._entries_dir.mkdir(parents=True, exist_ok=True)
            self._locks_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CacheError(
                f"cannot use {self.root} as the export cache: {e.strerror or e}",
                hint=f"set {CACHE_ENV} to a writable directory",
            ) from e

    def _dir(self, key: str) -> Path:
        if not _KEY.fullmatch(key):
            raise ValueError(f"not a cache key: {key!r}")
        return self._entries_dir / key

    @contextmanager
    def lock(self, key: str, timeout: float = LOCK_TIMEOUT_SECONDS) -> Iterator[bool]:
        """Hold `key`'s lock; yields False (unlocked) when another process held it for
        `timeout` seconds."""
        lock = FileLock(str(self._locks_dir / f"{self._dir(key).name}.lock"))
        try:
            held = _acquire(lock, timeout)
        except OSError as e:  # a lock file or directory of another user's, say
            raise CacheError(
                f"cannot lock entry {key} in {self._locks_dir}: {e.strerror or e}",
                hint=f"set {CACHE_ENV} to a directory of your own",
            ) from e
        try:
            yield held
        finally:
            if held:
                lock.release()

    def _read_info(self, directory: Path) -> dict[str, Any]:
        info = json.loads((directory / ENTRY_FILE).read_text(encoding="utf-8"))
        if not isinstance(info, dict) or info.get("format") != ENTRY_FORMAT:
            raise ValueError(f"{ENTRY_FILE} is not an entry of format {ENTRY_FORMAT}")
        if info.get("key") != directory.name:
            raise ValueError(f"{ENTRY_FILE} names another key")
        return info

    def _describe(self, directory: Path, info: dict[str, Any]) -> CacheEntry:
        size = sum(p.stat().st_size for p in directory.iterdir() if p.is_file())
        used = (directory / ENTRY_FILE).stat().st_mtime
        return CacheEntry(directory.name, directory, info, size, used)

    def load(self, key: str) -> Lookup:
        """The entry under `key`, checked; a damaged one is removed and says why. Call it
        holding the key's lock."""
        directory = self._dir(key)
        if not directory.is_dir():
            return Lookup()
        try:
            info = self._read_info(directory)
            files = info.get("files") or {}
            data = {}
            for name in (GRAPH_FILE, BINDINGS_FILE):
                data[name] = (directory / name).read_bytes()
                if _sha256(data[name]) != (files.get(name) or {}).get("sha256"):
                    raise ValueError(f"{name} does not match its checksum")
            bindings = json.loads(data[BINDINGS_FILE])
            if not isinstance(bindings, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in bindings.items()
            ):
                raise ValueError(f"{BINDINGS_FILE} is not a mapping of names")
            entry = self._describe(directory, info)
        except (OSError, ValueError) as e:  # json's errors are ValueErrors
            reason = f"entry {key} was damaged ({e}) and is made again"
            logger.warning("export cache: %s", reason)
            self.remove(key)
            return Lookup(damage=reason)
        return Lookup(found=StoredEntry(entry, data[GRAPH_FILE], bindings))

    def touch(self, key: str) -> None:
        """Mark the entry used now (eviction removes the least recently used first); an
        entry this process cannot mark keeps its old time."""
        try:
            os.utime(self._dir(key) / ENTRY_FILE)
        except OSError as e:
            logger.warning("export cache: cannot mark entry %s used: %s", key, e.strerror or e)

    def store(
        self, key: str, graph: bytes, bindings: dict[str, str], info: dict[str, Any]
    ) -> CacheEntry:
        """Write an entry atomically (replacing the key's previous one), then evict the least
        recently used others above the size limit. Call it holding the key's lock."""
        final = self._dir(key)
        work = self._entries_dir / f"{_TMP_PREFIX}{key}-{uuid.uuid4().hex[:8]}"
        work.mkdir(parents=True)
        try:
            contents = {GRAPH_FILE: graph, BINDINGS_FILE: json.dumps(bindings).encode()}
            for name, data in contents.items():
                _write(work / name, data)
            info = {
                **info,
                "format": ENTRY_FORMAT,
                "key": key,
                "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                "files": {n: {"sha256": _sha256(d), "size": len(d)} for n, d in contents.items()},
            }
            _write(work / ENTRY_FILE, json.dumps(info, indent=2, sort_keys=True).encode())
            if final.exists():
                self.remove(key)
            os.rename(work, final)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        logger.info("export cache: stored entry %s (%d bytes)", key, len(graph))
        self.evict(self.max_bytes, keep=key)
        return self._describe(final, info)

    def remove(self, key: str) -> None:
        """Remove an entry: renamed aside first, so that it disappears at once."""
        directory = self._dir(key)
        aside = self._entries_dir / f"{_TMP_PREFIX}removed-{key}-{uuid.uuid4().hex[:8]}"
        try:
            os.rename(directory, aside)
        except FileNotFoundError:
            return
        except OSError as e:  # not ours to remove: it stays, and is not used if damaged
            logger.warning("export cache: cannot remove entry %s: %s", key, e.strerror or e)
            return
        shutil.rmtree(aside, ignore_errors=True)

    def entries(self) -> tuple[list[CacheEntry], list[Path]]:
        """The entries, least recently used first, and the directories that are not whole
        entries (damaged, or a killed process's leftovers)."""
        if not self._entries_dir.is_dir():
            return [], []
        good, bad = [], []
        for directory in sorted(self._entries_dir.iterdir()):
            if directory.name.startswith(_TMP_PREFIX):
                try:
                    modified = directory.stat().st_mtime
                except FileNotFoundError:  # renamed into place or removed meanwhile
                    continue
                if time.time() - modified > _STALE_SECONDS:
                    bad.append(directory)
                continue
            try:
                good.append(self._describe(directory, self._read_info(directory)))
            except (OSError, ValueError):
                bad.append(directory)
        good.sort(key=lambda e: (e.last_used, e.key))
        return good, bad

    def holds(self, field_name: str, value: str) -> bool:
        """Whether an entry's `entry.json` has `value` in `field_name` (entries are not
        checked here: a damaged one is found when it is loaded)."""
        return any(e.info.get(field_name) == value for e in self.entries()[0])

    def evict(self, max_bytes: int, *, keep: str | None = None) -> list[CacheEntry]:
        """Remove the least recently used entries until the cache holds at most `max_bytes`
        (`keep` stays, and so does an entry another process holds the lock of)."""
        found, _ = self.entries()
        total = sum(e.size_bytes for e in found)
        removed = []
        for entry in found:
            if total <= max_bytes:
                break
            if entry.key == keep:
                continue
            with self.lock(entry.key, timeout=0) as held:
                if not held:
                    continue
                self.remove(entry.key)
            total -= entry.size_bytes
            removed.append(entry)
            logger.info("export cache: evicted entry %s (least recently used)", entry.key)
        return removed

    def prune(self, max_bytes: int) -> tuple[list[CacheEntry], list[Path]]:
        """Remove what is not a whole entry, then evict down to `max_bytes` (0: everything
        not in use); returns the entries evicted and the other directories removed."""
        _, bad = self.entries()
        removed = []
        for directory in bad:
            if directory.name.startswith(_TMP_PREFIX) or not _KEY.fullmatch(directory.name):
                shutil.rmtree(directory, ignore_errors=True)
                removed.append(directory)
                continue
            # An entry caught between its replacement's removal and rename looks damaged:
            # only what no conversion is writing goes.
            with self.lock(directory.name, timeout=0) as held:
                if held and not self._whole(directory):
                    shutil.rmtree(directory, ignore_errors=True)
                    removed.append(directory)
        return self.evict(max_bytes), removed

    def _whole(self, directory: Path) -> bool:
        try:
            self._read_info(directory)
        except (OSError, ValueError):
            return False
        return True


def _acquire(lock: FileLock, timeout: float) -> bool:
    try:
        lock.acquire(timeout=0)
        return True
    except Timeout:
        if timeout <= 0:
            return False
    logger.info("export cache: waiting for another conversion of the same architecture")
    try:
        lock.acquire(timeout=timeout)
        return True
    except Timeout:
        return False


def _write(path: Path, data: bytes) -> None:
    with path.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
