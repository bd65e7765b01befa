"""The error hierarchy: a stage and an exit code per class, and a round trip as data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from onnxport import errors
from onnxport.errors import (
    ERROR_TYPES,
    EXIT_BAD_INPUT,
    EXIT_CONVERSION_FAILED,
    AzureMLInputError,
    AzureMLNotInstalledError,
    BenchmarkInputError,
    CacheError,
    ConfigError,
    InternalError,
    OnnxportError,
    OutputError,
    PredictError,
    ReportError,
    ServeError,
    SourceError,
    TextTooLongError,
    VerifyInputError,
    error_from_dict,
    one_line,
)

BAD_INPUT = {
    CacheError,
    ConfigError,
    SourceError,
    OutputError,
    AzureMLInputError,
    AzureMLNotInstalledError,
    BenchmarkInputError,
    ReportError,
    PredictError,
    TextTooLongError,
    ServeError,
    VerifyInputError,
}


def _all_error_classes() -> set[type[OnnxportError]]:
    return {
        value
        for value in vars(errors).values()
        if isinstance(value, type) and issubclass(value, OnnxportError)
    }


def test_every_error_class_is_registered_for_the_round_trip() -> None:
    assert set(ERROR_TYPES.values()) == _all_error_classes() | {InternalError}


def test_every_error_class_of_the_package_lives_in_errors_py() -> None:
    """An error class defined elsewhere could not cross the child's channel typed."""
    import ast

    package = Path(errors.__file__).parent
    elsewhere = []
    for file in package.rglob("*.py"):
        if file.name == "errors.py" and file.parent == package:
            continue
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and any(
                getattr(base, "id", "").endswith("Error") for base in node.bases
            ):
                elsewhere.append(f"{file.relative_to(package)}:{node.name}")
    assert elsewhere == []


def test_a_bug_is_not_a_user_error() -> None:
    """`except OnnxportError` must never swallow a bug."""
    assert not issubclass(InternalError, OnnxportError)
    with pytest.raises(InternalError):
        try:
            raise InternalError("a bug")
        except OnnxportError:  # pragma: no cover - the point is that this does not catch it
            pytest.fail("InternalError was caught as a user error")


@pytest.mark.parametrize("cls", sorted(BAD_INPUT, key=lambda c: c.__name__))
def test_input_errors_exit_with_2(cls: type[OnnxportError]) -> None:
    assert cls("x").exit_code == EXIT_BAD_INPUT == 2


def test_other_errors_exit_with_1() -> None:
    for cls in _all_error_classes() - BAD_INPUT | {InternalError}:
        assert cls("x").exit_code == EXIT_CONVERSION_FAILED == 1, cls


def test_each_stage_has_its_error() -> None:
    stages = {cls.stage for cls in _all_error_classes() - {OnnxportError}}
    assert {"config", "load", "export", "validate", "quantize", "smoke_test", "publish"} <= stages
    assert AzureMLInputError("x").stage == "azureml" and AzureMLInputError("x").exit_code == 2


def test_message_and_hint() -> None:
    error = SourceError("no weights in /ckpt", hint="check that training finished")
    assert str(error) == "no weights in /ckpt (check that training finished)"
    assert str(SourceError("no weights")) == "no weights"


@pytest.mark.parametrize("cls", sorted(ERROR_TYPES.values(), key=lambda c: c.__name__))
def test_round_trip_through_json(cls: type[OnnxportError]) -> None:
    error = cls("it failed", hint="do this", details="[E:runtime] raw words")
    back = error_from_dict(json.loads(json.dumps(error.to_dict())))
    assert type(back) is cls
    assert (back.message, back.hint, back.details) == (
        "it failed",
        "do this",
        "[E:runtime] raw words",
    )


def test_unknown_type_from_a_child_becomes_an_internal_error() -> None:
    back = error_from_dict({"type": "KeyError", "message": "'x'", "hint": None})
    assert type(back) is InternalError
    assert back.message == "'x'"


def test_one_line_quotes_a_library_error_on_one_short_line() -> None:
    error = ValueError("shape mismatch:\n  expected [2, 8]\n\tgot [2, 9]")
    assert one_line(error) == "shape mismatch: expected [2, 8] got [2, 9]"
    assert one_line(error, 15) == "shape mismatch…", "a cut message says so, within the limit"
    assert one_line(error, limit=None) == one_line(error)
    assert one_line("x" * 400, limit=None) == "x" * 400
    assert one_line("\x1b[1m\x1b[31mError:\x1b[0m no kernel") == "Error: no kernel"
    assert one_line(KeyError()) == "KeyError", "an empty message names the exception's type"
    assert one_line("  two\nlines ") == "two lines"
