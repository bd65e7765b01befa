"""The parent side: start the conversion child, watch it, and take what it sends.

The parent streams the child's log lines as they come, hands on its progress events and its
forwarded log records (`protocol`), enforces a timeout, records the child's peak memory, and
re-raises a child's error as the same typed error. A crash, an out-of-memory kill or a hang
in the exporter cannot take the caller down.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from onnxport import interrupts
from onnxport.errors import ExecutionError, error_from_dict
from onnxport.execution.child import ChildArguments
from onnxport.execution.protocol import (
    EVENTS_FD_ENV,
    PARENT_PID_ENV,
    Outcome,
    log_event,
    read_messages,
)
from onnxport.progress import ProgressCallback, StageEvent

logger = logging.getLogger("onnxport.execution")

POLL_SECONDS = 0.1
STOP_GRACE_SECONDS = 15.0
"""How long an interrupted caller lets the child stop by itself (removing its work directory,
ending at its next safe point) before it kills the child's process group."""


@dataclass(frozen=True)
class ChildResult:
    manifest_path: Path
    seconds: float
    peak_rss_mb: float


class _Listener:
    """What the reader threads took from the child, and the caller's callbacks run there.

    The first exception a callback raises ends the calls (the streams are still drained, so
    that the child never blocks on a full pipe) and is kept for the watch loop to raise.
    """

    def __init__(
        self, on_event: ProgressCallback | None, on_line: Callable[[str], None] | None
    ) -> None:
        self.on_event = on_event or (lambda event: log_event(logger, event))
        self.on_line = on_line or (lambda line: logger.info("[conversion] %s", line))
        self.outcome: Outcome | None = None
        self.failure: BaseException | None = None

    def _call(self, callback: Callable[[Any], None], value: Any) -> None:
        if self.failure is not None:
            return
        try:
            callback(value)
        except BaseException as e:
            self.failure = e

    def read_lines(self, pipe) -> None:
        for line in iter(pipe.readline, ""):
            self._call(self.on_line, line.rstrip("\n"))
        pipe.close()

    def read_channel(self, channel) -> None:
        with channel:
            for message in read_messages(channel, logger):
                if isinstance(message, StageEvent):
                    self._call(self.on_event, message)
                elif isinstance(message, Outcome):
                    self.outcome = message
                else:
                    self._call(_replay, message)


def _replay(record: logging.LogRecord) -> None:
    """A child's log record, into this process's logging as if logged here."""
    target = logging.getLogger(record.name)
    if target.isEnabledFor(record.levelno):
        target.handle(record)


def _tree_rss(process) -> int:
    import psutil

    try:
        total = process.memory_info().rss
        for child in process.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                total += child.memory_info().rss
        return total
    except psutil.Error:
        return 0


