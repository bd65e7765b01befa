"""The parent's side: start a child with a channel, watch it, and take back what it sends.

`run` starts a command (the conversion child, `python -m onnxport.execution ...`), `call` a
function (the export child); the watch is the same. It enforces a timeout, stops the child
when this process is interrupted, reads the child's peak memory from the kernel as it reaps
it, and says in one sentence how a child that left no outcome ended.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from onnxport import interrupts
from onnxport.errors import OnnxportError, error_from_dict
from onnxport.isolation.channel import CHANNEL_FD_ENV, Channel, Outcome, frame
from onnxport.isolation.child import PARENT_PID_ENV, SERVE
from onnxport.process import peak_rss_mb
from onnxport.progress import ProgressCallback, Stage, StageEvent, Status

if TYPE_CHECKING:
    import resource

logger = logging.getLogger(__name__)

POLL_SECONDS = 0.1
T = TypeVar("T")


@dataclass(frozen=True)
class Returned(Generic[T]):
    """What a child returned, how long it ran, and the peak memory of its largest process."""

    value: T
    seconds: float
    peak_rss_mb: float


def call(
    function: Callable[[Any, ProgressCallback], T],
    argument: object,
    *,
    name: str,
    error_type: type[OnnxportError],
    on_event: ProgressCallback,
    on_line: Callable[[str], None],
) -> Returned[T]:
    """`function(argument, progress)` in a fresh interpreter; see `run`. The child is in
    this process's group and takes no signal: this process stops it, at once."""
    return run(
        ["-c", SERVE],
        (function, argument),
        name=name,
        error_type=error_type,
        on_event=on_event,
        on_line=on_line,
    )


def run(
    command: Sequence[str],
    argument: object,
    *,
    name: str,
    error_type: type[OnnxportError],
    on_event: ProgressCallback,
    on_line: Callable[[str], None],
    env: Mapping[str, str] | None = None,
    timeout_seconds: float | None = None,
    timeout_hint: str | None = None,
    stop_grace_seconds: float | None = None,
) -> Returned[Any]:
    """Run this interpreter with `command` and a channel, hand the child `argument`, and
    return its value or raise its error as the same type.

    Args:
        command: the interpreter's arguments.
        argument: what the child reads first from its channel; small, as it is written
            before the watch begins.
        name: what the errors call the child ("the export process was killed by SIGKILL").
        error_type: raised when the child times out or ends without an outcome.
        on_event: receives the child's progress events as they come. The stages it began and
            did not end are reported failed when it ends without an outcome.
        on_line: receives each line the child prints, as it comes. Its log records of
            WARNING and above go to this process's logging under their own logger names.
        env: added to this process's environment for the child.
        timeout_seconds: the child is killed after this long; None: no limit.
        timeout_hint: what the timeout's error suggests.
        stop_grace_seconds: None: the child stays in this process's group, with SIGINT and
            SIGTERM blocked (a Ctrl-C at the terminal reaches this process alone), and is
            killed at once when this process stops. A number: the child leads a session of
            its own, with SIGINT blocked until it handles it (`interrupts.accept`); it is
            sent SIGINT and given this long before its whole group is killed.

    An interrupt of this process stops the child and is raised again, unless the child had
    already sent its value: that stands, and the interrupt stays recorded (`interrupts`).
    """
    listener = _Listener(on_event, on_line, name)
    started = time.perf_counter()
    child = _start(command, argument, env, own_session=stop_grace_seconds is not None)
    readers = [
        threading.Thread(target=listener.read_lines, args=(child.process.stdout,), daemon=True),
        threading.Thread(target=listener.read_channel, args=(child.channel,), daemon=True),
    ]
    for reader in readers:
        reader.start()
    timed_out = False
    try:
        while not child.reap() and listener.failure is None:
            interrupts.check()
            if timeout_seconds is not None and time.perf_counter() - started > timeout_seconds:
                timed_out = True
                break
            time.sleep(POLL_SECONDS)
    except BaseException as stopped:
        with interrupts.shielded():
            child.stop(readers, grace=stop_grace_seconds or 0.0)
        outcome = listener.outcome
        if isinstance(stopped, KeyboardInterrupt) and outcome and outcome.error is None:
            return Returned(outcome.value, time.perf_counter() - started, child.peak_rss_mb())
        raise
    if child.ended:
        _join(readers)
    else:
        child.stop(readers)
    if listener.failure is not None:
        raise listener.failure
    seconds = time.perf_counter() - started
    outcome = listener.outcome
    if outcome is not None and outcome.error is not None:
        raise error_from_dict(outcome.error)
    if outcome is not None:
        return Returned(outcome.value, seconds, child.peak_rss_mb())
    listener.fail_running_stages()
    if timed_out:
        raise error_type(
            f"the {name} process did not finish within {timeout_seconds:g} s and was stopped",
            hint=timeout_hint,
        )
    raise _ended_without_outcome(
        name, child.process.returncode, seconds, child.peak_rss_mb(), error_type
    )


def _ended_without_outcome(
    name: str, code: int | None, seconds: float, peak_mb: float, error_type: type[OnnxportError]
) -> OnnxportError:
    """The one sentence for a child that died or exited before it sent its outcome."""
    if code is not None and code < 0:
        signame = signal.Signals(-code).name
        return error_type(
            f"the {name} process was killed by {signame} after {seconds:.0f} s "
            f"(peak memory {peak_mb:.0f} MB)",
            hint="the machine may have run out of memory" if signame == "SIGKILL" else None,
        )
    return error_type(
        f"the {name} process exited with code {code} without a result",
        hint="its log lines say why",
    )


