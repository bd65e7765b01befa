"""The isolated conversion process: its command line, its channel, and the parent-side runner.

The runner's protocol (progress events, forwarded log records, the outcome with typed errors,
signals, timeout, streamed lines) is tested against a stand-in child, a small shell script
put in place of the Python interpreter that writes to the channel as the real child does, so
these tests take milliseconds. Two slow tests run the real `python -m onnxport.execution`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from onnxport.artifact.manifest import read_manifest
from onnxport.errors import (
    ExecutionError,
    InternalError,
    SourceError,
    ValidationError,
)
from onnxport.execution import ChildArguments, run_child
from onnxport.execution.child import RESULT_ENV, parse_arguments
from onnxport.isolation.channel import Channel, Outcome
from onnxport.orchestration import execute_conversion
from onnxport.progress import Stage, StageEvent, Status
from onnxport.request.config import ConversionConfig, load_conversion_config
from onnxport.request.fingerprints import conversion_fingerprint
from support import (
    CONVERSION_YAML,
    EXEC_FP,
    SPEC_FP,
    lay_out_training_output,
    root_with_store,
    write_config_dir,
)

FAKE_CHILD = """
# Stands in for `python -m onnxport.execution ...`; behaves as $FAKE_MODE says.
import logging, os, signal, subprocess, sys, time
from pathlib import Path

from onnxport.isolation.channel import Channel, Outcome
from onnxport.progress import Stage, StageEvent, Status

channel = Channel.from_environment()
config = channel.receive()
mode = os.environ["FAKE_MODE"]


def event(stage, status, seconds=None):
    channel.send(StageEvent(Stage(stage), Status(status), seconds))


def say(line):
    print(line, flush=True)


def failure(kind, message, hint):
    channel.send(Outcome(error={"type": kind, "message": message, "hint": hint}))


published = Outcome(value=Path("/out/manifest.json"))
if mode == "ok":
    event("load", "start")
    say("args: " + " ".join(sys.argv[1:]))
    say(f"env: run={os.environ.get('MLFLOW_RUN_ID')} "
        f"telemetry={os.environ.get('MLFLOW_DISABLE_TELEMETRY')}")
    say(f"config: {config.onnx.opset_version if config else None}")
    channel.send(logging.makeLogRecord(
        {"name": "onnxport.pipeline", "levelno": 30, "levelname": "WARNING", "msg": "slow 100%"}
    ))
    time.sleep(0.5)
    event("load", "done", 0.5)
    channel.send(published)
elif mode == "streamed":
    say("first")
    event("load", "start")
    # Wait (at most 30 s) for the parent to have handled "first" and the event while this
    # child still runs.
    for _ in range(300):
        if os.path.exists(os.environ["SEEN_FIRST"]) and os.path.exists(os.environ["SEEN_EVENT"]):
            break
        time.sleep(0.1)
    say("second" if os.path.exists(os.environ["SEEN_FIRST"]) else "first was not streamed")
    if os.path.exists(os.environ["SEEN_EVENT"]):
        event("load", "done", 0.1)
    else:
        event("export", "start")
    channel.send(published)
elif mode == "validation-error":
    event("load", "start")
    event("load", "done", 1.5)
    event("validate", "start")
    say("the child logs its error")
    event("validate", "failed", 0.25)
    failure("ValidationError", "logits differ by 3.0", "try torchscript")
    sys.exit(1)
elif mode == "unknown-error":
    failure("NoSuchError", "odd", None)
    sys.exit(1)
elif mode == "stderr-only":
    print("SourceError: this looks like an error but is only text", file=sys.stderr)
    say("Outcome(value=PosixPath('/printed/manifest.json'))")
    sys.exit(3)
elif mode == "garbage":
    class OnlyHere:  # the parent cannot unpickle what only this script defines
        pass

    channel.send(OnlyHere())
    sys.exit(1)
elif mode == "silent":
    event("load", "start")
elif mode == "sigkill":
    event("load", "start")
    say("about to die")
    os.kill(os.getpid(), signal.SIGKILL)
elif mode == "sigterm":
    os.kill(os.getpid(), signal.SIGTERM)
