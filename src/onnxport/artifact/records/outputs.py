"""The models a conversion made, and how a search chose each among candidates
(`onnxport.passes.search`)."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from onnxport.artifact.records import Record
from onnxport.artifact.records.divergence import DivergenceRecord
from onnxport.artifact.records.export import PassRecord
from onnxport.artifact.records.validation import NextTokenRecord, SmokeTestRecord, ValidationRecord
from onnxport.names import Variant

# ---------------------------------------------------------------------------------- search


class CandidateRecord(Record):
    """One setting the search tried (`passes.search`): what it was, what the gate said, and
    how fast it ran here."""

    name: str
    settings: dict[str, Any] = Field(default_factory=dict)
    excluded_nodes: list[str] = Field(default_factory=list)
    """Nodes left in float (quantization)."""
    passed: bool
    agreement: float | None = None
    """The task-level agreement with PyTorch the gate judged."""
    task_metric: float | None = None
    next_token: NextTokenRecord | None = None
    """A language model's figures on real text, which judged it (`verify.next_token`)."""
    failures: list[str] = Field(default_factory=list)
    latency_ms: dict[str, float] = Field(default_factory=dict)
    """Median latency per input shape (`1x128`, `1x3x224x224`), batch 1, measured interleaved."""
    chosen: bool = False
    seconds: float = 0.0


class SearchRecord(Record):
    """How a published model was chosen among candidates measured on this machine."""

    target: str
    """`optimize` (the fp32 graph), `int8` (its settings) or `weight-only` (a language
    model's `int8-weights` and `int4`)."""
    candidates: list[CandidateRecord]
    chosen: str | None
    threads: int
    """The intra-op threads the latencies were measured with."""
    seconds: float = 0.0
    note: str | None = None
    """Why the search stopped early (its time budget), if it did."""


# ---------------------------------------------------------------------------------- outputs


class OutputRecord(Record):
    """One model the conversion made: the gate's verdict on it, and once published, its file
    facts and smoke test."""

    file: str
    variant: Variant
    published: bool = True
    sha256: str | None = None
    size_bytes: int | None = None
    data_file: str | None = None
    data_sha256: str | None = None
    data_size_bytes: int | None = None
    passes: list[PassRecord] = Field(default_factory=list)
    validation: ValidationRecord | None = None
    divergence: DivergenceRecord | None = Field(None, alias="localization")
    """Where a refused model diverges from its reference."""
    smoke_test: SmokeTestRecord | None = None
    search: SearchRecord | None = None
    """The candidates measured and judged when the model was chosen by a search."""

    @property
    def total_size_bytes(self) -> int | None:
        """The model file and its external data file together: what the variant weighs."""
        if self.size_bytes is None:
            return None
        return self.size_bytes + (self.data_size_bytes or 0)
