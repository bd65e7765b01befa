"""Progress: the stages of a conversion and the events a stage reports as it starts and ends.

No torch and nothing heavy: the CLI renders these events, and a child process sends them to
its parent as they happen (`onnxport.isolation`), so that no one parses log text.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum

from onnxport import interrupts
from onnxport.errors import OnnxportError, one_line


class Stage(str, Enum):
    """The pipeline's stages, in order, and the tools run after it."""

    LOAD = "load"
    EXPORT = "export"
    PASSES = "passes"
    VALIDATE = "validate"
    QUANTIZE = "quantize"
    SMOKE_TEST = "smoke_test"
    PUBLISH = "publish"
    TRACK = "track"
    BENCHMARK = "benchmark"

    @property
    def label(self) -> str:
        """What a person reads on the progress line."""
        return _LABELS[self]


_LABELS = {
    Stage.LOAD: "load source",
    Stage.EXPORT: "export to ONNX",
    Stage.PASSES: "optimize",
    Stage.VALIDATE: "validate against PyTorch",
    Stage.QUANTIZE: "quantize and validate the variant",
    Stage.SMOKE_TEST: "smoke test",
    Stage.PUBLISH: "publish",
    Stage.TRACK: "log to MLflow",
    Stage.BENCHMARK: "benchmark",
}


class Status(str, Enum):
    START = "start"
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True)
class StageEvent:
    stage: Stage
    status: Status
    seconds: float | None = None
    """How long the stage took, on `done` and `failed`: the one clock of the stage."""
    detail: str | None = None
    """What the stage works on, said as it starts (`4 shapes, 2 threads, 20 iterations`)."""


ProgressCallback = Callable[[StageEvent], None]


def ignore_progress(_: StageEvent) -> None:
    return None


class StageTimer:
    """The running clock of one stage."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.recorded: float | None = None

    def seconds(self) -> float:
        """The stage's figure: the one `record` took, else the time so far."""
        if self.recorded is not None:
            return self.recorded
        return round(time.perf_counter() - self.started, 3)

    def record(self) -> float:
        """Take the stage's figure now, for a stage that writes it into its own result (the
        manifest, made while publishing); its `done` event then reports the same figure."""
        if self.recorded is None:
            self.recorded = self.seconds()
        return self.recorded


class StageClock:
    """Times each stage once and reports it; an unexpected exception becomes the stage's
    error type. The one clock of a stage: its events and the manifest show the same figure."""

    def __init__(self, progress: ProgressCallback) -> None:
        self.progress = progress
        self.timings: dict[str, float] = {}

    @contextmanager
    def stage(
        self, stage: Stage, error_type: type[OnnxportError], detail: str | None = None
    ) -> Iterator[StageTimer]:
        """Each stage's start and end are safe points to stop at: an interrupt that Python
        dropped inside the stage (in a finalizer) stops the conversion at its end. `detail`:
        what the stage works on, said with its start."""
        interrupts.check()
        self.progress(StageEvent(stage, Status.START, detail=detail))
        timer = StageTimer()
        try:
            yield timer
            interrupts.check()
        except Exception as e:
            elapsed = round(time.perf_counter() - timer.started, 3)
            self.relay(StageEvent(stage, Status.FAILED, elapsed))
            if isinstance(e, OnnxportError):
                raise
            message = one_line(e)
            raise error_type(f"{stage.value} failed: {type(e).__name__}: {message}") from e
        self.relay(StageEvent(stage, Status.DONE, timer.seconds()))

    def relay(self, event: StageEvent) -> None:
        """Report an event, and record the seconds of an ended stage (also for stages timed
        by another process)."""
        if event.seconds is not None:
            self.timings[event.stage.value] = event.seconds
        self.progress(event)
