"""Benchmark a converted directory: PyTorch eager against each published ONNX variant.

Every runtime gets the same numpy inputs and the same thread count, and the runs are
interleaved (see `benchmark_runtimes.measure_interleaved`), so that the machine's drift
hits all of them alike. Per runtime: load time, memory growth, file size; per runtime and
shape: p50, p90 and p99 latency and throughput; figures that are the machine's noise are
recorded as unstable, with the reason, and claim no speed-up (`stability`).
`record_benchmark` writes the figures into the manifest's `benchmark` section and re-renders
the reports. Torch is imported only when
PyTorch is part of the run.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path

import onnxruntime as ort

from onnxport.artifact.manifest import Manifest
from onnxport.artifact.reader import PublishedDirectory
from onnxport.artifact.records.benchmark import (
    BenchmarkRecord,
    BenchmarkSettingsRecord,
    TimingRecord,
)
from onnxport.artifact.records.source import SourceKind
from onnxport.artifact.report import write_reports
from onnxport.benchmark.runtimes import (
    directory_inputs,
    image_size,
    open_pytorch,
    read_json,
    rss_bytes,
    source_inputs,
    warm_up,
)
from onnxport.benchmark.stability import unstable_reasons
from onnxport.errors import BenchmarkError, BenchmarkInputError, SourceError
from onnxport.progress import ProgressCallback, Stage, StageClock, ignore_progress
from onnxport.tasks import TASKS, Modality, Task
from onnxport.verify.timing import (
    InputMaker,
    Runtime,
    cpu_model,
    default_threads,
    measure_interleaved,
    open_onnx,
)

__all__ = ["BenchmarkSettings", "benchmark_directory", "record_benchmark"]

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZES = (1, 8)
DEFAULT_SEQ_LENGTHS = (32, 128)
DEFAULT_ITERATIONS = 20
DEFAULT_WARMUP = 3
DEFAULT_NEW_TOKENS = 64
DEFAULT_ROUNDS = 3
PREFILL_REPEATS = 3
"""A text-generation benchmark's forwards per prompt length, in each round."""


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
        onnx_spinning: let ONNX Runtime's idle threads spin (see `onnx_session_options`).
        new_tokens: a text-generation conversion: the tokens generated after each prompt.
        rounds: a text-generation conversion: how many times each runtime is measured, in
            interleaved rounds (its prompt lengths are `seq_lengths`, its batch 1).
    """

    batch_sizes: tuple[int, ...] = DEFAULT_BATCH_SIZES
    seq_lengths: tuple[int, ...] = DEFAULT_SEQ_LENGTHS
    threads: int = field(default_factory=default_threads)
    iterations: int = DEFAULT_ITERATIONS
    warmup: int = DEFAULT_WARMUP
    seed: int = 0
    onnx_spinning: bool = False
    new_tokens: int = DEFAULT_NEW_TOKENS
    rounds: int = DEFAULT_ROUNDS

    def __post_init__(self) -> None:
        for name in ("batch_sizes", "seq_lengths"):
            values = tuple(getattr(self, name))
            if not values:
                raise BenchmarkInputError(f"{name} is empty: the grid needs at least one value")
            if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
                raise BenchmarkInputError(f"{name} must be positive integers, not {list(values)}")
            object.__setattr__(self, name, tuple(dict.fromkeys(values)))
        for name in ("threads", "iterations", "new_tokens", "rounds"):
            if getattr(self, name) < 1:
                raise BenchmarkInputError(f"{name} must be at least 1, not {getattr(self, name)}")
        if self.warmup < 0:
            raise BenchmarkInputError(f"warmup must be 0 or more, not {self.warmup}")

    def record(self, *, generation: bool = False) -> BenchmarkSettingsRecord:
        """What was measured: a text-generation conversion's grid is batch 1, its prompt
        lengths `seq_lengths`, `PREFILL_REPEATS` forwards each per round after one warm-up."""
        if generation:
            return BenchmarkSettingsRecord(
                batch_sizes=[1],
                seq_lengths=list(self.seq_lengths),
                threads=self.threads,
                iterations=PREFILL_REPEATS * self.rounds,
                warmup=1,
                seed=self.seed,
                new_tokens=self.new_tokens,
                rounds=self.rounds,
            )
        return BenchmarkSettingsRecord(
            batch_sizes=list(self.batch_sizes),
            seq_lengths=list(self.seq_lengths),
            threads=self.threads,
            iterations=self.iterations,
            warmup=self.warmup,
            seed=self.seed,
            onnx_spinning=self.onnx_spinning,
        )


def _read_directory(output_dir: Path) -> Manifest:
    published = PublishedDirectory.open(output_dir)
    if not published.published():
        raise BenchmarkInputError(f"{output_dir} has no published ONNX model")
    return published.manifest


def _sizes(
    manifest: Manifest, directory: Path, settings: BenchmarkSettings
) -> tuple[list[int], str]:
    """The sizes of the grid and their name: the model's own image size for vision, the
    sequence length for Hugging Face text models, the input spec's `size` for the others."""
    if manifest.source.kind is not SourceKind.HUGGINGFACE:
        return list(settings.seq_lengths), "size"
    config = read_json(directory / "config.json")
    if TASKS[Task(manifest.source.task)].modality is Modality.VISION:
        return [image_size(config)], "image size"
    from onnxport.predict import model_max_length

    limit = model_max_length(config, read_json(directory / "tokenizer_config.json"))
    too_long = [s for s in settings.seq_lengths if limit is not None and s > limit]
    if too_long:
        raise BenchmarkInputError(
            f"sequence length {too_long[0]} is more than the {limit} tokens this model reads",
            hint=f"use sequence lengths up to {limit}",
        )
    if Task(manifest.source.task) is Task.TEXT_GENERATION:
        return list(settings.seq_lengths), "prompt length"
    return list(settings.seq_lengths), "sequence length"