class _Child:
    """A started child: its process, the parent's end of its channel, and, once it is
    reaped, the kernel's record of its resources."""

    def __init__(self, process: subprocess.Popen, channel: Channel, own_session: bool) -> None:
        self.process = process
        self.channel = channel
        self.own_session = own_session
        self.usage: resource.struct_rusage | None = None

    @property
    def ended(self) -> bool:
        return self.usage is not None

    def reap(self, *, block: bool = False) -> bool:
        """Whether the child has ended (`block`: once it has). Reaped with `wait4`, which
        also gives its peak memory; its exit code is set on `process`, as `Popen` would."""
        if self.usage is None:
            pid, status, usage = os.wait4(self.process.pid, 0 if block else os.WNOHANG)
            if pid:
                self.process.returncode = os.waitstatus_to_exitcode(status)
                self.usage = usage
        return self.usage is not None

    def peak_rss_mb(self) -> float:
        return peak_rss_mb(self.usage) if self.usage is not None else 0.0

    def stop(self, readers: Iterable[threading.Thread], *, grace: float = 0.0) -> None:
        """Stop the child: with a `grace`, ask it first (SIGINT, which it handles as Ctrl-C
        at its next safe point); then kill it, and its whole group when it leads one."""
        if grace > 0 and not self.ended:
            self._signal(signal.SIGINT)
            deadline = time.monotonic() + grace
            while not self.reap() and time.monotonic() < deadline:
                time.sleep(0.05)
        self._signal(signal.SIGKILL)
        self.reap(block=True)
        _join(readers)

    def _signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            if self.own_session:  # also its helpers, which may outlive it
                os.killpg(self.process.pid, signum)
            elif not self.ended:
                os.kill(self.process.pid, signum)


def _start(
    command: Sequence[str], argument: object, env: Mapping[str, str] | None, *, own_session: bool
) -> _Child:
    framed = frame(argument)  # before the child starts: an argument that cannot go fails here
    ours, theirs = socket.socketpair()
    child_env = {
        **os.environ,
        **(env or {}),
        CHANNEL_FD_ENV: str(theirs.fileno()),
        PARENT_PID_ENV: str(os.getpid()),
    }
    # A signal sent to the child before it can handle it waits, blocked, until it does.
    blocked = (signal.SIGINT,) if own_session else interrupts.SIGNALS
    process = None
    try:
        with interrupts.blocked(blocked):
            process = subprocess.Popen(
                [sys.executable, *command],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                errors="replace",  # a library's odd bytes must not end the reader thread
                env=child_env,
                pass_fds=(theirs.fileno(),),
                start_new_session=own_session,
            )
    except BaseException:
        ours.close()
        if process is not None:  # this process's signal came as they were unblocked
            with contextlib.suppress(ProcessLookupError):
                (os.killpg if own_session else os.kill)(process.pid, signal.SIGKILL)
            process.wait()
        raise
    finally:
        theirs.close()  # the child's copy alone keeps it open: its end is our end of channel
    channel = Channel(ours)
    channel.write(framed)
    return _Child(process, channel, own_session)


def _join(readers: Iterable[threading.Thread]) -> None:
    # A grandchild that inherited the child's stdout could hold it open after the child ends.
    for reader in readers:
        reader.join(timeout=5)


class _Listener:
    """What the reader threads took from the child, and the caller's callbacks run there.

    The first exception a callback raises ends the calls (the streams are still drained, so
    that the child never blocks on a full pipe) and is kept for the watch loop to raise.
    """

    def __init__(
        self, on_event: ProgressCallback, on_line: Callable[[str], None], name: str
    ) -> None:
        self.on_event = on_event
        self.on_line = on_line
        self.name = name
        self.outcome: Outcome | None = None
        self.failure: BaseException | None = None
        self.running: dict[Stage, float] = {}
        """The stages the child began and did not end, since when."""

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

    def read_channel(self, channel: Channel) -> None:
        try:
            while True:
                try:
                    message = channel.receive()
                except ValueError as e:
                    logger.warning("a damaged message from the %s process: %s", self.name, e)
                    continue
                self._take(message)
        except EOFError:
            pass
        finally:
            channel.close()

    def _take(self, message: object) -> None:
        if isinstance(message, StageEvent):
            if message.status is Status.START:
                self.running[message.stage] = time.perf_counter()
            else:
                self.running.pop(message.stage, None)
            self._call(self.on_event, message)
        elif isinstance(message, Outcome):
            self.outcome = message
        elif isinstance(message, logging.LogRecord):
            self._call(_replay, message)
        else:
            logger.warning("not a message of the %s process: %.200r", self.name, message)

    def fail_running_stages(self) -> None:
        """The child ended in these stages: report them failed, as a stage here would be."""
        for stage, since in self.running.items():
            seconds = round(time.perf_counter() - since, 3)
            self._call(self.on_event, StageEvent(stage, Status.FAILED, seconds))
        self.running.clear()


def _replay(record: logging.LogRecord) -> None:
    """A child's log record, into this process's logging as if logged here."""
    target = logging.getLogger(record.name)
    if target.isEnabledFor(record.levelno):
        target.handle(record)