def _kill_group(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def _start(arguments: ChildArguments, env: dict[str, str] | None) -> tuple[subprocess.Popen, int]:
    """The child, and the read end of its channel."""
    read_end, write_end = os.pipe()
    child_env = {
        **os.environ,
        **(env or {}),
        EVENTS_FD_ENV: str(write_end),
        PARENT_PID_ENV: str(os.getpid()),
    }
    child_env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    command = [sys.executable, "-m", "onnxport.execution", *arguments.argv()]
    try:
        # The SIGINT this process forwards when it is interrupted waits until the child
        # handles it (`interrupts.accept`); a SIGTERM from elsewhere acts at once, as ever.
        with interrupts.blocked((signal.SIGINT,)):
            process = subprocess.Popen(
                command,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                errors="replace",  # a library's odd bytes must not end the reader thread
                env=child_env,
                pass_fds=(write_end,),
                start_new_session=True,  # its own process group: a kill reaches its helpers
            )
    except BaseException:
        os.close(read_end)
        raise
    finally:
        os.close(write_end)  # the child's copy alone keeps it open: its end is our EOF
    return process, read_end


def run_child(
    arguments: ChildArguments,
    *,
    timeout_seconds: float,
    env: dict[str, str] | None = None,
    on_event: ProgressCallback | None = None,
    on_line: Callable[[str], None] | None = None,
) -> ChildResult:
    """Run the conversion child and return its result, or raise its error.

    Args:
        arguments: the child's command line.
        timeout_seconds: the child is killed (its whole process group) after this long.
        env: extra environment for the child (MLflow run id, lineage).
        on_event: receives each progress event of the child as it comes; default: our log.
        on_line: receives each line the child prints (its log below WARNING, and whatever
            its libraries print) as it comes; default: our logger. Its records of WARNING
            and above go to this process's logging under their own logger names.
    """
    import psutil

    listener = _Listener(on_event, on_line)
    started = time.perf_counter()
    process, channel = _start(arguments, env)
    readers = [
        threading.Thread(target=listener.read_lines, args=(process.stdout,), daemon=True),
        threading.Thread(
            target=listener.read_channel, args=(os.fdopen(channel, "rb"),), daemon=True
        ),
    ]
    for reader in readers:
        reader.start()
    watched = psutil.Process(process.pid)
    peak = 0
    timed_out = False
    try:
        while process.poll() is None and listener.failure is None:
            interrupts.check()
            peak = max(peak, _tree_rss(watched))
            if time.perf_counter() - started > timeout_seconds:
                timed_out = True
                break
            time.sleep(POLL_SECONDS)
    except BaseException as stopped:
        # The caller was interrupted: the child stops too, and leaves no orphan behind.
        with interrupts.shielded():
            _stop(process, readers, grace=STOP_GRACE_SECONDS)
        manifest = listener.outcome.manifest if listener.outcome else None
        if isinstance(stopped, KeyboardInterrupt) and manifest is not None:
            # It had published before the interrupt reached it: that result stands, and the
            # interrupt, still recorded, is raised naming it when the handling ends.
            interrupts.published(manifest.parent)
            return ChildResult(manifest, time.perf_counter() - started, peak / 2**20)
        raise
    if timed_out or listener.failure is not None:
        _stop(process, readers)
    else:
        _join(readers)
    if listener.failure is not None:
        raise listener.failure
    seconds = time.perf_counter() - started
    if timed_out:
        raise ExecutionError(
            f"the conversion did not finish within {timeout_seconds:g} s and was stopped",
            hint="raise execution.timeout_seconds in conversion.yaml if the model is large",
        )
    return _result(process.returncode, listener.outcome, seconds, peak / 2**20)


def _stop(
    process: subprocess.Popen, readers: Iterable[threading.Thread], *, grace: float = 0.0
) -> None:
    """Stop the child: with a `grace`, ask it first (SIGINT, which it handles as Ctrl-C at
    its next safe point), then kill its whole process group."""
    if grace > 0 and process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=grace)
    _kill_group(process)
    process.wait()
    _join(readers)


def _join(readers: Iterable[threading.Thread]) -> None:
    # A grandchild that inherited the child's stdout could hold it open after the child ends.
    for reader in readers:
        reader.join(timeout=5)


def _result(
    code: int | None, outcome: Outcome | None, seconds: float, peak_mb: float
) -> ChildResult:
    if outcome is not None and outcome.error is not None:
        raise error_from_dict(outcome.error)
    if outcome is not None and outcome.manifest is not None:
        return ChildResult(outcome.manifest, seconds, peak_mb)
    if code is not None and code < 0:
        name = signal.Signals(-code).name
        hint = "the machine may have run out of memory" if name == "SIGKILL" else None
        raise ExecutionError(
            f"the conversion process was killed by {name} after {seconds:.0f} s "
            f"(peak memory {peak_mb:.0f} MB)",
            hint=hint,
        )
    raise ExecutionError(
        f"the conversion process exited with code {code} without a result",
        hint="rerun with --debug to see its log",
    )
