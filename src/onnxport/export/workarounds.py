"""What the exporters need around them: their prints captured below Python, and the memory
onnxscript's rewriter keeps after an export let go."""

from __future__ import annotations

import contextlib
import gc
import io
import logging
import os
import sys
import tempfile
from collections.abc import Iterator

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def captured_stdout() -> Iterator[None]:
    """Capture what an exporter prints, at the file-descriptor level.

    torch's TorchScript exporter writes its IR graph to fd 1 when it fails, below Python's
    `sys.stdout`, so `redirect_stdout` alone would let ~70 KB through to the user.
    """
    sys.stdout.flush()
    saved = os.dup(1)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 1)
        buffer = io.StringIO()
        try:
            with contextlib.redirect_stdout(buffer):
                yield
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)
            sink.seek(0)
            printed = buffer.getvalue() + sink.read().decode("utf-8", "replace")
            if printed:
                logger.debug("exporter output:\n%s", printed[-4000:])


def release_rewriter_state() -> None:
    """Let go of the last graph onnxscript's rewriter matched.

    onnxscript 0.7's module-level rewrite rules keep their pattern matcher's last graph
    (`_graph`, `_match`, ...), which holds the exported initializers and so every
    Parameter of the model: without this, freeing the PyTorch model frees nothing.
    """
    try:
        from onnxscript.rewriter import _matcher
    except ImportError:
        return
    for obj in gc.get_objects():
        if isinstance(obj, _matcher.SimplePatternMatcher):
            for attr in ("_graph", "_current_node", "_match", "_tracer"):
                if hasattr(obj, attr):
                    setattr(obj, attr, None)
    gc.collect()
