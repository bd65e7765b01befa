"""One exception per stage, so that callers and the CLI can tell what failed and what to do.

User errors (bad input, a model that does not compute the same thing) derive from
`OnnxportError`; `InternalError` marks a bug in onnxport itself. Each carries the exit
code the CLI uses: 2 for input the user can fix, 1 for a conversion that failed.
"""

from __future__ import annotations

EXIT_CONVERSION_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT: what a shell reports for a process stopped by Ctrl-C


def one_line(error: BaseException | str, limit: int = 300) -> str:
    """What a library raised, on one line and at most `limit` characters, for quoting in an
    onnxport error message; an exception without a message gives its type's name."""
    text = " ".join(str(error).split())[:limit]
    if not text and isinstance(error, BaseException):
        return type(error).__name__
    return text


class OnnxportError(Exception):
    """Base class of every error onnxport raises on purpose."""

    stage: str = "conversion"
    exit_code: int = EXIT_CONVERSION_FAILED

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message

    def to_dict(self) -> dict[str, str | None]:
        """A JSON-able form, so a child process can hand the error to its parent."""
        return {"type": type(self).__name__, "message": self.message, "hint": self.hint}

    @staticmethod
    def from_dict(data: dict[str, str | None]) -> OnnxportError:
        cls = ERROR_TYPES.get(str(data.get("type")), InternalError)
        return cls(str(data.get("message")), hint=data.get("hint"))


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


class AzureMLError(OnnxportError):
    stage = "azureml"


class AzureMLInputError(AzureMLError):
    """A job request the caller can fix: no compute, no code, an unfinished training job."""

    exit_code = EXIT_BAD_INPUT


class InternalError(OnnxportError):
    """A bug in onnxport itself; please report it with the --debug traceback."""

    stage = "internal"


ERROR_TYPES: dict[str, type[OnnxportError]] = {
    cls.__name__: cls
    for cls in (
        OnnxportError,
        ConfigError,
        SourceError,
        OutputError,
        ExportError,
        PassError,
        QuantizationError,
        ValidationError,
        SmokeTestError,
        PublishError,
        TrackingError,
        ExecutionError,
        BenchmarkError,
        AzureMLError,
        AzureMLInputError,
        InternalError,
    )
}
