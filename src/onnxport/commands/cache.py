"""`onnxport cache list|prune`: the export cache's entries (`onnxport.export.cache`).

Imports no torch: the cache's store reads entries without it.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Annotated

import typer
from rich.table import Table

from onnxport.commands.console import setup_logging, stdout
from onnxport.errors import CacheError
from onnxport.export.cache import CacheEntry, ExportCache, parse_size

cache_app = typer.Typer(
    name="cache",
    help="List or prune the export cache: one exported graph per architecture and settings.",
    no_args_is_help=True,
)


def _open() -> ExportCache:
    cache = ExportCache.from_environment()
    if cache.root.exists() and not cache.root.is_dir():
        raise CacheError(
            f"the export cache {cache.root} is not a directory",
            hint="set ONNXPORT_CACHE to a directory",
        )
    return cache


def _mb(num_bytes: int) -> str:
    return f"{num_bytes / 1e6:.2f} MB"


def _when(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp, dt.timezone.utc).isoformat(timespec="seconds")


def _as_json(entry: CacheEntry) -> dict:
    info = entry.info
    return {
        "key": entry.key,
        "architecture": info.get("architecture"),
        "model_type": info.get("model_type"),
        "task": info.get("task"),
        "opset": info.get("opset"),
        "size_bytes": entry.size_bytes,
        "created_at": entry.created_at,
        "last_used": _when(entry.last_used),
        "versions": entry.versions,
    }


@cache_app.command("list")
def list_command(
    json_output: Annotated[bool, typer.Option("--json", help="Print the entries as JSON.")] = False,
) -> None:
    """List the entries, least recently used first."""
    cache = _open()
    entries, leftovers = cache.entries()
    total = sum(e.size_bytes for e in entries)
    if json_output:
        listing = {
            "root": str(cache.root),
            "max_bytes": cache.max_bytes,
            "size_bytes": total,
            "entries": [_as_json(e) for e in entries],
            "not_entries": [str(p) for p in leftovers],
        }
        stdout.print_json(json.dumps(listing))
        return
    if not entries:
        stdout.print(f"the export cache {cache.root} holds no entries", highlight=False)
        return
    table = Table(title=f"export cache {cache.root}")
    for column in ("key", "architecture", "task", "opset", "size", "last used"):
        table.add_column(column, no_wrap=column in ("key", "size", "last used"))
    for e in entries:
        row = _as_json(e)
        table.add_row(
            e.key,
            str(row["architecture"]),
            str(row["task"]),
            str(row["opset"]),
            _mb(e.size_bytes),
            row["last_used"][:16].replace("T", " "),
        )
    stdout.print(table)
    summary = f"{len(entries)} entries, {_mb(total)} of a {_mb(cache.max_bytes)} limit"
    if leftovers:
        summary += f"; {len(leftovers)} damaged or left over (onnxport cache prune removes them)"
    stdout.print(summary, highlight=False)


@cache_app.command("prune")
def prune_command(
    max_size: Annotated[
        str | None,
        typer.Option(
            help="Evict least recently used entries down to this size (500MB, 1GiB); "
            "default: the cache's limit (ONNXPORT_CACHE_MAX_SIZE, 1 GiB)."
        ),
    ] = None,
    everything: Annotated[
        bool, typer.Option("--all", help="Remove every entry not in use.")
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log each removal.")] = False,
) -> None:
    """Remove damaged entries and leftovers, then evict down to a size."""
    setup_logging(verbose)
    if everything and max_size is not None:
        raise CacheError("--all and --max-size ask for two things", hint="give one of them")
    cache = _open()
    limit = 0 if everything else (parse_size(max_size) if max_size else cache.max_bytes)
    evicted, leftovers = cache.prune(limit)
    remaining, _ = cache.entries()
    stdout.print(
        f"removed {len(evicted)} entries ({_mb(sum(e.size_bytes for e in evicted))}) and "
        f"{len(leftovers)} damaged or left over; {len(remaining)} entries "
        f"({_mb(sum(e.size_bytes for e in remaining))}) remain in {cache.root}",
        highlight=False,
    )
