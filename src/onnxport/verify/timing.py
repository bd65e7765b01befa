"""Time models against each other on this machine: interleaved (each iteration runs every
model once, in rotating order), on the same inputs, with the same threads, so that the
machine's drift hits all of them alike. The benchmark and the variant search both use it.

Imports no torch: the ONNX side is `open_onnx`; a PyTorch runtime is the benchmark's own.
"""

from __future__ import annotations

import logging
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from onnxport.artifact.records.benchmark import MachineRecord, RuntimeRecord, TimingRecord
from onnxport.verify.runtime import configured_threads, create_session, session_options

logger = logging.getLogger(__name__)

NumpyInputs = dict[str, np.ndarray]
InputMaker = Callable[[int, int], NumpyInputs]
"""(batch, size) -> named inputs; `size` is the sequence length, or the image side."""
# The instruction sets that decide which kernels ONNX Runtime and PyTorch use on x86.
ISA_FLAGS = ("avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "amx_bf16")


@dataclass(frozen=True)
class Runtime:
    """A loaded model that answers numpy inputs; `figures` says what loading it cost."""

    figures: RuntimeRecord
    run: Callable[[NumpyInputs], object]

    @property
    def name(self) -> str:
        return self.figures.name


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def default_threads() -> int:
    """The threads measurements use: `ONNXPORT_THREADS`, else the CPUs this process may run
    on (a container's or taskset's share, not the host's)."""
    configured = configured_threads()
    if configured:
        return configured
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def machine_record() -> MachineRecord:
    """This machine's CPU model, core count and instruction sets: what a measured choice
    between graphs depends on."""
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    return MachineRecord(
        cpu_model=cpu_model(),
        logical_cpus=os.cpu_count() or 1,
        isa=[f for f in ISA_FLAGS if f in flags],
        machine=platform.machine(),
    )


def open_onnx(name: str, path: Path, *, threads: int, spinning: bool = False) -> Runtime:
    """An ONNX Runtime CPU session on `path`; its creation is timed."""
    path = Path(path)
    started = time.perf_counter()
    # Spinning is off by default: ONNX Runtime's idle workers otherwise keep spinning on the
    # cores after a run returns, and the runtime that runs next in the same process finds
    # them busy (on 2 cores this slowed PyTorch eager several times over).
    session = create_session(path, session_options(threads=threads, spinning=spinning))
    seconds = time.perf_counter() - started
    wanted = [i.name for i in session.get_inputs()]
    data = path.with_name(path.name + ".data")
    size = path.stat().st_size + (data.stat().st_size if data.is_file() else 0)

    def run(inputs: NumpyInputs) -> object:
        return session.run(None, {k: inputs[k] for k in wanted})

    record = RuntimeRecord(
        name=name,
        engine="onnxruntime",
        file=path.name,
        size_bytes=size,
        load_seconds=round(seconds, 4),
    )
    return Runtime(record, run)


def _timing(name: str, batch: int, size: int, samples_ms: list[float]) -> TimingRecord:
    p50, p90, p99 = (float(p) for p in np.percentile(np.asarray(samples_ms), [50, 90, 99]))
    return TimingRecord(
        runtime=name,
        batch_size=batch,
        size=size,
        iterations=len(samples_ms),
        p50_ms=round(p50, 4),
        p90_ms=round(p90, 4),
        p99_ms=round(p99, 4),
        mean_ms=round(float(np.mean(samples_ms)), 4),
        throughput=round(batch / (p50 / 1000.0), 3),
    )


def measure_interleaved(
    runtimes: Sequence[Runtime],
    shapes: Sequence[tuple[int, int]],
    make_inputs: InputMaker,
    *,
    iterations: int,
    warmup: int,
    on_shape: Callable[[list[TimingRecord]], None] | None = None,
) -> list[TimingRecord]:
    """Time every runtime on every (batch, size) shape on the same inputs.

    In each iteration every runtime runs once; the order rotates, so that no runtime
    always runs right after the same other one and drift hits them all alike.
    `on_shape` receives the timings of each shape as soon as it is done.
    """
    timings: list[TimingRecord] = []
    for batch, size in shapes:
        inputs = make_inputs(batch, size)
        for _ in range(warmup):
            for runtime in runtimes:
                runtime.run(inputs)
        samples: dict[str, list[float]] = {r.name: [] for r in runtimes}
        for i in range(iterations):
            for k in range(len(runtimes)):
                runtime = runtimes[(i + k) % len(runtimes)]
                started = time.perf_counter()
                runtime.run(inputs)
                samples[runtime.name].append((time.perf_counter() - started) * 1000.0)
        shape_timings = [_timing(r.name, batch, size, samples[r.name]) for r in runtimes]
        logger.info(
            "batch %d, size %d: %s",
            batch,
            size,
            ", ".join(f"{t.runtime} {t.p50_ms:.2f} ms" for t in shape_timings),
        )
        timings += shape_timings
        if on_shape is not None:
            on_shape(shape_timings)
    return timings
