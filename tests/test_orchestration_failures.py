"""`execute_conversion` when its conversion child is killed, times out or fails: a typed
error, the MLflow run FAILED, nothing published, and the next call converts (slow: each test
starts a real child)."""

from __future__ import annotations

import os
import shutil
import signal
import threading
from pathlib import Path
from typing import Any

import pytest

from onnxport.artifact.manifest import verify_directory
from onnxport.errors import ExecutionError, SourceError
from onnxport.progress import Stage, StageEvent, Status
from support import (
    CONVERSION_TIMEOUT,
    CONVERSION_YAML,
    conversion_children,
    make_project,
    wait_for,
)


@pytest.mark.slow
def test_sigkill_mid_export_publishes_nothing_and_a_second_call_converts(
    shared_root: Path, tiny_checkpoint: Path
) -> None:
    # The dynamo exporter takes several seconds on the tiny model: a wide window to kill in.
    dynamo = CONVERSION_YAML.replace("exporter: torchscript", "exporter: dynamo")
    assert dynamo != CONVERSION_YAML
    project = make_project(shared_root, "sigkill", tiny_checkpoint, conversion=dynamo)
    expected = project.expected_output_dir()
    export_started = threading.Event()
    outcome: dict[str, Any] = {}

    def on_progress(event: StageEvent) -> None:
        if (event.stage, event.status) == (Stage.EXPORT, Status.START):
            export_started.set()

    def convert() -> None:
        try:
            outcome["output"] = project.call(on_progress=on_progress)
        except BaseException as e:
            outcome["error"] = e

    caller = threading.Thread(target=convert, daemon=True)
    caller.start()
    (child,) = wait_for(conversion_children, "the conversion child process")
    # The parent prepared the store and created the run before it started the child.
    (run,) = project.runs()
    assert run.info.status == "RUNNING"
    partial = wait_for(lambda: project.partials(), "the .partial- staging directory")[0]
    assert f".partial-{child.pid}-" in partial.name
    assert export_started.wait(CONVERSION_TIMEOUT), "the child never started exporting"
    os.kill(child.pid, signal.SIGKILL)
    caller.join(60)
    assert not caller.is_alive()

    error = outcome.get("error")
    assert isinstance(error, ExecutionError), outcome
    assert "SIGKILL" in str(error)
    assert not expected.exists()
    (run,) = project.runs()
    assert run.info.status == "FAILED"

    output = project.call()
    assert output == expected
    assert verify_directory(output) == []
    assert project.partials() == []  # the killed child's leftovers are cleaned up
    assert [r.info.status for r in project.runs()] == ["FAILED", "FINISHED"]


@pytest.mark.slow
def test_timeout_stops_the_conversion_marks_the_run_failed_and_publishes_nothing(
    shared_root: Path, tiny_checkpoint: Path
) -> None:
    project = make_project(
        shared_root,
        "timeout",
        tiny_checkpoint,
        conversion=CONVERSION_YAML + "execution: {timeout_seconds: 2}\n",
    )
    with pytest.raises(ExecutionError) as raised:
        project.call()
    message = str(raised.value)
    assert "2 s" in message
    assert "timeout" in message.lower()
    assert not project.expected_output_dir().exists()
    (run,) = project.runs()
    assert run.info.status == "FAILED"
    assert conversion_children() == []


@pytest.mark.slow
def test_a_failing_child_raises_its_typed_error_and_the_run_fails(
    shared_root: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    broken = shutil.copytree(tiny_checkpoint, tmp_path / "broken-checkpoint")
    (broken / "config.json").write_text("{this is not json", encoding="utf-8")
    project = make_project(shared_root, "corrupt", broken)
    events: list[StageEvent] = []
    with pytest.raises(SourceError) as raised:
        project.call(on_progress=events.append)
    assert "config.json" in str(raised.value)
    assert [(e.stage, e.status) for e in events] == [
        (Stage.LOAD, Status.START),
        (Stage.LOAD, Status.FAILED),
    ]
    assert not project.expected_output_dir().exists()
    assert project.partials() == []
    (run,) = project.runs()
    assert run.info.status == "FAILED"
