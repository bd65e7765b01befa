"""What the conversion child tells its parent, and how: one channel of JSON lines.

The parent opens a pipe, passes its write end to the child (`pass_fds`) and names it in
`ONNXPORT_EVENTS_FD`. The child writes one JSON object per line: a progress event
(`progress.StageEvent`) as each stage starts and ends, each log record at WARNING or above,
and last its outcome (the manifest, or the error as data). The child's stdout and stderr stay
logs only: the libraries it runs print there, so nothing on them is ever parsed.

A pipe rather than a file the parent tails: messages arrive as they are written, in order,
with no polling and no half-read line; its end (EOF) comes when the child's write end closes,
also when the child is killed; and there is no file to place, clean up or find stale.

Run without a parent (Azure ML starts `python -m onnxport.execution` itself) the child has no
channel: its events go to its log, and its outcome to `--result-file` / `ONNXPORT_RESULT_FILE`
when one is named, as one JSON object (`Outcome.to_dict`).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from onnxport.progress import StageEvent, Status

EVENTS_FD_ENV = "ONNXPORT_EVENTS_FD"
"""The file descriptor of the channel's write end, in the child."""
PARENT_PID_ENV = "ONNXPORT_PARENT_PID"
"""The parent's pid, so that the child notices a parent gone before it started watching."""
RESULT_ENV = "ONNXPORT_RESULT_FILE"
"""Where the child writes its outcome as one JSON object, with or without a parent."""
FORWARDED_LEVEL = logging.WARNING
"""The child's log records from this level up go to the parent's logging, not to stderr."""


@dataclass(frozen=True)
class Outcome:
    """The child's last message: the published manifest, or the error as data."""

    manifest: Path | None = None
    error: dict[str, str | None] | None = None
    """An onnxport error's `to_dict`, raised again in the parent by `errors.error_from_dict`."""
    peak_rss_mb: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The result file's form: `{"ok": true, "manifest": ...}` or `{"ok": false, "error"}`."""
        if self.error is not None:
            return {"ok": False, "error": self.error}
        return {"ok": True, "manifest": str(self.manifest), "peak_rss_mb": self.peak_rss_mb}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Outcome:
        if data["ok"]:
            return cls(manifest=Path(data["manifest"]), peak_rss_mb=data.get("peak_rss_mb"))
        return cls(error=dict(data["error"]))


Message = StageEvent | logging.LogRecord | Outcome


def encode(message: Message) -> str:
    """One line of JSON, without its newline."""
    if isinstance(message, StageEvent):
        body: dict[str, Any] = {"kind": "progress", "event": message.to_dict()}
    elif isinstance(message, Outcome):
        body = {"kind": "outcome", "outcome": message.to_dict()}
    else:
        text = message.getMessage()
        if message.exc_info and not message.exc_text:
            message.exc_text = logging.Formatter().formatException(message.exc_info)
        if message.exc_text:
            text += "\n" + message.exc_text
        body = {"kind": "log", "name": message.name, "level": message.levelno, "message": text}
    return json.dumps(body)


def decode(line: str | bytes) -> Message:
    """The message `encode` wrote; ValueError for anything else."""
    try:
        body = json.loads(line)
        kind = body["kind"]
        if kind == "progress":
            return StageEvent.from_dict(body["event"])
        if kind == "outcome":
            return Outcome.from_dict(body["outcome"])
        if kind == "log":
            level = int(body["level"])
            return logging.makeLogRecord(
                {
                    "name": str(body["name"]),
                    "levelno": level,
                    "levelname": logging.getLevelName(level),
                    "msg": str(body["message"]),
                }
            )
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"not a message of the conversion process: {e}") from e
    raise ValueError(f"not a message of the conversion process: kind {kind!r}")


def read_messages(lines: Iterable[str | bytes], logger: logging.Logger) -> Iterator[Message]:
    """The messages on the channel, in order; a damaged line is logged and skipped."""
    for line in lines:
        try:
            yield decode(line)
        except ValueError as e:
            logger.warning("%s: %.200r", e, line)


class ParentChannel:
    """The child's end of the channel; thread-safe, as log records come from any thread."""

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd
        self._lock = threading.Lock()

    @classmethod
    def from_environment(cls) -> ParentChannel | None:
        """The channel the parent passed, or None when the child runs on its own. Taken out
        of the environment and made non-inheritable: it is this process's alone."""
        fd = os.environ.pop(EVENTS_FD_ENV, "")
        if not fd:
            return None
        os.set_inheritable(int(fd), False)
        return cls(int(fd))

    def send(self, message: Message) -> None:
        data = (encode(message) + "\n").encode("utf-8")
        with self._lock:
            if self._fd is None:
                return
            try:
                while data:
                    data = data[os.write(self._fd, data) :]
            except BrokenPipeError:
                # The parent is gone: no one to tell; the orphan watch stops this process.
                self._fd = None

    def log_handler(self) -> logging.Handler:
        """Sends the records of `FORWARDED_LEVEL` and above to the parent's logging."""
        return _Forward(self)


class _Forward(logging.Handler):
    def __init__(self, channel: ParentChannel) -> None:
        super().__init__(FORWARDED_LEVEL)
        self.channel = channel

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.channel.send(record)
        except Exception:  # logging's own contract: a handler never raises
            self.handleError(record)


def log_event(logger: logging.Logger, event: StageEvent) -> None:
    """An event as a log line, where no one renders it (a child without a parent, or a
    parent without `on_event`)."""
    if event.status is Status.START:
        logger.info("stage %s started", event.stage.value)
    elif event.seconds is None:
        logger.info("stage %s %s", event.stage.value, event.status.value)
    else:
        logger.info("stage %s %s in %.1f s", event.stage.value, event.status.value, event.seconds)


def write_result_file(path: Path, outcome: Outcome) -> None:
    """The outcome as one JSON object, replaced atomically so that no reader sees half."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(outcome.to_dict()), encoding="utf-8")
    tmp.replace(path)