elif mode == "hang":
    event("load", "start")
    sleeper = subprocess.Popen(["sleep", "300"])
    say(f"grandchild {sleeper.pid}")
    sleeper.wait()
"""


class FakeRun:
    """Runs the stand-in child in a mode; keeps the lines and events it handed on."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.events: list[StageEvent] = []

    def __call__(self, mode: str, *, env=None, **kwargs):
        kwargs.setdefault("timeout_seconds", 30)
        kwargs.setdefault("on_line", self.lines.append)
        kwargs.setdefault("on_event", self.events.append)
        return run_child(ARGS, env={"FAKE_MODE": mode, **(env or {})}, **kwargs)


@pytest.fixture
def fake_child(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeRun:
    """Make run_child start the stand-in script."""
    script = tmp_path / "fake-python"
    script.write_text(f"#!{sys.executable}\n{FAKE_CHILD}")
    script.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(script))
    return FakeRun()


def _events(*pairs: tuple[str, str, float | None]) -> list[StageEvent]:
    return [StageEvent(Stage(stage), Status(status), seconds) for stage, status, seconds in pairs]


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
    parsed = parse_arguments(ARGS.argv())
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
    assert "--refresh-export-cache" not in argv


def test_refreshing_the_export_cache_is_its_own_flag_beside_force() -> None:
    """`--force` replaces the output directory (the parent always asks for it); only
    `execute_conversion(force=True)` also exports past the export cache."""
    assert parse_arguments(ARGS.argv()).refresh_export_cache is False
    refreshed = dataclasses.replace(ARGS, refresh_export_cache=True)
    assert parse_arguments(refreshed.argv()).refresh_export_cache is True


# ----------------------------------------------------------------------------- the channel


@pytest.fixture
def channel() -> Iterator[tuple[Channel, Channel]]:
    """Both ends of a channel, in this process: (the parent's, the child's)."""
    parent, child = socket.socketpair()
    ends = Channel(parent), Channel(child)
    yield ends
    for end in ends:
        end.close()


@pytest.mark.parametrize(
    "message",
    [
        StageEvent(Stage.EXPORT, Status.START),
        StageEvent(Stage.VALIDATE, Status.FAILED, 0.25, "fp32"),
        Outcome(value=Path("/out/manifest.json")),
        Outcome(error=ValidationError("logits differ", hint="try torchscript").to_dict()),
        ConversionConfig().with_overrides(onnx={"opset_version": 17}),
    ],
)
def test_a_message_reads_back_as_it_was_written(channel, message) -> None:
    parent, child = channel
    child.send(message)
    assert parent.receive() == message


def test_a_log_record_reads_back_with_its_name_level_and_traceback(channel) -> None:
    parent, child = channel
    try:
        raise KeyError("weights")
    except KeyError:
        record = logging.LogRecord(
            "onnxport.pipeline", logging.ERROR, __file__, 1, "%s at 100%%", ("failed",), None
        )
        record.exc_info = sys.exc_info()
    child.log_handler().handle(record)
    decoded = parent.receive()
    assert isinstance(decoded, logging.LogRecord)
    assert (decoded.name, decoded.levelno, decoded.levelname) == (
        "onnxport.pipeline",
        logging.ERROR,
        "ERROR",
    )
    first, *rest = decoded.getMessage().splitlines()
    assert first == "failed at 100%"
    assert rest[0] == "Traceback (most recent call last):"
    assert rest[-1] == "KeyError: 'weights'"


def test_a_message_that_cannot_be_read_is_refused_and_the_next_one_read(channel) -> None:
    parent, child = channel
    child._end.sendall(struct.pack("!Q", 5) + b"junk!")
    child.send(StageEvent(Stage.LOAD, Status.START))
    with pytest.raises(ValueError, match="UnpicklingError"):
        parent.receive()
    assert parent.receive() == StageEvent(Stage.LOAD, Status.START)


def test_a_message_cut_short_ends_the_channel(channel) -> None:
    """What a child killed while it wrote leaves behind."""
    parent, child = channel
    child._end.sendall(struct.pack("!Q", 100) + b"only part of it")
    child.close()
    with pytest.raises(EOFError):
        parent.receive()