def _open_pytorch(manifest: Manifest, settings: BenchmarkSettings, largest: tuple[int, int]):
    """PyTorch eager, warmed up, with the source's own input factory."""
    import transformers  # noqa: F401  imported before measuring: its import is not the model

    before = rss_bytes()
    try:
        runtime, source = open_pytorch(manifest, threads=settings.threads)
    except SourceError as e:
        raise BenchmarkInputError(
            f"cannot load the source checkpoint for PyTorch: {e.message}",
            hint="benchmark the ONNX models alone (include_pytorch=False)",
        ) from e
    make_inputs, kind = source_inputs(source, seed=settings.seed)
    warmed = warm_up(runtime, make_inputs(*largest), settings.warmup, rss_before=before)
    return warmed, make_inputs, kind


def _runtimes(
    manifest: Manifest,
    output_dir: Path,
    settings: BenchmarkSettings,
    largest: tuple[int, int],
    *,
    include_pytorch: bool,
) -> tuple[list[Runtime], InputMaker, str]:
    """Every runtime loaded and warmed up at the `largest` shape, with the inputs to use."""
    runtimes = []
    if include_pytorch:
        pytorch, make_inputs, kind = _open_pytorch(manifest, settings, largest)
        runtimes.append(pytorch)
    else:
        first = output_dir / manifest.published_outputs()[0].file
        make_inputs, kind = directory_inputs(output_dir, first, seed=settings.seed)
    inputs = make_inputs(*largest)
    for out in manifest.published_outputs():
        before = rss_bytes()
        runtime = open_onnx(
            out.variant,
            output_dir / out.file,
            threads=settings.threads,
            spinning=settings.onnx_spinning,
        )
        runtimes.append(warm_up(runtime, inputs, settings.warmup, rss_before=before))
    return runtimes, make_inputs, kind


def _shape_line(timings: list[TimingRecord], size_name: str) -> str:
    first = timings[0]
    medians = ", ".join(f"{t.runtime} {t.p50_ms:.2f} ms" for t in timings)
    return f"batch {first.batch_size}, {size_name} {first.size}: {medians}"


