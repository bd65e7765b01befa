"""The terminal, shared by every command: the two consoles, logging, and how an error is
printed (one or a few lines, the traceback only with --debug)."""

from __future__ import annotations

import logging
import os
import sys
import traceback

from rich.console import Console
from rich.markup import escape
from rich.text import Text

from onnxport.commands.flags import NO_FLAGS, FlagNames
from onnxport.errors import InternalError, OnnxportError

# Pipelines read our output from logs: keep tables whole rather than wrapped at 80 columns.
console = Console(stderr=True, width=None if sys.stderr.isatty() else 120)
stdout = Console(width=None if sys.stdout.isatty() else 120)


def literal(text: object, style: str = "") -> Text:
    """`text` printed as it is, never read as console markup: a node name such as
    `[node_MatMul_127]`, a path or a library's message keeps its brackets."""
    return Text(str(text), style=style)


def print_path(target: Console, label: str, path: object) -> None:
    """`label: path` on a line of its own, never folded: a long path stays whole (to copy),
    and no table title breaks into fragments around it."""
    line = Text(f"{label}: ", style="dim")
    line.append(str(path))
    target.print(line, soft_wrap=True)


def setup_logging(verbose: bool) -> None:
    """Warnings and errors only, or every step with `verbose`."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    # torch.onnx logs optional-dependency notices (torchvision) at WARNING on every export.
    # torch sets its own loggers' levels as it is imported, from TORCH_LOGS ("-torch": errors
    # only): the variable reaches the imports to come and the conversion's own processes.
    logging.getLogger("torch").setLevel(logging.INFO if verbose else logging.ERROR)
    if not verbose:
        os.environ.setdefault("TORCH_LOGS", "-torch")
        # MLflow configures its own loggers at import, at INFO unless told ("Creating initial
        # MLflow database tables..." on a new store); this reaches the child processes too.
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")


def print_error(error: BaseException, debug: bool, flags: FlagNames = NO_FLAGS) -> int:
    """Print `error` for a person and return the exit code: an onnxport error as its message
    and hint, with the command's `flags` said beside the settings they name; anything else
    (or a child's InternalError) as a bug to report."""
    if debug:
        traceback.print_exception(error)
        details = getattr(error, "details", None)
        if details:
            console.print(literal(f"details:\n{details}", "dim"), soft_wrap=True)
    if isinstance(error, OnnxportError):
        console.print(
            f"[red]error[/red] ({error.stage}): {escape(flags.said(error.message))}",
            highlight=False,
            soft_wrap=True,
        )
        if error.hint:
            hint = flags.said(error.hint)
            console.print(f"  hint: {hint}", highlight=False, soft_wrap=True, markup=False)
        return error.exit_code
    wrapped = (
        error
        if isinstance(error, InternalError)
        else InternalError(f"{type(error).__name__}: {error}")
    )
    console.print(
        f"[red]internal error[/red]: {escape(wrapped.message)}\n"
        "  this is a bug in onnxport; rerun with --debug and report the traceback",
        highlight=False,
    )
    return wrapped.exit_code