# ------------------------------------------------------------------------------ the runner


def test_success_returns_the_childs_result(fake_child: FakeRun) -> None:
    result = fake_child("ok", env={"MLFLOW_RUN_ID": "run-123"})
    assert result.manifest_path == Path("/out/manifest.json")
    assert result.seconds >= 0.5
    assert result.peak_rss_mb > 0
    assert fake_child.lines == [
        "args: -m onnxport.execution " + " ".join(ARGS.argv()),
        "env: run=run-123 telemetry=true",
        "config: None",  # none handed: the child reads --config-dir
    ]
    assert fake_child.events == _events(("load", "start", None), ("load", "done", 0.5))


def test_the_child_is_handed_the_settings_the_parent_read(fake_child: FakeRun) -> None:
    config = ConversionConfig().with_overrides(onnx={"opset_version": 17})
    fake_child("ok", config=config)
    assert "config: 17" in fake_child.lines


def test_a_childs_warning_reaches_the_parents_logging_under_its_name(
    fake_child: FakeRun, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="onnxport.pipeline"):
        fake_child("ok")
    (record,) = [r for r in caplog.records if r.name == "onnxport.pipeline"]
    assert (record.levelno, record.getMessage()) == (logging.WARNING, "slow 100%")
    assert not any("slow" in line for line in fake_child.lines)


def test_events_default_to_the_parents_log(
    fake_child: FakeRun, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="onnxport.execution"):
        fake_child("ok", on_event=None)
    assert "stage load started" in caplog.messages
    assert "stage load done in 0.5 s" in caplog.messages


def test_child_lines_and_events_are_streamed_as_they_come(fake_child, tmp_path: Path) -> None:
    """The child prints "second" and ends its stage only once the parent has handled
    "first" and the stage's start."""
    seen_first, seen_event = tmp_path / "seen-first", tmp_path / "seen-event"

    def on_line(line: str) -> None:
        fake_child.lines.append(line)
        if line == "first":
            seen_first.touch()

    def on_event(event: StageEvent) -> None:
        fake_child.events.append(event)
        seen_event.touch()

    fake_child(
        "streamed",
        on_line=on_line,
        on_event=on_event,
        env={"SEEN_FIRST": str(seen_first), "SEEN_EVENT": str(seen_event)},
    )
    assert fake_child.lines == ["first", "second"]
    assert fake_child.events == _events(("load", "start", None), ("load", "done", 0.1))


def test_a_childs_typed_error_is_raised_as_the_same_type_after_its_events(fake_child) -> None:
    with pytest.raises(ValidationError) as raised:
        fake_child("validation-error")
    assert raised.value.message == "logits differ by 3.0"
    assert raised.value.hint == "try torchscript"
    assert fake_child.events == _events(
        ("load", "start", None),
        ("load", "done", 1.5),
        ("validate", "start", None),
        ("validate", "failed", 0.25),
    )
    assert fake_child.lines == ["the child logs its error"]


def test_an_unknown_error_type_becomes_an_internal_error(fake_child) -> None:
    with pytest.raises(InternalError, match="odd"):
        fake_child("unknown-error")


def test_printed_text_is_not_mistaken_for_a_result(fake_child) -> None:
    """The outcome comes from the channel, never from the child's output: not an error
    printed on stderr, not a result printed on stdout."""
    with pytest.raises(ExecutionError) as raised:
        fake_child("stderr-only")
    assert not isinstance(raised.value, SourceError)
    assert "exited with code 3 without a result" in str(raised.value)
    assert len(fake_child.lines) == 2


