"""Interrupts: Ctrl-C (SIGINT) or SIGTERM at any moment of a conversion stops it, exits 130,
publishes nothing, leaves no work directory, no RUNNING or FINISHED MLflow run and no process.

Python drops a `KeyboardInterrupt` raised in a finalizer or a weakref callback (torch's export
runs many); `onnxport.interrupts` records the signal and raises it again at the next safe
point. The end-to-end test sends SIGINT to `python -m onnxport.cli` at moments cued by the
conversion's own progress events (a stage's start, plus a delay), so that each lands in the
stage it names whatever the machine's speed: in `convert`, in `convert` with the export in a
child process, and in the platform's `run` (conversion child, MLflow).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from onnxport import interrupts
from onnxport.artifact.publish import OLD_MARKER, PARTIAL_MARKER, Staging
from onnxport.errors import SourceError
from onnxport.interrupts import Interrupted
from onnxport.pipeline import convert
from onnxport.progress import Stage, StageClock, StageEvent, Status
from onnxport.request import ConversionRequest
from onnxport.request.config import ConversionConfig
from support import make_project

dropped = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
"""For the tests whose interrupt Python drops on purpose, printing "Exception ignored"."""

TRIALS = int(os.environ.get("ONNXPORT_INTERRUPT_TRIALS", "5"))
"""How many of the 20 moments the suite tries (spread over them); `make test-interrupts`: 20.
Each is cued by the conversion's own events, not by time: they need no worker of their own."""


class _SignalsWhenCollected:
    """Sends SIGINT to this process from its finalizer: the moment where Python prints
    "Exception ignored" and drops the KeyboardInterrupt, as in torch's weakref callbacks."""

    def __del__(self) -> None:
        signal.raise_signal(signal.SIGINT)


def _leftovers(final: Path) -> list[str]:
    return sorted(p.name for p in final.parent.iterdir()) if final.parent.exists() else []


# ------------------------------------------------------------------ the mechanism (fast)


@dropped
def test_an_interrupt_dropped_in_a_finalizer_stops_at_the_end_of_the_stage() -> None:
    events: list[StageEvent] = []
    clock = StageClock(events.append)
    with pytest.raises(Interrupted) as stopped, interrupts.handling():
        with clock.stage(Stage.LOAD, SourceError):
            _SignalsWhenCollected()  # collected at once: its KeyboardInterrupt is dropped
            events.append(StageEvent(Stage.LOAD, Status.START, detail="went on"))
        pytest.fail("the next stage began")  # pragma: no cover
    assert stopped.value.exit_code == 130
    assert [e.detail for e in events] == [None, "went on"]  # the stage's own end was not reached


class _FailsWhenCollected:
    def __del__(self) -> None:
        raise ValueError("a finalizer's own error")


def test_a_dropped_interrupt_prints_no_traceback_and_other_dropped_errors_still_do(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reported: list[BaseException | None] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda info: reported.append(info.exc_value))
    with pytest.raises(Interrupted), interrupts.handling():
        _SignalsWhenCollected()  # Python drops its interrupt: nothing is printed
        _FailsWhenCollected()  # not ours: reported as Python would
        interrupts.check()
    assert [type(e) for e in reported] == [ValueError]
    _FailsWhenCollected()
    assert [type(e) for e in reported] == [ValueError, ValueError]  # the hook is the host's again


def test_no_handler_is_left_behind_and_a_host_handler_is_kept() -> None:
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with interrupts.handling():
        assert signal.getsignal(signal.SIGINT) is not before[0]
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before

    def host(*_: object) -> None:
        return None

    previous = signal.signal(signal.SIGINT, host)
    try:
        with interrupts.handling():
            assert signal.getsignal(signal.SIGINT) is host  # the application's own stays
    finally:
        signal.signal(signal.SIGINT, previous)


def test_an_interrupt_before_the_rename_publishes_nothing(tmp_path: Path) -> None:
    final = tmp_path / "out"
    with pytest.raises(Interrupted) as stopped, interrupts.handling(), Staging(final) as staging:
        (staging.path / "model.onnx").write_bytes(b"0")
        with interrupts.shielded():  # recorded, not raised: only the commit can see it
            signal.raise_signal(signal.SIGINT)
        staging.publish()
    assert stopped.value.published == ()
    assert _leftovers(final) == []


def test_an_interrupt_after_the_rename_is_raised_naming_what_was_published(
    tmp_path: Path,
) -> None:
    final = tmp_path / "out"
    with pytest.raises(Interrupted) as stopped, interrupts.handling():
        with Staging(final) as staging:
            (staging.path / "model.onnx").write_bytes(b"0")
            staging.publish()
        signal.raise_signal(signal.SIGTERM)  # too late to stop anything: raised as it ends
    assert stopped.value.published == (final.absolute(),)
    assert stopped.value.exit_code == 128 + signal.SIGTERM
    assert _leftovers(final) == ["out"]


