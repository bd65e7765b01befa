"""Interrupts as data: SIGINT and SIGTERM recorded when they arrive, and raised again at the
next safe point, so that no interrupt is ever lost.

Python raises `KeyboardInterrupt` in whatever bytecode runs next. During torch's export that
is often a weakref callback or a finalizer, where the exception is printed as "ignored" and
dropped: the conversion went on and published. Here the handler records the signal before it
raises, and the pipeline asks again (`check`) where stopping is safe: as each stage starts
and ends, before the output directory takes its final name (`commit`), while it waits for a
child process. Cleanup that must finish (removing a staging directory, stopping a child)
runs `shielded`: a signal arriving then is recorded, not raised into the cleanup.

Only onnxport's own entry points and the conversion itself take the signals over, and only
from handlers that would stop the process anyway (Python's default SIGINT handler, the
default SIGTERM action): a host application's own handlers are left alone.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SIGNALS = (signal.SIGINT, signal.SIGTERM)

_received: int | None = None
"""The first signal received while handling is on; cleared when the outermost handling ends."""
_published: list[Path] = []
"""What a `commit` put in place while handling was on: an interrupt after it stopped nothing."""
_handling = 0
_shielded = 0


class Interrupted(KeyboardInterrupt):
    """The conversion was stopped by a signal (Ctrl-C is SIGINT). A `KeyboardInterrupt`, so
    that code which lets Ctrl-C through lets this through too."""

    def __init__(self, signum: int, published: tuple[Path, ...] = ()) -> None:
        self.signum = signum
        self.published = published
        """What was put in place before the interrupt could stop it (complete outputs)."""
        super().__init__(signal.Signals(signum).name)

    @property
    def exit_code(self) -> int:
        """128 + the signal's number: what a shell reports for a process it stopped."""
        return 128 + self.signum


def _handler(signum: int, _frame: object) -> None:
    global _received
    first = _received is None
    if first:
        _received = signum
    # A second signal while the first is raised is only recorded: it would otherwise land in
    # the cleanup the first one started. Cleanup that must finish is shielded, too.
    if first and not _shielded:
        raise Interrupted(signum, tuple(_published))


def _quiet_when_dropped(hook: object) -> object:
    """`sys.unraisablehook` that says nothing of an `Interrupted` Python dropped (it was
    recorded, and is raised again at the next safe point), and passes anything else to
    `hook`: the user sees no "Exception ignored" traceback for their own Ctrl-C."""

    def unraisable(info: object) -> None:
        if not isinstance(getattr(info, "exc_value", None), Interrupted):
            hook(info)  # type: ignore[operator]

    return unraisable


def _takes_over(signum: int) -> bool:
    current = signal.getsignal(signum)
    if signum == signal.SIGINT:
        return current is signal.default_int_handler
    return current in (signal.SIG_DFL, None)


@contextmanager
def handling() -> Iterator[None]:
    """Record SIGINT and SIGTERM while the block runs, and raise `Interrupted`.

    Nested uses share the outermost one, which raises `Interrupted` as it ends if a signal
    was received and the block still ended normally (it came after the work was published,
    it was dropped where Python cannot raise it, or code inside caught it): the caller asked
    to stop, and is told.
    Outside the main thread (where Python cannot set a handler) this does nothing: the main
    thread's own handling applies.
    """
    global _handling, _received
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    taken = {}
    hook = sys.unraisablehook
    if not _handling:
        for signum in SIGNALS:
            if _takes_over(signum):
                taken[signum] = signal.signal(signum, _handler)
        if taken:
            sys.unraisablehook = _quiet_when_dropped(hook)  # type: ignore[assignment]
    _handling += 1
    ended = False
    try:
        yield
        ended = True
    finally:
        _handling -= 1
        left = None
        if not _handling:
            for signum, previous in taken.items():
                signal.signal(signum, previous)
            if taken:
                sys.unraisablehook = hook
            if _received is not None:
                left = Interrupted(_received, tuple(_published))
            _received = None
            _published.clear()
    if ended and left is not None:
        raise left


def published(target: Path) -> None:
    """Note an output put in place (by this process's `commit`, or by a child)."""
    if _handling:
        _published.append(target)


def check() -> None:
    """Raise `Interrupted` if a signal was received: a safe point to stop at."""
    if _received is not None and not _shielded:
        raise Interrupted(_received, tuple(_published))


@contextmanager
def shielded() -> Iterator[None]:
    """Run cleanup that must finish: a signal arriving meanwhile is recorded, not raised."""
    global _shielded
    _shielded += 1
    try:
        yield
    finally:
        _shielded -= 1


@contextmanager
def commit(target: Path) -> Iterator[None]:
    """The point of no return, putting `target` in place (a rename): a signal received before
    it stops the work here. One arriving during it or after it is too late to stop anything:
    it stays recorded, and `handling` raises it as it ends, naming what was published."""
    held = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    try:
        check()
        yield
        published(target)
    finally:
        with shielded():
            signal.pthread_sigmask(signal.SIG_SETMASK, held)


def accept() -> None:
    """Unblock SIGINT and SIGTERM in a child started inside `blocked` that handles them
    itself; a signal sent meanwhile is delivered now."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)


@contextmanager
def blocked(signals: tuple[int, ...] = SIGNALS) -> Iterator[None]:
    """Start a child process in this block: it inherits `signals` blocked, so that a Ctrl-C
    at the terminal reaches only this process, which stops the child itself (or, for a child
    that handles them, so that one sent before it can is delivered once it does: `accept`).
    Signals sent to this process meanwhile are delivered when the block ends."""
    held = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)
