"""Atomic publishing: work in a hidden sibling directory, rename it into place at the end.

A directory under its final name is either complete (its manifest exists and every checksum
matches) or absent. A failed or killed conversion leaves at most a hidden `.partial`
sibling, which the next run removes; an earlier result is replaced only after the new one
is complete.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import re
import shutil
import sys
import uuid
from pathlib import Path

import psutil

from onnxport import interrupts
from onnxport.artifact.manifest import MANIFEST_FILENAME, Manifest, sha256_file, verify_directory
from onnxport.artifact.records.outputs import OutputRecord
from onnxport.artifact.records.validation import SmokeTestRecord
from onnxport.artifact.report import REPORT_FILENAMES, write_reports
from onnxport.errors import OutputError, PublishError

logger = logging.getLogger(__name__)

PARTIAL_MARKER = ".partial-"
OLD_MARKER = ".old-"


def _owner_pid(path: Path, marker: str) -> int | None:
    try:
        return int(path.name.split(marker, 1)[1].split("-", 1)[0])
    except (IndexError, ValueError):
        return None


def remove_stale_partials(final: Path) -> None:
    """Remove hidden work directories of `final` left by processes that no longer run.

    An earlier output that a killed process had moved aside to publish a new one (`.old-`)
    is put back under the final name when nothing took its place; otherwise removed.
    """
    if not final.parent.is_dir():
        return
    for marker in (OLD_MARKER, PARTIAL_MARKER):
        for candidate in final.parent.glob(f".{final.name}{marker}*"):
            pid = _owner_pid(candidate, marker)
            if pid is not None and pid != os.getpid() and psutil.pid_exists(pid):
                continue
            if marker == OLD_MARKER and not final.exists() and not verify_directory(candidate):
                logger.warning("restoring %s, left aside by a stopped publish", final)
                candidate.rename(final)
                continue
            logger.info("removing the leftover work directory %s", candidate)
            shutil.rmtree(candidate, ignore_errors=True)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(first: Path, second: Path) -> bool:
    """Swap two directories in one step (Linux renameat2 RENAME_EXCHANGE), so that the final
    name never goes missing; False where the system or the filesystem cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # a libc without renameat2 (glibc < 2.28, musl)
        return False
    done = renameat2(
        _AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE
    )
    if done == 0:
        return True
    error = ctypes.get_errno()
    logger.debug("renameat2 exchange unavailable (%s); renaming in two steps", os.strerror(error))
    if error in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EXDEV):
        return False
    raise OSError(error, os.strerror(error), str(second))


MOUNT_TABLE = Path("/proc/self/mountinfo")


def is_mount_point(path: Path) -> bool:
    """Whether a file system is mounted at `path`. `os.path.ismount` compares devices, and so
    misses a bind mount of a directory of the same file system; Linux lists every mount."""
    if os.path.ismount(path):
        return True
    try:
        table = MOUNT_TABLE.read_text(encoding="utf-8", errors="surrogateescape")
    except OSError:  # not Linux
        return False
    target = os.path.realpath(path)
    # The mount point is the fifth field, its spaces, tabs and backslashes octal-escaped.
    return any(
        re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4]) == target
        for fields in (line.split() for line in table.splitlines())
        if len(fields) > 4
    )


def check_output_location(final: Path, *, force: bool) -> None:
    """Refuse an output path that would lose or overwrite something the user wants kept."""
    final = Path(final)
    try:
        for path in (final, *final.parents):
            if path.is_symlink() and not path.exists():
                raise OutputError(
                    f"the output path {final} goes through {path}, a symbolic link that leads "
                    "nowhere (dangling, or a loop)",
                    hint="remove the link or choose another output directory",
                )
        if final.is_file() or (final.exists() and not final.is_dir()):
            raise OutputError(
                f"the output path {final} is an existing file", hint="choose a directory path"
            )
        if final.is_dir() and is_mount_point(final):
            # Publishing renames the finished directory onto the final name, which a mount
            # point (a container volume) cannot take: refused before any work, not after.
            raise OutputError(
                f"the output path {final} is a mount point, which a finished conversion "
                "cannot be renamed onto",
                hint=f"publish into a directory inside it, for example {final / 'model'}",
            )
        if not final.is_dir() or not any(final.iterdir()):
            return
    except OSError as e:  # a name too long, a directory we may not read
        raise OutputError(
            f"cannot use the output path {final}: {e.strerror or e}",
            hint="choose a shorter or accessible output path",
        ) from e
    if not (final / MANIFEST_FILENAME).exists():
        raise OutputError(
            f"{final} exists and is not an onnxport output directory; refusing to replace it",
            hint="choose a new or empty output directory",
        )
    problems = verify_directory(final)
    if not problems and not force:
        raise OutputError(
            f"{final} already holds a complete conversion",
            hint="replace it with force=True (the old one stays until the new one is complete)",
        )
    if problems:
        logger.warning("%s is damaged (%s); it will be replaced", final, "; ".join(problems))


