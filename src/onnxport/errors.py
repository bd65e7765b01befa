"""Every error onnxport raises on purpose, one class per stage, so that callers and the CLI can
tell what failed and what to do.

User errors (bad input, a model that does not compute the same thing) derive from
`OnnxportError` and carry the exit code the CLI uses: 2 for input the user can fix, 1 for a
conversion that failed. `InternalError` marks a bug in onnxport itself and stands outside
that hierarchy, so that `except OnnxportError` never swallows one. Every class registers
itself by name, so that the conversion child can hand any of them to its parent as data
(`to_dict`) and the parent raises the same type again (`error_from_dict`).
"""

from __future__ import annotations

import re
from typing import ClassVar

EXIT_CONVERSION_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT: what a shell reports for a process stopped by Ctrl-C

# ANSI escape sequences (colours, cursor moves) that some libraries put in their messages.
_TERMINAL_CODE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

ERROR_TYPES: dict[str, type[OnnxportError | InternalError]] = {}
"""Every error class by name: what a child's error can be raised as in its parent."""


def one_line(error: BaseException | str, limit: int | None = 300) -> str:
    """What a library raised, on one line, for quoting in an onnxport error message: without
    terminal colour codes, at most `limit` characters (None: all of it), a cut one ending in
    "…"; an exception without a message gives its type's name."""
    text = " ".join(_TERMINAL_CODE.sub("", str(error)).split())
    if not text and isinstance(error, BaseException):
        return type(error).__name__
    if limit is not None and len(text) > limit:
        return text[: limit - 1] + "…"
    return text


class _Channelled(Exception):
    """An error with a stage, a message and a hint, registered for the child's channel."""

    stage: ClassVar[str] = "conversion"
    exit_code: ClassVar[int] = EXIT_CONVERSION_FAILED

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        ERROR_TYPES[cls.__name__] = cls

    def __init__(
        self, message: str, *, hint: str | None = None, details: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.details = details
        """A library's own words behind the message (ONNX Runtime's), shown with --debug."""

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message

    def to_dict(self) -> dict[str, str | None]:
        """A JSON-able form, so a child process can hand the error to its parent."""
        return {
            "type": type(self).__name__,
            "message": self.message,
            "hint": self.hint,
            "details": self.details,
        }


def error_from_dict(data: dict[str, str | None]) -> OnnxportError | InternalError:
    """The error `to_dict` described, as its own type; an unknown type is a bug."""
    cls = ERROR_TYPES.get(str(data.get("type")), InternalError)
    return cls(str(data.get("message")), hint=data.get("hint"), details=data.get("details"))


class OnnxportError(_Channelled):
    """Base class of every error onnxport raises about the user's input or model."""


class InternalError(_Channelled):
    """A bug in onnxport itself; please report it with the --debug traceback."""

    stage = "internal"


class ConfigError(OnnxportError):
    stage = "config"
    exit_code = EXIT_BAD_INPUT


class SourceError(OnnxportError):
    stage = "load"
    exit_code = EXIT_BAD_INPUT


class OutputError(OnnxportError):
    """The output location cannot be used (a file, an existing result without --force, ...)."""

    stage = "output"
    exit_code = EXIT_BAD_INPUT


class ExportError(OnnxportError):
    stage = "export"


class PassError(OnnxportError):
    stage = "passes"


class QuantizationError(PassError):
    stage = "quantize"


class ValidationError(OnnxportError):
    stage = "validate"


class SmokeTestError(OnnxportError):
    stage = "smoke_test"


class PublishError(OnnxportError):
    stage = "publish"


class TrackingError(OnnxportError):
    stage = "tracking"


class ExecutionError(OnnxportError):
    """The isolated conversion process failed, was killed or timed out."""

    stage = "execution"


class BenchmarkError(OnnxportError):
    stage = "benchmark"


class BenchmarkInputError(BenchmarkError):
    """The directory or the settings cannot be benchmarked; the user can fix it."""

    exit_code = EXIT_BAD_INPUT


class ReportError(OnnxportError):
    """The directory cannot be reported on; the user can fix it."""

    stage = "report"
    exit_code = EXIT_BAD_INPUT


class PredictError(OnnxportError):
    """The directory, the variant or a text cannot be used for prediction."""

    stage = "predict"
    exit_code = EXIT_BAD_INPUT


class TextTooLongError(PredictError):
    """A text has more tokens than the model reads, and `on_long_text="error"` was asked."""


class ServeError(OnnxportError):
    """A model that cannot be served as asked: no such model, a port in use, bad settings."""

    stage = "serve"
    exit_code = EXIT_BAD_INPUT


class VerifyError(OnnxportError):
    """`onnxport verify` refused a model or a directory: it does not compute what its
    checkpoint computes, or its files are not the ones the manifest proved."""

    stage = "verify"


class VerifyInputError(VerifyError):
    """What `onnxport verify` was given cannot be checked as asked: not an ONNX file, input
    or output names that do not match the checkpoint's, shapes the graph does not take."""

    exit_code = EXIT_BAD_INPUT


class AzureMLError(OnnxportError):
    stage = "azureml"


class AzureMLInputError(AzureMLError):
    """A job request the caller can fix: no compute, no code, an unfinished training job."""

    exit_code = EXIT_BAD_INPUT


class AzureMLNotInstalledError(AzureMLError):
    """azure-ai-ml (the `azureml` extra) is missing or cannot be imported."""

    exit_code = EXIT_BAD_INPUT


class CacheError(OnnxportError):
    """The export cache cannot be used as asked: its directory, a size limit."""

    stage = "cache"
    exit_code = EXIT_BAD_INPUT
