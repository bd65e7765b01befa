"""Progress: the stages of a conversion and the events a stage reports as it starts and ends.

No torch and nothing heavy: the CLI renders these events, and the conversion child sends them
to its parent as JSON (`to_dict` / `from_dict`), so that no one parses log text.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any


class Stage(str, Enum):
    """The pipeline's stages, in order, and the tools run after it."""

    LOAD = "load"
    EXPORT = "export"
    PASSES = "passes"
    VALIDATE = "validate"
    QUANTIZE = "quantize"
    SMOKE_TEST = "smoke_test"
    PUBLISH = "publish"
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
    Stage.BENCHMARK: "benchmark",
}


class Status(str, Enum):
    START = "start"
    DONE = "done"
    FAILED = "failed"
    SKIPPED = "skipped"


@dataclass(frozen=True)
class StageEvent:
    stage: Stage
    status: Status
    seconds: float | None = None
    """How long the stage took, on `done` and `failed`: the one clock of the stage."""
    detail: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage.value,
            "status": self.status.value,
            "seconds": self.seconds,
            "detail": self.detail,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StageEvent:
        return cls(
            Stage(data["stage"]),
            Status(data["status"]),
            data.get("seconds"),
            data.get("detail"),
        )


ProgressCallback = Callable[[StageEvent], None]


def ignore_progress(_: StageEvent) -> None:
    return None
