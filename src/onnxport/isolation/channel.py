"""What a child process and its parent tell each other, and how: one channel.

The channel is a socket pair, one end in each process, named to the child in
`ONNXPORT_CHANNEL_FD`: one descriptor both ways, whose messages arrive as they are written,
in order, and whose end comes when the child's end closes, also when the child is killed (no
file to tail, to place, or to find stale). A message is a pickled object behind its length.
The parent sends one argument; the child sends a `StageEvent` as each stage starts and ends,
each log record at WARNING or above, and last its `Outcome`: its value, or its error as data,
which the parent raises again as the same type (`errors.error_from_dict`). Pickle rather
than JSON because the export child hands back numpy arrays, and both ends run the same
onnxport. The child's stdout and stderr stay logs only (the libraries it runs print there):
the parent hands them on line by line and never parses them.
"""

from __future__ import annotations

import logging
import os
import pickle
import socket
import struct
import threading
from dataclasses import dataclass
from typing import Any

from onnxport.progress import StageEvent, Status

CHANNEL_FD_ENV = "ONNXPORT_CHANNEL_FD"
"""The file descriptor of the child's end of the channel, in the child."""
FORWARDED_LEVEL = logging.WARNING
"""The child's log records from this level up go to the parent's logging, not to stderr."""
_LENGTH = struct.Struct("!Q")


@dataclass(frozen=True)
class Outcome:
    """The child's last message: its value, or its error as data (`OnnxportError.to_dict`)."""

    value: Any = None
    error: dict[str, str | None] | None = None


class Channel:
    """One end of the channel. Sending is thread-safe: log records come from any thread."""

    def __init__(self, end: socket.socket) -> None:
        self._end = end
        self._reader = end.makefile("rb")
        self._lock = threading.Lock()
        self._broken = False

    @classmethod
    def from_environment(cls) -> Channel | None:
        """The channel the parent passed, or None for a child run on its own. Taken out of
        the environment and made non-inheritable: it is this process's alone."""
        fd = os.environ.pop(CHANNEL_FD_ENV, "")
        if not fd:
            return None
        os.set_inheritable(int(fd), False)
        return cls(socket.socket(fileno=int(fd)))

    def send(self, message: object) -> None:
        self.write(frame(message))

    def write(self, framed: bytes) -> None:
        """Send a message `frame` made."""
        with self._lock:
            if self._broken:
                return
            try:
                self._end.sendall(framed)
            except OSError:
                # The other end is gone: no one to tell. A child is stopped by its orphan
                # watch; a parent learns how the child ended when it reaps it.
                self._broken = True

    def receive(self) -> object:
        """The next message. EOFError at the end of the channel (also after a message cut
        short by the sender's death); ValueError for one that cannot be read, after which
        the next one can."""
        try:
            header = self._reader.read(_LENGTH.size)
            if len(header) < _LENGTH.size:
                raise EOFError("the end of the channel")
            (length,) = _LENGTH.unpack(header)
            payload = self._reader.read(length)
        except OSError as e:  # the sender died with a message of ours unread
            raise EOFError(str(e)) from e
        if len(payload) < length:
            raise EOFError("a message cut short")
        try:
            return pickle.loads(payload)
        except Exception as e:  # unpickling raises many types
            raise ValueError(f"{type(e).__name__}: {e}") from e

    def log_handler(self) -> logging.Handler:
        """Sends the records of `FORWARDED_LEVEL` and above to the parent's logging."""
        return _Forward(self)

    def close(self) -> None:
        self._reader.close()
        self._end.close()


def frame(message: object) -> bytes:
    """`message` as it goes on the channel (pickling fails here, not half-way through)."""
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(payload)) + payload


class _Forward(logging.Handler):
    def __init__(self, channel: Channel) -> None:
        super().__init__(FORWARDED_LEVEL)
        self.channel = channel

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.channel.send(_portable(record))
        except Exception:  # logging's own contract: a handler never raises
            self.handleError(record)


def _portable(record: logging.LogRecord) -> logging.LogRecord:
    """The record with its text made here: its arguments and traceback do not cross."""
    text = record.getMessage()
    if record.exc_info and not record.exc_text:
        record.exc_text = logging.Formatter().formatException(record.exc_info)
    if record.exc_text:
        text += "\n" + record.exc_text
    return logging.makeLogRecord(
        {"name": record.name, "levelno": record.levelno, "levelname": record.levelname, "msg": text}
    )


def log_event(logger: logging.Logger, event: StageEvent) -> None:
    """An event as a log line, where no one renders it (a child without a parent, or a
    parent without `on_event`)."""
    if event.status is Status.START:
        logger.info("stage %s started", event.stage.value)
    elif event.seconds is None:
        logger.info("stage %s %s", event.stage.value, event.status.value)
    else:
        logger.info("stage %s %s in %.1f s", event.stage.value, event.status.value, event.seconds)
