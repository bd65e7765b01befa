"""The `onnxport` command and `python -m onnxport.cli`, the platform's entry point: the
commands (one module each in `onnxport.commands`) assembled into one app, and `main`.

`--debug` (anywhere on the line) shows tracebacks; without it an error is one short message
and a non-zero exit code: 2 for input the user can fix, 1 for a conversion that failed.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import NoReturn

import typer

from onnxport import interrupts
from onnxport.commands.azureml import azureml_app
from onnxport.commands.benchmark import FLAGS as BENCHMARK_FLAGS
from onnxport.commands.benchmark import benchmark_command, report_command
from onnxport.commands.cache import cache_app
from onnxport.commands.console import console, print_error
from onnxport.commands.convert import FLAGS as CONVERT_FLAGS
from onnxport.commands.convert import convert_command
from onnxport.commands.debug import debug_command
from onnxport.commands.demo import demo_command
from onnxport.commands.flags import NO_FLAGS
from onnxport.commands.predict import predict_command
from onnxport.commands.run import run_command
from onnxport.commands.serve import serve_command
from onnxport.commands.verify import FLAGS as VERIFY_FLAGS
from onnxport.commands.verify import verify_command
from onnxport.errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED, OnnxportError
from onnxport.interrupts import Interrupted
from onnxport.process import exit_process, own_process

app = typer.Typer(
    name="onnxport",
    help="Convert trained PyTorch and Hugging Face models to validated ONNX models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("convert")(convert_command)
app.command("demo")(demo_command)
app.command("run")(run_command)
app.command("predict")(predict_command)
app.command("serve")(serve_command)
app.command("verify")(verify_command)
app.command("debug")(debug_command)
app.command("benchmark")(benchmark_command)
app.command("report")(report_command)
app.add_typer(azureml_app, name="azureml")
app.add_typer(cache_app, name="cache")


COMMAND_FLAGS = {"convert": CONVERT_FLAGS, "verify": VERIFY_FLAGS, "benchmark": BENCHMARK_FLAGS}
"""The commands that take settings as flags: the errors they print say them beside the config
keys and arguments the library names (`commands.flags`). The platform's `run` reads its
settings from conversion.yaml, in the library's words."""

PUBLISHING_COMMANDS = ("convert", "run", "demo")
"""The commands that publish a conversion: a Ctrl-C or SIGTERM at any moment of theirs stops
them before they publish, and is never lost (`onnxport.interrupts`). Elsewhere (`serve`),
Ctrl-C is the ordinary way to stop."""


def main(argv: list[str] | None = None) -> int:
    """Entry point of `onnxport` and `python -m onnxport.cli`."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("ONNXPORT_DEBUG") == "1"
    args = [a for a in args if a != "--debug"]
    if args and args[0].startswith("--") and args[0] not in ("--help", "-h"):
        # The platform calls `python -m onnxport.cli --config-dir ... --parent-training-dir ...`.
        args.insert(0, "run")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    try:
        handled = args and args[0] in PUBLISHING_COMMANDS
        with interrupts.handling() if handled else contextlib.nullcontext():
            # Without standalone mode, click returns a `typer.Exit(code)` as the value.
            returned = app(args=args, prog_name="onnxport", standalone_mode=False)
    except OnnxportError as e:
        return print_error(e, debug, COMMAND_FLAGS.get(args[0], NO_FLAGS) if args else NO_FLAGS)
    except typer.Exit as e:
        return e.exit_code
    except (typer.Abort, KeyboardInterrupt) as e:
        # click turns a KeyboardInterrupt inside a command into an Abort caused by it.
        cause = e.__cause__ if isinstance(e, typer.Abort) else e
        return _interrupted(cause if isinstance(cause, Interrupted) else None)
    except Exception as e:
        import click

        # typer vendors its own click (typer._click): usage errors may be either kind.
        if isinstance(e, (click.ClickException, typer.TyperException)) and hasattr(e, "show"):
            e.show()
            return e.exit_code if e.exit_code else EXIT_BAD_INPUT
        return print_error(e, debug)
    if returned == EXIT_INTERRUPTED:
        # Typer turns Ctrl-C inside a command into this return value, and says nothing.
        return _interrupted(None)
    return returned if isinstance(returned, int) else 0


def _interrupted(interrupt: Interrupted | None) -> int:
    if interrupt is None or not interrupt.published:
        console.print("interrupted; nothing was published")
    else:
        done = ", ".join(str(p) for p in interrupt.published)
        console.print(f"interrupted after the conversion was published (complete): {done}")
    return interrupt.exit_code if interrupt is not None else EXIT_INTERRUPTED


def run() -> NoReturn:
    """The `onnxport` command and `python -m onnxport.cli`: `main()`, then a fast exit."""
    own_process()
    exit_process(main())


if __name__ == "__main__":
    run()
