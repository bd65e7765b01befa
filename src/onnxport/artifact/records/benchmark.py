"""`onnxport benchmark`'s figures: the machine, the runtimes and their timings."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from onnxport.artifact.records import Record

PYTORCH = "pytorch"
"""The benchmark's name for PyTorch eager, the reference of every speed-up."""


class MachineRecord(Record):
    """The machine a measurement was taken on: a measured choice is only true for it."""

    cpu_model: str
    logical_cpus: int
    isa: list[str] = Field(default_factory=list)
    """The x86 instruction sets that decide the kernels used (avx2, avx512_vnni, amx...)."""
    machine: str = ""


class BenchmarkSettingsRecord(Record):
    batch_sizes: list[int]
    seq_lengths: list[int]
    threads: int
    iterations: int
    warmup: int
    seed: int = 0
    onnx_spinning: bool = False


class RuntimeRecord(Record):
    """One runtime: what it costs to load and hold, whatever the input shape."""

    name: str
    """`pytorch`, or the ONNX variant (`fp32`, `int8`, ...)."""
    engine: str
    """`pytorch-eager` or `onnxruntime`."""
    file: str | None
    size_bytes: int
    """The ONNX file with its external data; for PyTorch, the checkpoint's weight files."""
    load_seconds: float
    """Session creation; for PyTorch, loading the checkpoint (model and tokenizer)."""
    rss_growth_mb: float | None = None
    """Growth of the process's resident memory over loading and warm-up at the largest
    shape. Not an isolated peak: memory that another runtime freed may be reused."""


class TimingRecord(Record):
    """One runtime on one input shape."""

    runtime: str
    batch_size: int
    size: int
    iterations: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    throughput: float
    """Samples per second at the median latency: batch_size / p50."""


class BenchmarkRecord(Record):
    """`onnxport benchmark`'s figures: every runtime on every shape, measured interleaved."""

    settings: BenchmarkSettingsRecord
    runtimes: list[RuntimeRecord]
    timings: list[TimingRecord]
    size_name: str
    """`sequence length`, or `image size` for vision models."""
    inputs: str
    """How the inputs were made: tokenized sample text, generated ids, random pixels."""
    machine: dict[str, Any]
    versions: dict[str, str]
    created_at: str
    seconds: float
    unstable: list[str] = Field(default_factory=list)
    """Why the figures are the machine's noise rather than the models' (a wide spread, a
    larger input faster than a smaller one); empty when they are consistent. No speed-up is
    claimed from unstable figures."""

    def timing(self, runtime: str, batch_size: int, size: int) -> TimingRecord | None:
        key = (runtime, batch_size, size)
        return next((t for t in self.timings if (t.runtime, t.batch_size, t.size) == key), None)

    def speedup(self, timing: TimingRecord) -> float | None:
        """PyTorch's median latency over this one's, on the same shape (2.0: twice as fast);
        None without a reference, or from unstable figures."""
        reference = self.timing(PYTORCH, timing.batch_size, timing.size)
        if reference is None or timing.p50_ms <= 0 or self.unstable:
            return None
        return reference.p50_ms / timing.p50_ms
