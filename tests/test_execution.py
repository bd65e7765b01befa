"""The isolated conversion process: its command line, and the parent-side runner.

The runner's protocol (result file, typed errors, signals, timeout, streamed lines) is tested
against a stand-in child, a small shell script put in place of the Python interpreter, so
these tests take milliseconds. One slow test runs the real `python -m onnxport.execution`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from onnxport.errors import (
    ExecutionError,
    InternalError,
    SourceError,
    ValidationError,
)
from onnxport.execution import ChildArguments, run_child
from onnxport.execution.runner import RESULT_ENV, _parse

FAKE_CHILD = r"""#!/bin/bash
# Stands in for `python -m onnxport.execution ...`; behaves as $FAKE_MODE says.
result="$ONNXPORT_RESULT_FILE"
case "$FAKE_MODE" in
  ok)
    echo "stage load started"
    echo "args: $*"
    echo "env: run=$MLFLOW_RUN_ID telemetry=$MLFLOW_DISABLE_TELEMETRY"
    sleep 0.5
    printf '{"ok": true, "manifest": "/out/manifest.json", "peak_rss_mb": 12.5}' > "$result"
    ;;
  streamed)
    echo "first"
    # Wait (at most 30 s) for the parent to have handled "first" while this child still runs.
    for _ in $(seq 300); do [ -e "$SEEN_FIRST" ] && break; sleep 0.1; done
    if [ -e "$SEEN_FIRST" ]; then echo "second"; else echo "first was not streamed"; fi
    printf '{"ok": true, "manifest": "/out/manifest.json"}' > "$result"
    ;;
  validation-error)
    echo "the child logs its error"
    printf '{"ok": false, "error": {"type": "ValidationError", ' > "$result"
    printf '"message": "logits differ by 3.0", "hint": "try torchscript"}}' >> "$result"
    exit 1
    ;;
  unknown-error)
    printf '{"ok": false, "error": {"type": "NoSuchError", ' > "$result"
    printf '"message": "odd", "hint": null}}' >> "$result"
    exit 1
    ;;
  stderr-only)
    echo "SourceError: this looks like an error but is only text" >&2
    exit 3
    ;;
  garbage)
    printf '{"ok": tr' > "$result"
    exit 1
    ;;
  sigkill) echo "about to die"; kill -KILL $$ ;;
  sigterm) kill -TERM $$ ;;
  hang)
    sleep 300 &
    echo "grandchild $!"
    wait
    ;;
esac
"""


@pytest.fixture
def fake_child(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Make run_child start the stand-in script; return a runner for a given mode."""
    script = tmp_path / "fake-python"
    script.write_text(FAKE_CHILD)
    script.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(script))

    def run(mode: str, *, on_line=None, env=None, **kwargs):
        lines: list[str] = []
        kwargs.setdefault("timeout_seconds", 30)
        kwargs.setdefault("result_file", tmp_path / "result.json")
        result = run_child(
            ARGS, env={"FAKE_MODE": mode, **(env or {})}, on_line=on_line or lines.append, **kwargs
        )
        return result, lines

    return run


def _grandchild_pid(lines: list[str]) -> int:
    return int(next(line for line in lines if line.startswith("grandchild")).split()[1])


def _gone(pid: int, within: float = 5.0) -> bool:
    """Whether `pid` has ended (or is a zombie waiting to be reaped) within `within` s."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


ARGS = ChildArguments(
    checkpoint_path=Path("/ckpt"),
    config_dir=Path("/config"),
    backbone="distilbert-base-uncased",
    output_dir=Path("/out"),
    opset_version=18,
    run_smoke_test=True,
    force=True,
    conv_fp="0123456789abcdef",
)


# ---------------------------------------------------------------------------- command line


def test_child_command_line_names_the_documented_flags() -> None:
    argv = ChildArguments(
        checkpoint_path=Path("/ckpt"),
        config_dir=Path("/config"),
        backbone="bert",
        output_dir=Path("/out"),
        opset_version=17,
        quantize_int8=True,
        run_smoke_test=True,
    ).argv()
    assert argv == [
        "--checkpoint-path", "/ckpt",
        "--config-dir", "/config",
        "--backbone", "bert",
        "--output-dir", "/out",
        "--opset-version", "17",
        "--quantize-int8",
        "--run-smoke-test",
    ]  # fmt: skip


def test_child_command_line_round_trips_through_the_child_parser() -> None:
    parsed = _parse(ARGS.argv())
    assert parsed.checkpoint_path == ARGS.checkpoint_path
    assert parsed.config_dir == ARGS.config_dir
    assert parsed.backbone == ARGS.backbone
    assert parsed.output_dir == ARGS.output_dir
    assert parsed.opset_version == ARGS.opset_version
    assert parsed.quantize_int8 is False
    assert parsed.run_smoke_test is True
    assert parsed.force is True
    assert parsed.conv_fp == ARGS.conv_fp


def test_optional_flags_are_left_out_when_off() -> None:
    argv = ChildArguments(Path("/c"), Path("/d"), "b", Path("/o"), 18, run_smoke_test=False).argv()
    assert "--quantize-int8" not in argv
    assert "--run-smoke-test" not in argv
    assert "--force" not in argv
    assert "--conv-fp" not in argv


# ------------------------------------------------------------------------------ the runner


def test_success_returns_the_childs_result(fake_child, tmp_path: Path) -> None:
    result, lines = fake_child("ok", env={"MLFLOW_RUN_ID": "run-123"})
    assert result.manifest_path == Path("/out/manifest.json")
    assert result.seconds >= 0.5
    assert result.peak_rss_mb > 0
    assert lines[0] == "stage load started"
    assert lines[1] == "args: -m onnxport.execution " + " ".join(ARGS.argv())
    assert lines[2] == "env: run=run-123 telemetry=true"


def test_child_lines_are_streamed_as_they_come(fake_child, tmp_path: Path) -> None:
    """The child prints "second" only once the parent has handled "first"."""
    seen_first = tmp_path / "seen-first"
    lines: list[str] = []

    def on_line(line: str) -> None:
        lines.append(line)
        if line == "first":
            seen_first.touch()

    fake_child("streamed", on_line=on_line, env={"SEEN_FIRST": str(seen_first)})
    assert lines == ["first", "second"]


def test_a_childs_typed_error_is_raised_as_the_same_type(fake_child) -> None:
    with pytest.raises(ValidationError) as raised:
        fake_child("validation-error")
    assert raised.value.message == "logits differ by 3.0"
    assert raised.value.hint == "try torchscript"


def test_an_unknown_error_type_becomes_an_internal_error(fake_child) -> None:
    with pytest.raises(InternalError, match="odd"):
        fake_child("unknown-error")


def test_stderr_text_is_not_mistaken_for_a_result(fake_child) -> None:
    """The error comes from the result file, never from grepping the child's output."""
    with pytest.raises(ExecutionError) as raised:
        fake_child("stderr-only")
    assert not isinstance(raised.value, SourceError)
    assert "exited with code 3 without a result" in str(raised.value)