@pytest.mark.slow
@dropped
@pytest.mark.parametrize("stage", [Stage.LOAD, Stage.EXPORT])
def test_a_conversion_whose_interrupt_python_dropped_publishes_nothing(
    checkpoint, tmp_path: Path, stage: Stage
) -> None:
    """The flaky Ctrl-C of issue 24, made deterministic: the interrupt lands in a finalizer."""
    final = tmp_path / "outputs" / "out"

    def progress(event: StageEvent) -> None:
        if event.stage is stage and event.status is Status.START:
            _SignalsWhenCollected()

    request = ConversionRequest(
        source_path=checkpoint("distilbert-token"),
        output_dir=final,
        config=ConversionConfig().with_overrides(execution={"export_cache": False}),
    )
    with pytest.raises(Interrupted):
        convert(request, progress=progress)
    assert _leftovers(final) == []


# ------------------------------------------- SIGINT at 20 moments, every stage (slow)

CUED_CLI = """
import os, signal, sys, threading
from onnxport import cli
from onnxport.commands import render

stage, delay = sys.argv[1], float(sys.argv[2])
del sys.argv[1:3]
shown = render.ProgressPrinter.__call__


def cued(self, event):
    shown(self, event)
    if event.stage.value == stage and event.status.value == "start":
        print(f"SIGINT cued at {stage} +{delay}", file=sys.stderr, flush=True)
        timer = threading.Timer(delay, os.kill, (os.getpid(), signal.SIGINT))
        timer.daemon = True
        timer.start()


render.ProgressPrinter.__call__ = cued
cli.run()
"""
"""`python -m onnxport.cli ARGS...` that sends itself SIGINT `delay` s after `stage` starts."""

ISOLATED_YAML = "execution: {isolate_export: always, export_cache: false}\n"


@dataclass(frozen=True)
class Moment:
    way: str  # convert, isolated (the export in a child of its own), run (the platform's)
    stage: str
    delay: float

    def __str__(self) -> str:
        return f"{self.way}:{self.stage}+{self.delay}"


MOMENTS = [
    *(Moment("convert", s, d) for s, d in [
        ("load", 0.0), ("load", 0.5), ("export", 0.0), ("export", 1.0), ("export", 2.0),
        ("validate", 0.0), ("smoke_test", 0.0), ("publish", 0.0),
    ]),
    *(Moment("isolated", s, d) for s, d in [
        ("load", 0.0), ("load", 1.0), ("export", 0.0), ("export", 1.5), ("validate", 0.0),
    ]),
    *(Moment("run", s, d) for s, d in [
        ("load", 0.0), ("load", 1.0), ("export", 0.0), ("validate", 0.0), ("smoke_test", 0.0),
        ("publish", 0.0), ("track", 0.0),
    ]),
]  # fmt: skip
assert len(MOMENTS) == 20


def _chosen(count: int) -> list[Moment]:
    """`count` of the moments, spread over the ways and stages."""
    step = len(MOMENTS) / count
    return [MOMENTS[int(i * step)] for i in range(count)]


def _processes_mentioning(text: str) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter():
        try:
            if any(text in part for part in process.cmdline()):
                found.append(process)
        except psutil.Error:
            continue
    return found


@pytest.mark.slow
@pytest.mark.parametrize("moment", _chosen(TRIALS), ids=str)
def test_sigint_at_any_moment_exits_130_publishes_nothing_and_leaves_nothing_running(
    checkpoint, tmp_path: Path, moment: Moment
) -> None:
    ck = checkpoint("distilbert-token")
    env = {**os.environ, "ONNXPORT_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    project = None
    if moment.way == "run":
        project = make_project(tmp_path, "interrupted", ck)
        final = project.expected_output_dir()
        args = [
            "--config-dir", project.config_dir, "--parent-training-dir", project.parent,
            "--parent-spec-fp", project.spec_fp, "--parent-exec-fp", project.exec_fp,
            "--root-dir", project.root, "--experiment-name", project.experiment,
        ]  # fmt: skip
    else:
        final = tmp_path / "outputs" / "out"
        args = ["convert", ck, "-o", final, "--no-cache"]
        if moment.way == "isolated":
            config = tmp_path / "conversion.yaml"
            config.write_text(ISOLATED_YAML, encoding="utf-8")
            args += ["--config", config]
    done = subprocess.run(
        [sys.executable, "-c", CUED_CLI, moment.stage, str(moment.delay), *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert f"SIGINT cued at {moment.stage}" in done.stderr, done.stderr
    assert done.returncode == 130, done.stderr
    assert "interrupted; nothing was published" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr + done.stdout, done.stderr
    assert not final.exists(), f"{final} was published"
    work = [p for p in _leftovers(final) if PARTIAL_MARKER in p or OLD_MARKER in p]
    assert work == [], "a work directory is left"
    assert _processes_mentioning(str(tmp_path)) == [], "a process of the conversion lives on"
    if project is not None:
        statuses = [run.info.status for run in project.runs()]
        assert statuses == ["KILLED"], statuses
