"""The child's side: its orphan watch, its logging, its outcome; and `serve`, the child that
`parent.call` starts to run a function."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import NoReturn

from onnxport.errors import InternalError, OnnxportError
from onnxport.isolation.channel import FORWARDED_LEVEL, Channel, Outcome
from onnxport.process import exit_process, own_process

logger = logging.getLogger(__name__)

PARENT_PID_ENV = "ONNXPORT_PARENT_PID"
"""The parent's pid, so that the child notices a parent gone before it started watching."""
SERVE = "from onnxport.isolation.child import serve; serve()"
"""The program of `parent.call`'s child."""


def watch_parent(on_orphaned: Callable[[], None] | None = None) -> None:
    """Exit when the parent is gone, so that no work goes on unwatched (a child that leads a
    session of its own outlives a killed parent otherwise); `on_orphaned` runs first, its
    failure ignored. The parent's pid comes from the parent itself, so that a parent already
    gone when this runs is noticed too."""
    parent_pid = int(os.environ.pop(PARENT_PID_ENV, "") or os.getppid())

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        logger.error("the parent process %d is gone; stopping", parent_pid)
        if on_orphaned is not None:
            with contextlib.suppress(Exception):
                on_orphaned()
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def setup_logging(channel: Channel | None) -> None:
    """Log to stderr; with a parent, the records it must see go to it instead, whole."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    )
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    root.addHandler(handler)
    if channel is not None:
        handler.addFilter(lambda record: record.levelno < FORWARDED_LEVEL)
        root.addHandler(channel.log_handler())
    for noisy in ("torch", "onnx_ir", "onnxscript"):
        logging.getLogger(noisy).setLevel(logging.WARNING if noisy != "torch" else logging.ERROR)


def outcome_of(work: Callable[[], object]) -> tuple[Outcome, int]:
    """Run `work`: its value, or its error as data, and the exit code that goes with it."""
    try:
        return Outcome(value=work()), 0
    except (OnnxportError, InternalError) as e:
        return Outcome(error=e.to_dict()), e.exit_code
    except Exception as e:  # a bug: the parent raises it as one
        traceback.print_exc()
        bug = InternalError(f"{type(e).__name__}: {e}")
        return Outcome(error=bug.to_dict()), bug.exit_code


def serve() -> NoReturn:
    """The child of `parent.call`: run the function its parent sent, send the outcome, exit.
    It never unblocks the SIGINT and SIGTERM it was started with: its parent stops it."""
    own_process()
    watch_parent()
    channel = Channel.from_environment()
    if channel is None:
        raise SystemExit(f"{SERVE!r} runs only as the child of onnxport.isolation.parent.call")
    setup_logging(channel)
    function, argument = channel.receive()  # type: ignore[misc]
    outcome, code = outcome_of(lambda: function(argument, channel.send))
    channel.send(outcome)
    exit_process(code)