def test_a_damaged_result_file_is_not_trusted(fake_child) -> None:
    with pytest.raises(ExecutionError, match="code 1"):
        fake_child("garbage")


def test_a_stale_result_file_from_an_earlier_run_is_ignored(fake_child, tmp_path: Path) -> None:
    stale = tmp_path / "result.json"
    stale.write_text(json.dumps({"ok": True, "manifest": "/old/manifest.json"}))
    with pytest.raises(ExecutionError, match="without a result"):
        fake_child("stderr-only", result_file=stale)


@pytest.mark.parametrize(("mode", "name"), [("sigkill", "SIGKILL"), ("sigterm", "SIGTERM")])
def test_a_child_killed_by_a_signal_is_an_execution_error_naming_it(
    fake_child, mode: str, name: str
) -> None:
    with pytest.raises(ExecutionError) as raised:
        fake_child(mode)
    assert name in str(raised.value)
    if name == "SIGKILL":
        assert "memory" in str(raised.value)  # the usual reason: the OOM killer


def test_timeout_stops_the_child_and_its_whole_process_group(fake_child) -> None:
    seen: list[str] = []
    started = time.perf_counter()
    with pytest.raises(ExecutionError) as raised:
        fake_child("hang", timeout_seconds=1.5, on_line=seen.append)
    # Not stopped early; a loaded machine can only make this truer. Had the timeout not
    # fired, the child would have ended on its own after 300 s with no result instead.
    assert time.perf_counter() - started >= 1.5
    message = str(raised.value)
    assert "1.5 s" in message
    assert "timeout_seconds" in message
    assert _gone(_grandchild_pid(seen)), "the child's own child outlived the timeout"


def test_an_interrupted_caller_kills_the_child_and_its_children(
    fake_child, monkeypatch: pytest.MonkeyPatch
) -> None:
    """KeyboardInterrupt in the caller: the child does not live on as an orphan."""
    import onnxport.execution.runner as execution

    seen: list[str] = []
    real_sleep = time.sleep

    def interrupting_sleep(seconds: float) -> None:
        if any(line.startswith("grandchild") for line in seen):
            raise KeyboardInterrupt
        real_sleep(seconds)

    monkeypatch.setattr(execution.time, "sleep", interrupting_sleep)
    with pytest.raises(KeyboardInterrupt):
        fake_child("hang", timeout_seconds=60, on_line=seen.append)
    assert _gone(_grandchild_pid(seen))


# --------------------------------------------------------------------------- the real child


@pytest.mark.slow
def test_real_child_writes_a_typed_error_as_data(tmp_path: Path) -> None:
    """`python -m onnxport.execution` on a missing checkpoint: exit 2, a SourceError result."""
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    (config_dir / "conversion.yaml").write_text("onnx: {opset_version: 18}\n")
    result_file = tmp_path / "result.json"
    args = ChildArguments(
        checkpoint_path=tmp_path / "no-such-checkpoint",
        config_dir=config_dir,
        backbone="bert",
        output_dir=tmp_path / "out",
        opset_version=18,
    )
    completed = subprocess.run(
        [sys.executable, "-m", "onnxport.execution", *args.argv()],
        env={**os.environ, RESULT_ENV: str(result_file), "MLFLOW_RUN_ID": ""},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 2, completed.stderr
    payload = json.loads(result_file.read_text())
    assert payload["ok"] is False
    assert payload["error"]["type"] == "SourceError"
    assert "no-such-checkpoint" in payload["error"]["message"]
    assert "Traceback" not in completed.stdout + completed.stderr
    assert not (tmp_path / "out").exists()
