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
    new_tokens: int | None = None
    """A text-generation benchmark: the tokens generated per prompt (None: not one)."""
    rounds: int | None = None
    """A text-generation benchmark: how many times each runtime measured, interleaved."""


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


class DecodeRecord(Record):
    """One runtime generating: greedy, batch 1, from the first new token to the last."""

    runtime: str
    tokens_per_s: float
    """The median over the rounds (each: every prompt's decode steps over their time)."""
    tokens_per_s_rounds: list[float]
    peak_rss_mb: float
    """The peak RSS of the process that measured this runtime alone (load included)."""
    bytes_per_token: int | None
    """What a decode step reads: the weights it multiplies (an embedding table, of which it
    reads a row, left out) and the KV cache at the mean past length."""
    bandwidth_share: float | None
    """tokens/s x bytes_per_token over the machine's measured memory bandwidth."""
    same_tokens: str | None = None
    """Prompts whose greedy tokens equal PyTorch's, as `k/n`; None for PyTorch itself."""


class GenerationBenchmarkRecord(Record):
    """A text-generation conversion's decode figures (its prefill figures are the timings)."""

    prompt_tokens: list[int]
    """The length of each chat prompt generated from."""
    bandwidth_gb_s: float
    """This machine's memory bandwidth: the best of numpy copies and reads, same threads."""
    decode: list[DecodeRecord]

    def runtime(self, name: str) -> DecodeRecord | None:
        return next((d for d in self.decode if d.runtime == name), None)


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
    generation: GenerationBenchmarkRecord | None = None
    """A text-generation conversion's decode figures; `timings` then hold its prefill (batch
    1, an empty cache, one forward over a prompt of each length)."""

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