class Staging:
    """A hidden sibling directory to build the output in, then `publish()` it into place.

    Use as a context manager: leaving the block without `publish()` (an error, an interrupt)
    removes the work directory and leaves any earlier output untouched.
    """

    def __init__(self, final: Path) -> None:
        self.final = Path(final).absolute()
        self.path = self.final.parent / (
            f".{self.final.name}{PARTIAL_MARKER}{os.getpid()}-{uuid.uuid4().hex[:8]}"
        )
        self.published = False

    def __enter__(self) -> Staging:
        try:
            self.final.parent.mkdir(parents=True, exist_ok=True)
            remove_stale_partials(self.final)
            self.path.mkdir()
        except OSError as e:
            raise OutputError(
                f"cannot write to {self.final.parent}: {e.strerror or e}",
                hint="choose a writable output location",
            ) from e
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self.published:
            with interrupts.shielded():  # a second Ctrl-C must not leave half of it behind
                shutil.rmtree(self.path, ignore_errors=True)

    def publish(self) -> Path:
        """Rename the work directory to its final name, replacing an earlier output last.
        An interrupt received before this stops it here: nothing is published."""
        with interrupts.commit(self.final):
            return self._rename_into_place()

    def _rename_into_place(self) -> Path:
        old = None
        try:
            if self.final.is_dir() and _exchange(self.path, self.final):
                # The new output is in place; the earlier one is now under the work name.
                self.published = True
                shutil.rmtree(self.path, ignore_errors=True)
                logger.info("published %s", self.final)
                return self.final
            if self.final.exists():
                old = self.final.parent / (
                    f".{self.final.name}{OLD_MARKER}{os.getpid()}-{uuid.uuid4().hex[:8]}"
                )
                self.final.rename(old)
            self.path.rename(self.final)
        except OSError as e:
            if old is not None and not self.final.exists():
                old.rename(self.final)
            raise PublishError(f"cannot publish {self.final}: {e.strerror or e}") from e
        self.published = True
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        logger.info("published %s", self.final)
        return self.final


def finish_output(
    record: OutputRecord, directory: Path, smoke_test: SmokeTestRecord | None
) -> OutputRecord:
    """The record of a judged model as published: with its smoke test and the size and
    checksum of its file (and external data file) in `directory`."""
    if not record.published:
        return record
    facts: dict[str, object] = {"smoke_test": smoke_test}
    model = directory / record.file
    facts.update(sha256=sha256_file(model), size_bytes=model.stat().st_size)
    if record.data_file:
        data = directory / record.data_file
        facts.update(data_sha256=sha256_file(data), data_size_bytes=data.stat().st_size)
    return record.model_copy(update=facts)


def seal(manifest: Manifest, directory: Path) -> Manifest:
    """Record the checksum of every file in `directory` (by its path inside it: companions
    may sit in module directories, `1_Pooling/config.json`), then write the reports and the
    manifest as any change to a published directory does (`report.write_reports`); returns
    the manifest written. The models were hashed when they were finished (`finish_output`):
    their records' checksums are taken, not computed again."""
    sealed_apart = (MANIFEST_FILENAME, *REPORT_FILENAMES)
    known = {}
    for out in manifest.published_outputs():
        known[out.file] = out.sha256
        if out.data_file:
            known[out.data_file] = out.data_sha256
    files = {}
    for path in sorted(directory.rglob("*")):
        name = path.relative_to(directory).as_posix()
        if path.is_file() and name not in sealed_apart:
            files[name] = known.get(name) or sha256_file(path)
    return write_reports(directory, manifest.model_copy(update={"files": files}))