def benchmark_directory(
    output_dir: Path,
    settings: BenchmarkSettings,
    *,
    include_pytorch: bool = True,
    progress: ProgressCallback = ignore_progress,
    manifest: Manifest | None = None,
) -> BenchmarkRecord:
    """Measure PyTorch eager (optional) and every published ONNX variant of `output_dir`.

    Args:
        output_dir: a complete onnxport output directory.
        settings: the grid, threads, iterations and warm-up.
        include_pytorch: also load the source checkpoint the manifest records and run it.
        progress: receives the `benchmark` stage's events once the input is checked: its
            start (with the grid) and its end.
        manifest: the manifest of `output_dir` when the caller has just published it (the
            directory is then neither read nor checked again); by default it is opened.

    Raises `BenchmarkInputError` for a directory or settings that cannot be benchmarked.
    """
    output_dir = Path(output_dir)
    manifest = manifest if manifest is not None else _read_directory(output_dir)
    sizes, size_name = _sizes(manifest, output_dir, settings)
    if Task(manifest.source.task) is Task.TEXT_GENERATION:
        return _benchmark_generation(
            output_dir,
            manifest,
            settings,
            sizes,
            include_pytorch=include_pytorch,
            progress=progress,
        )
    shapes = [(b, s) for b in settings.batch_sizes for s in sizes]
    grid = f"{len(shapes)} shapes, {settings.threads} threads, {settings.iterations} iterations"
    with StageClock(progress).stage(Stage.BENCHMARK, BenchmarkError, detail=grid) as timer:
        versions = {"onnxruntime": ort.__version__, "python": platform.python_version()}
        torch_threads = None
        if include_pytorch:
            import torch

            torch_threads = torch.get_num_threads()
            versions["torch"] = torch.__version__
        try:
            largest = (max(settings.batch_sizes), max(sizes))
            runtimes, make_inputs, kind = _runtimes(
                manifest, output_dir, settings, largest, include_pytorch=include_pytorch
            )
            logger.info("benchmarking %s on %s", ", ".join(r.name for r in runtimes), grid)
            timings = measure_interleaved(
                runtimes,
                shapes,
                make_inputs,
                iterations=settings.iterations,
                warmup=settings.warmup,
                on_shape=lambda done: logger.info("%s", _shape_line(done, size_name)),
            )
        finally:
            if torch_threads is not None:
                torch.set_num_threads(torch_threads)
        return BenchmarkRecord(
            settings=settings.record(),
            runtimes=[r.figures for r in runtimes],
            timings=timings,
            size_name=size_name,
            inputs=kind,
            machine=_machine(settings),
            versions=versions,
            created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            seconds=timer.record(),
            unstable=unstable_reasons(timings),
        )


def _machine(settings: BenchmarkSettings) -> dict[str, object]:
    spinning = "on" if settings.onnx_spinning else "off"
    return {
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "threads": settings.threads,
        "threading": f"torch.set_num_threads({settings.threads}); onnxruntime "
        f"intra_op_num_threads={settings.threads}, inter_op_num_threads=1, "
        f"spinning {spinning}",
    }


def _benchmark_generation(
    output_dir: Path,
    manifest: Manifest,
    settings: BenchmarkSettings,
    prompt_lengths: list[int],
    *,
    include_pytorch: bool,
    progress: ProgressCallback,
) -> BenchmarkRecord:
    """A text-generation conversion's benchmark (`benchmark.generation`): each runtime in a
    process of its own, in `settings.rounds` interleaved rounds."""
    from onnxport.benchmark.generation import benchmark_generation, generation_prompts

    prompts = generation_prompts(
        PublishedDirectory(output_dir, manifest), prompt_lengths, settings.new_tokens
    )
    detail = (
        f"prefill at {', '.join(map(str, prompt_lengths))} tokens, decode of "
        f"{settings.new_tokens} tokens, {settings.rounds} rounds, {settings.threads} threads"
    )
    with StageClock(progress).stage(Stage.BENCHMARK, BenchmarkError, detail=detail) as timer:
        versions = {"onnxruntime": ort.__version__, "python": platform.python_version()}
        if include_pytorch:
            import torch

            versions["torch"] = torch.__version__
        runtimes, timings, generation = benchmark_generation(
            output_dir,
            manifest,
            prompts,
            new_tokens=settings.new_tokens,
            rounds=settings.rounds,
            repeats=PREFILL_REPEATS,
            threads=settings.threads,
            include_pytorch=include_pytorch,
        )
        return BenchmarkRecord(
            settings=settings.record(generation=True),
            runtimes=runtimes,
            timings=timings,
            size_name="prompt length",
            inputs="the chat template's prompts and raw text, tokenized",
            machine=_machine(settings),
            versions=versions,
            created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            seconds=timer.record(),
            unstable=unstable_reasons(timings),
            generation=generation,
        )


def record_benchmark(
    output_dir: Path, result: BenchmarkRecord, manifest: Manifest | None = None
) -> Manifest:
    """Write `result` into the manifest's `benchmark` section and re-render the reports;
    returns the manifest written. `manifest`: the directory's, when the caller holds it.

    The report files are rewritten through temporary files and `os.replace`, the manifest
    (with their new checksums) last, so that no reader sees a half-written file.
    """
    output_dir = Path(output_dir)
    manifest = manifest if manifest is not None else _read_directory(output_dir)
    return write_reports(output_dir, manifest.model_copy(update={"benchmark": result}))
