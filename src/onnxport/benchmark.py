"""Benchmark a converted directory: PyTorch eager against each published ONNX variant.

Every runtime gets the same numpy inputs and the same thread count, and the runs are
interleaved: in each iteration every runtime runs once, in an order that rotates, so that
the machine's drift (other jobs, thermal limits, frequency changes) hits all of them
alike. Per runtime: load time, memory growth, file size; per runtime and shape: p50, p90
and p99 latency and throughput. `record_benchmark` writes the figures into the manifest and
re-renders the report. Torch is imported only when PyTorch is part of the run.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import psutil

from onnxport.errors import EXIT_BAD_INPUT, BenchmarkError, OnnxportError, SourceError
from onnxport.manifest import Manifest, read_manifest, verify_directory
from onnxport.samples import sample_texts
from onnxport.tasks import TASKS, Modality, Task

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZES = (1, 8)
DEFAULT_SEQ_LENGTHS = (32, 128)
DEFAULT_ITERATIONS = 20
DEFAULT_WARMUP = 3
PYTORCH = "pytorch"
_MB = 1024.0 * 1024.0
_ONNX_INTEGER_TYPES = {"tensor(int64)": np.int64, "tensor(int32)": np.int32}

NumpyInputs = dict[str, np.ndarray]
InputMaker = Callable[[int, int], NumpyInputs]
"""(batch, size) -> named inputs; `size` is the sequence length, or the image side."""


class BenchmarkInputError(BenchmarkError):
    """The directory or the settings cannot be benchmarked; the user can fix it."""

    exit_code = EXIT_BAD_INPUT


def default_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class BenchmarkSettings:
    """The grid and how long to measure each point of it.

    Args:
        batch_sizes: batch sizes of the grid.
        seq_lengths: sequence lengths of the grid (vision models use their own image size).
        threads: intra-op threads of both runtimes (inter-op: 1).
        iterations: timed runs per runtime and shape.
        warmup: untimed runs per runtime and shape before the timed ones.
        seed: seed of the generated inputs.
    """

    batch_sizes: tuple[int, ...] = DEFAULT_BATCH_SIZES
    seq_lengths: tuple[int, ...] = DEFAULT_SEQ_LENGTHS
    threads: int = field(default_factory=default_threads)
    iterations: int = DEFAULT_ITERATIONS
    warmup: int = DEFAULT_WARMUP
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("batch_sizes", "seq_lengths"):
            values = tuple(getattr(self, name))
            if not values:
                raise BenchmarkInputError(f"{name} is empty: the grid needs at least one value")
            if any(not isinstance(v, int) or v < 1 for v in values):
                raise BenchmarkInputError(f"{name} must be positive integers, not {list(values)}")
            object.__setattr__(self, name, tuple(dict.fromkeys(values)))
        for name in ("threads", "iterations"):
            if getattr(self, name) < 1:
                raise BenchmarkInputError(f"{name} must be at least 1, not {getattr(self, name)}")
        if self.warmup < 0:
            raise BenchmarkInputError(f"warmup must be 0 or more, not {self.warmup}")


@dataclass(frozen=True)
class RuntimeFigures:
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
    """Growth of this process's resident memory over loading and warm-up at the largest
    shape. Not an isolated peak: memory another runtime freed may be reused."""


@dataclass(frozen=True)
class Timing:
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


@dataclass(frozen=True)
class BenchmarkResult:
    settings: BenchmarkSettings
    runtimes: tuple[RuntimeFigures, ...]
    timings: tuple[Timing, ...]
    size_name: str
    """`sequence length`, or `image size` for vision models."""
    inputs: str
    """How the inputs were made: tokenized sample text, generated ids, random pixels."""
    machine: dict[str, Any]
    versions: dict[str, str]
    created_at: str
    seconds: float

    def timing(self, runtime: str, batch_size: int, size: int) -> Timing | None:
        return next(
            (
                t
                for t in self.timings
                if (t.runtime, t.batch_size, t.size) == (runtime, batch_size, size)
            ),
            None,
        )

    def speedup(self, timing: Timing) -> float | None:
        """PyTorch's median latency over this one's, on the same shape (2.0: twice as fast)."""
        reference = self.timing(PYTORCH, timing.batch_size, timing.size)
        if reference is None or timing.p50_ms <= 0:
            return None
        return reference.p50_ms / timing.p50_ms

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BenchmarkResult:
        settings = dict(data["settings"])
        for key in ("batch_sizes", "seq_lengths"):
            settings[key] = tuple(settings[key])
        return cls(
            settings=BenchmarkSettings(**settings),
            runtimes=tuple(RuntimeFigures(**r) for r in data["runtimes"]),
            timings=tuple(Timing(**t) for t in data["timings"]),
            size_name=data["size_name"],
            inputs=data["inputs"],
            machine=dict(data["machine"]),
            versions=dict(data["versions"]),
            created_at=data["created_at"],
            seconds=data["seconds"],
        )


# --------------------------------------------------------------------------- runtimes


@dataclass
class Runtime:
    """A loaded model that answers numpy inputs; `figures` says what loading it cost."""

    figures: RuntimeFigures
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


def _rss() -> int:
    return psutil.Process().memory_info().rss


def onnx_session_options(threads: int) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return options


def open_onnx(name: str, path: Path, *, threads: int) -> Runtime:
    """An ONNX Runtime CPU session on `path`, timed."""
    started = time.perf_counter()
    session = ort.InferenceSession(
        str(path), sess_options=onnx_session_options(threads), providers=["CPUExecutionProvider"]
    )
    seconds = time.perf_counter() - started
    wanted = [i.name for i in session.get_inputs()]
    data = [p for p in path.parent.glob(f"{path.name}.data") if p.is_file()]
    size = path.stat().st_size + sum(p.stat().st_size for p in data)

    def run(inputs: NumpyInputs) -> object:
        return session.run(None, {k: inputs[k] for k in wanted})

    figures = RuntimeFigures(name, "onnxruntime", path.name, size, round(seconds, 4))
    return Runtime(figures, run)


def open_pytorch(manifest: Manifest, *, threads: int) -> tuple[Runtime, Any]:
    """PyTorch eager on the source checkpoint the manifest records; also returns the Source."""
    import torch

    from onnxport.config import SourceConfig
    from onnxport.export import adapter_for
    from onnxport.sources import load_source

    torch.set_num_threads(threads)
    try:
        settings = SourceConfig.model_validate(manifest.config.get("source", {}))
    except ValueError:
        settings = SourceConfig()
    started = time.perf_counter()
    try:
        source = load_source(Path(manifest.source.path), settings)
    except SourceError as e:
        raise BenchmarkInputError(
            f"cannot load the source checkpoint {manifest.source.path} for PyTorch: {e.message}",
            hint="pass --no-pytorch to benchmark the ONNX models alone",
        ) from e
    seconds = time.perf_counter() - started
    adapter = adapter_for(source)
    names = source.input_names

    def run(inputs: NumpyInputs) -> object:
        with torch.inference_mode():
            return adapter(*(torch.from_numpy(inputs[n]) for n in names))

    size = sum(f.stat().st_size for f in source.weight_files if f.is_file())
    file = source.weight_files[0].name if len(source.weight_files) == 1 else None
    figures = RuntimeFigures(PYTORCH, "pytorch-eager", file, size, round(seconds, 4))
    return Runtime(figures, run), source


# ----------------------------------------------------------------------------- inputs


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def image_size(config: dict[str, Any]) -> int:
    size = config.get("image_size", 224)
    if isinstance(size, (list, tuple)):
        size = size[0]
    if isinstance(size, dict):
        size = size.get("height", 224)
    return int(size)


def source_inputs(source: Any) -> InputMaker:
    """The inputs validation uses: tokenized sample text, or generated ids or pixels."""

    def make(batch: int, size: int, seed: int = 0) -> NumpyInputs:
        return {k: v.numpy() for k, v in source.make_inputs(batch, size, seed).items()}

    return make


def directory_inputs(directory: Path, model: Path, *, seed: int = 0) -> tuple[InputMaker, str]:
    """Inputs made without torch, from the directory's tokenizer.json and config.json."""
    from tokenizers import Tokenizer

    config = _read_json(directory / "config.json")
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    declared = {i.name: _ONNX_INTEGER_TYPES.get(i.type, np.float32) for i in session.get_inputs()}
    del session
    if "pixel_values" in declared:
        channels = int(config.get("num_channels", 3))

        def pixels(batch: int, size: int) -> NumpyInputs:
            rng = np.random.default_rng(seed)
            shape = (batch, channels, size, size)
            return {"pixel_values": rng.standard_normal(shape).astype(np.float32)}

        return pixels, "random pixels"
    tokenizer_file = directory / "tokenizer.json"
    tokenizer = Tokenizer.from_file(str(tokenizer_file)) if tokenizer_file.is_file() else None
    vocab = int(config.get("vocab_size") or 100)
    pad_id = int(config.get("pad_token_id") or 0)

    def text(batch: int, size: int) -> NumpyInputs:
        if tokenizer is not None:
            # As the source's own factory: long texts fill every position, the last row is
            # shorter so that padding is exercised.
            texts = sample_texts(batch, min_lines=size // 12 + 1, offset=seed)
            if batch > 1:
                texts[-1] = texts[-1][: max(8, len(texts[-1]) // 3)]
            tokenizer.enable_truncation(size)
            tokenizer.enable_padding(length=size, pad_id=pad_id)
            encodings = tokenizer.encode_batch(texts)
            values = {
                "input_ids": np.array([e.ids for e in encodings]),
                "attention_mask": np.array([e.attention_mask for e in encodings]),
                "token_type_ids": np.array([e.type_ids for e in encodings]),
            }
        else:
            rng = np.random.default_rng(seed)
            mask = np.ones((batch, size), dtype=np.int64)
            if batch > 1 and size > 2:
                mask[-1, size // 2 :] = 0
            ids = np.where(mask == 1, rng.integers(min(5, vocab - 1), vocab, (batch, size)), pad_id)
            values = {"input_ids": ids, "attention_mask": mask, "token_type_ids": 0 * mask}
        return {name: values[name].astype(dtype) for name, dtype in declared.items()}

    return text, "tokenized sample text" if tokenizer is not None else "generated ids"


def _input_kind(source: Any) -> str:
    if source.modality is Modality.VISION:
        return "random pixels"
    tokenizer = getattr(source.make_inputs, "tokenizer", None)
    return "generated ids" if tokenizer is None else "tokenized sample text"


# -------------------------------------------------------------------------- measuring


def _percentiles(samples_ms: list[float]) -> tuple[float, float, float]:
    p50, p90, p99 = np.percentile(np.asarray(samples_ms), [50, 90, 99])
    return float(p50), float(p90), float(p99)


def warm_up(runtime: Runtime, inputs: NumpyInputs, runs: int, *, before_rss: int) -> Runtime:
    """Run `runs` times untimed; returns the runtime with its memory growth recorded."""
    for _ in range(runs):
        runtime.run(inputs)
    growth = (_rss() - before_rss) / _MB
    figures = RuntimeFigures(**{**asdict(runtime.figures), "rss_growth_mb": round(growth, 1)})
    return Runtime(figures, runtime.run)


def measure_interleaved(
    runtimes: Sequence[Runtime],
    shapes: Sequence[tuple[int, int]],
    make_inputs: InputMaker,
    *,
    iterations: int,
    warmup: int,
) -> list[Timing]:
    """Time every runtime on every shape, one run of each in turn per iteration.

    The order rotates each iteration so that no runtime always runs right after the same
    other one (whose threads may still be winding down).
    """
    timings = []
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
        for runtime in runtimes:
            p50, p90, p99 = _percentiles(samples[runtime.name])
            timings.append(
                Timing(
                    runtime=runtime.name,
                    batch_size=batch,
                    size=size,
                    iterations=iterations,
                    p50_ms=round(p50, 4),
                    p90_ms=round(p90, 4),
                    p99_ms=round(p99, 4),
                    mean_ms=round(float(np.mean(samples[runtime.name])), 4),
                    throughput=round(batch / (p50 / 1000.0), 3),
                )
            )
        logger.info(
            "batch %d, size %d: %s",
            batch,
            size,
            ", ".join(f"{t.runtime} {t.p50_ms:.2f} ms" for t in timings[-len(runtimes) :]),
        )
    return timings


# ------------------------------------------------------------------------- a directory


def _read_directory(output_dir: Path) -> Manifest:
    if not output_dir.is_dir():
        raise BenchmarkInputError(
            f"{output_dir} is not a directory", hint="pass the output directory of onnxport convert"
        )
    try:
        manifest = read_manifest(output_dir)
    except OnnxportError as e:
        raise BenchmarkInputError(e.message, hint=e.hint) from e
    problems = verify_directory(output_dir)
    if problems:
        raise BenchmarkInputError(
            f"{output_dir} is damaged: {'; '.join(problems[:3])}", hint="convert again"
        )
    if not manifest.published_outputs():
        raise BenchmarkInputError(f"{output_dir} has no published ONNX model")
    return manifest


def _max_length(directory: Path) -> int | None:
    from onnxport.predict import model_max_length

    return model_max_length(
        _read_json(directory / "config.json"), _read_json(directory / "tokenizer_config.json")
    )


def _sizes(
    manifest: Manifest, directory: Path, settings: BenchmarkSettings
) -> tuple[list[int], str]:
    """The sizes of the grid and their name: the model's own image size for vision."""
    if TASKS[Task(manifest.source.task)].modality is Modality.VISION:
        return [image_size(_read_json(directory / "config.json"))], "image size"
    limit = _max_length(directory)
    too_long = [s for s in settings.seq_lengths if limit is not None and s > limit]
    if too_long:
        raise BenchmarkInputError(
            f"sequence length {too_long[0]} is more than the {limit} tokens this model reads",
            hint=f"use sequence lengths up to {limit}",
        )
    return list(settings.seq_lengths), "sequence length"


def _versions(include_pytorch: bool) -> dict[str, str]:
    versions = {"onnxruntime": ort.__version__, "python": platform.python_version()}
    if include_pytorch:
        import torch

        versions["torch"] = torch.__version__
    return versions


def benchmark_directory(
    output_dir: Path, settings: BenchmarkSettings, *, include_pytorch: bool = True
) -> BenchmarkResult:
    """Measure PyTorch eager (optional) and every published ONNX variant of `output_dir`.

    Args:
        output_dir: a complete onnxport output directory.
        settings: the grid, threads, iterations and warm-up.
        include_pytorch: also load the source checkpoint the manifest records and run it.

    Raises `BenchmarkInputError` for a directory or settings that cannot be benchmarked.
    """
    output_dir = Path(output_dir)
    manifest = _read_directory(output_dir)
    sizes, size_name = _sizes(manifest, output_dir, settings)
    shapes = [(b, s) for b in settings.batch_sizes for s in sizes]
    largest = (max(settings.batch_sizes), max(sizes))
    started = time.perf_counter()
    runtimes: list[Runtime] = []
    torch_threads = None
    try:
        if include_pytorch:
            import torch
            import transformers  # noqa: F401  (imported first: its import is not the model's memory)

            torch_threads = torch.get_num_threads()
            before = _rss()
            pytorch, source = open_pytorch(manifest, threads=settings.threads)
            make = source_inputs(source)

            def make_inputs(batch: int, size: int) -> NumpyInputs:
                return make(batch, size, settings.seed)

            kind = _input_kind(source)
            runtimes.append(
                warm_up(pytorch, make_inputs(*largest), settings.warmup, before_rss=before)
            )
        else:
            first = output_dir / manifest.published_outputs()[0].file
            make_inputs, kind = directory_inputs(output_dir, first, seed=settings.seed)
        warm_inputs = make_inputs(*largest)
        for out in manifest.published_outputs():
            before = _rss()
            runtime = open_onnx(out.variant, output_dir / out.file, threads=settings.threads)
            runtimes.append(warm_up(runtime, warm_inputs, settings.warmup, before_rss=before))
        logger.info(
            "benchmarking %s on %d shapes, %d threads, %d iterations",
            ", ".join(r.name for r in runtimes),
            len(shapes),
            settings.threads,
            settings.iterations,
        )
        timings = measure_interleaved(
            runtimes,
            shapes,
            make_inputs,
            iterations=settings.iterations,
            warmup=settings.warmup,
        )
    finally:
        if torch_threads is not None:
            import torch

            torch.set_num_threads(torch_threads)
    return BenchmarkResult(
        settings=settings,
        runtimes=tuple(r.figures for r in runtimes),
        timings=tuple(timings),
        size_name=size_name,
        inputs=kind,
        machine={
            "cpu_model": cpu_model(),
            "logical_cpus": os.cpu_count(),
            "threads": settings.threads,
            "threading": f"torch.set_num_threads({settings.threads}); onnxruntime "
            f"intra_op_num_threads={settings.threads}, inter_op_num_threads=1",
        },
        versions=_versions(include_pytorch),
        created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        seconds=round(time.perf_counter() - started, 2),
    )


def record_benchmark(output_dir: Path, result: BenchmarkResult) -> Manifest:
    """Write `result` into the manifest's `benchmark` section and re-render the reports.

    The report files are rewritten through temporary files and `os.replace`, the manifest
    (with their new checksums) last, so that a reader never sees a half-written file.
    """
    # report.py renders BenchmarkResult: importing it here keeps the import one-way at load.
    from onnxport.report import write_reports

    output_dir = Path(output_dir)
    manifest = _read_directory(output_dir)
    manifest.benchmark = result.to_dict()
    return write_reports(output_dir, manifest)