def test_a_damaged_message_is_not_trusted(fake_child, caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(ExecutionError, match="code 1"):
        fake_child("garbage")
    assert any("a damaged message from the conversion process" in m for m in caplog.messages)


def _stages(events: list[StageEvent]) -> list[tuple[str, str]]:
    return [(e.stage.value, e.status.value) for e in events]


def test_a_child_that_exits_without_an_outcome_is_an_execution_error(fake_child) -> None:
    with pytest.raises(ExecutionError, match="exited with code 0 without a result"):
        fake_child("silent")
    # The stage it began and never ended is reported failed, as one here would be.
    assert _stages(fake_child.events) == [("load", "start"), ("load", "failed")]


@pytest.mark.parametrize(("mode", "name"), [("sigkill", "SIGKILL"), ("sigterm", "SIGTERM")])
def test_a_child_killed_by_a_signal_is_an_execution_error_naming_it(
    fake_child, mode: str, name: str
) -> None:
    with pytest.raises(ExecutionError) as raised:
        fake_child(mode)
    assert name in str(raised.value)
    if name == "SIGKILL":
        assert "memory" in str(raised.value)  # the usual reason: the OOM killer
        # What it sent before it died still arrives; the stage it died in failed.
        assert _stages(fake_child.events) == [("load", "start"), ("load", "failed")]


def test_timeout_stops_the_child_and_its_whole_process_group(fake_child) -> None:
    started = time.perf_counter()
    with pytest.raises(ExecutionError) as raised:
        fake_child("hang", timeout_seconds=1.5)
    # Not stopped early; a loaded machine can only make this truer. Had the timeout not
    # fired, the child would have ended on its own after 300 s with no result instead.
    assert time.perf_counter() - started >= 1.5
    message = str(raised.value)
    assert "1.5 s" in message
    assert "timeout_seconds" in message
    assert _gone(_grandchild_pid(fake_child.lines)), "the child's own child outlived the timeout"


def test_an_interrupted_caller_kills_the_child_and_its_children(
    fake_child, monkeypatch: pytest.MonkeyPatch
) -> None:
    """KeyboardInterrupt in the caller: the child does not live on as an orphan."""
    import onnxport.execution.runner as runner

    real_sleep = time.sleep
    caller = threading.get_ident()
    interrupted: list[bool] = []

    def interrupting_sleep(seconds: float) -> None:
        # time.sleep is patched for the whole process: interrupt the caller's wait once, and
        # nothing else (`_gone` below sleeps too; so may a thread of pytest-xdist's).
        if (
            not interrupted
            and threading.get_ident() == caller
            and any(line.startswith("grandchild") for line in fake_child.lines)
        ):
            interrupted.append(True)
            raise KeyboardInterrupt
        real_sleep(seconds)

    monkeypatch.setattr(time, "sleep", interrupting_sleep)
    # The stand-in child does not handle SIGINT (it never unblocks it): it is killed after
    # its grace period.
    monkeypatch.setattr(runner, "STOP_GRACE_SECONDS", 0.5)
    with pytest.raises(KeyboardInterrupt):
        fake_child("hang", timeout_seconds=60)
    assert _gone(_grandchild_pid(fake_child.lines))


def test_an_interrupt_as_the_child_starts_leaves_no_child(
    fake_child, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A signal held while the child starts arrives as soon as the start is done, before the
    watch begins: the child is stopped there, not left running unwatched."""
    from onnxport import interrupts

    @contextlib.contextmanager
    def interrupted_when_unblocked(signals):
        yield
        raise KeyboardInterrupt

    monkeypatch.setattr(interrupts, "blocked", interrupted_when_unblocked)
    with pytest.raises(KeyboardInterrupt):
        fake_child("hang", timeout_seconds=60)
    assert [p for p in psutil.Process().children(recursive=True) if p.status() != "zombie"] == []


def test_a_callback_that_raises_stops_the_child_and_its_error_reaches_the_caller(
    fake_child,
) -> None:
    """As in a conversion in this process, where a progress callback's error ends it."""

    class PrinterBroke(Exception):
        pass

    def on_event(event: StageEvent) -> None:
        raise PrinterBroke(event.stage.value)

    # Had the child not been stopped, this would end after 60 s in the timeout's error.
    with pytest.raises(PrinterBroke, match="load"):
        fake_child("hang", timeout_seconds=60, on_event=on_event)
    assert [p for p in psutil.Process().children() if "onnxport.execution" in p.cmdline()] == []


# --------------------------------------------------------------------------- the real child


def _missing_checkpoint(tmp_path: Path) -> ChildArguments:
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    (config_dir / "conversion.yaml").write_text("onnx: {opset_version: 18}\n")
    return ChildArguments(
        checkpoint_path=tmp_path / "no-such-checkpoint",
        config_dir=config_dir,
        backbone="bert",
        output_dir=tmp_path / "out",
        opset_version=18,
    )


@pytest.mark.slow
def test_real_child_on_its_own_logs_its_events_and_writes_its_error_as_data(
    tmp_path: Path,
) -> None:
    """`python -m onnxport.execution` without a parent, as Azure ML runs it, on a missing
    checkpoint: exit 2, a SourceError in the result file, its stages and error in its log."""
    args = _missing_checkpoint(tmp_path)
    result_file = tmp_path / "result.json"
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
    log = completed.stderr.splitlines()
    assert any(line.endswith("INFO onnxport.execution: stage load started") for line in log)
    assert any(" INFO onnxport.execution: stage load failed in " in line for line in log)
    assert any(
        " ERROR onnxport.execution: " in line and "no-such-checkpoint" in line for line in log
    )
    assert "Traceback" not in completed.stdout + completed.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_real_child_under_run_child_sends_its_events_and_its_typed_error(
    tmp_path: Path,
) -> None:
    args = _missing_checkpoint(tmp_path)
    events: list[StageEvent] = []
    lines: list[str] = []
    with pytest.raises(SourceError, match="no-such-checkpoint"):
        run_child(args, timeout_seconds=300, on_event=events.append, on_line=lines.append)
    assert [(e.stage, e.status) for e in events] == [
        (Stage.LOAD, Status.START),
        (Stage.LOAD, Status.FAILED),
    ]
    assert events[1].seconds is not None and events[1].seconds >= 0
    # Said once, by the error the parent raises: not in the child's lines too.
    assert not any("no-such-checkpoint" in line for line in lines), lines
    assert not (tmp_path / "out").exists()


# ------------------------------------------------- the settings: read once, by the parent


@pytest.mark.slow
def test_real_child_converts_with_the_settings_it_is_handed_not_the_file(tmp_path: Path) -> None:
    """Handed the settings, the child never reads --config-dir: a file broken since the
    parent read it changes nothing (the child stops at the missing checkpoint instead)."""
    args = _missing_checkpoint(tmp_path)
    (args.config_dir / "conversion.yaml").write_text("onnx: [unclosed\n")
    with pytest.raises(SourceError, match="no-such-checkpoint"):
        run_child(args, timeout_seconds=300, config=ConversionConfig())


@pytest.mark.slow
def test_a_config_edited_after_the_parent_read_it_does_not_change_what_runs(
    checkpoint, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`execute_conversion` names the directory by the fingerprint of the conversion.yaml it
    read; the file is edited just before the child starts. What ran, and what the manifest
    records, is what the parent read and fingerprinted."""
    root = root_with_store(tmp_path_factory, "edited-config")
    parent = lay_out_training_output(root, checkpoint("distilbert-token"))
    config_dir = write_config_dir(root / "config")
    read = load_conversion_config(config_dir)
    edited = CONVERSION_YAML.replace("model_{quantization}", "edited_{quantization}")
    real_popen = subprocess.Popen

    def edit_then_start(command, *args, **kwargs):
        if command[1:3] == ["-m", "onnxport.execution"]:
            (config_dir / "conversion.yaml").write_text(edited, encoding="utf-8")
        return real_popen(command, *args, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", edit_then_start)
    output = execute_conversion(
        root_dir=root,
        config_dir=config_dir,
        parent_training_output_dir=parent,
        parent_spec_fp=SPEC_FP,
        parent_exec_fp=EXEC_FP,
        experiment_config=None,
        conversion_experiment_name="edited-config",
        platform="local",
    )
    assert load_conversion_config(config_dir) != read, "the file was not edited"
    manifest = read_manifest(output)
    assert manifest.config == read.model_dump(mode="json")
    assert output.name == f"conv_{conversion_fingerprint(SPEC_FP, EXEC_FP, read)}"
    assert (output / "model_fp32.onnx").is_file()
    assert list(output.glob("edited_*")) == []
