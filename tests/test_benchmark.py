"""The benchmark: real ONNX Runtime sessions and PyTorch on tiny converted models, tiny grids."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from rich.console import Console

from onnxport.artifact.manifest import (
    MANIFEST_FILENAME,
    read_manifest,
    sha256_file,
    verify_directory,
)
from onnxport.artifact.records.benchmark import BenchmarkRecord, RuntimeRecord, TimingRecord
from onnxport.artifact.report import REPORT_HTML_FILENAME, REPORT_PLOT_FILENAME
from onnxport.benchmark import BenchmarkSettings, benchmark_directory, record_benchmark
from onnxport.benchmark.stability import unstable_reasons
from onnxport.commands.benchmark import benchmark_table
from onnxport.errors import BenchmarkInputError, OutputError
from onnxport.pipeline import convert
from onnxport.request import ConversionRequest
from onnxport.request.config import ConversionConfig
from onnxport.verify.runtime import session_options
from onnxport.verify.timing import Runtime, measure_interleaved

TINY = BenchmarkSettings(batch_sizes=(1, 2), seq_lengths=(8, 16), threads=1, iterations=3, warmup=1)


@pytest.fixture(scope="module")
def tagger(converted) -> Path:
    """A tiny token classifier converted once for the whole session (fp32 only)."""
    return converted("distilbert-token").directory


@pytest.fixture(scope="module")
def result(tagger: Path) -> BenchmarkRecord:
    return benchmark_directory(tagger, TINY)


@pytest.fixture(scope="module")
def quantized(checkpoint, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny token classifier published as fp32 and int8 (TorchScript exporter: fast).
    The int8 gate is low: the weights are random, and only the timing matters here."""
    output = tmp_path_factory.mktemp("benchmark") / "distilbert-int8"
    config = ConversionConfig().with_overrides(
        onnx={"exporter": "torchscript", "quantization": "int8"},
        validation={"min_task_agreement": 0.5},
    )
    convert(ConversionRequest(checkpoint("distilbert-token"), output, config))
    return output


# ------------------------------------------------------------------------ the figures


def test_every_runtime_is_measured_on_every_shape(result: BenchmarkRecord) -> None:
    assert [r.name for r in result.runtimes] == ["pytorch", "fp32"]
    assert [r.engine for r in result.runtimes] == ["pytorch-eager", "onnxruntime"]
    assert result.settings == TINY.record()
    assert result.size_name == "sequence length"
    assert result.inputs == "tokenized sample text"
    grid = {(b, s) for b in TINY.batch_sizes for s in TINY.seq_lengths}
    for runtime in result.runtimes:
        shapes = {(t.batch_size, t.size) for t in result.timings if t.runtime == runtime.name}
        assert shapes == grid, runtime.name
    assert len(result.timings) == 2 * len(grid)


def test_figures_are_positive_and_consistent(result: BenchmarkRecord) -> None:
    for t in result.timings:
        assert t.iterations == TINY.iterations
        assert 0 < t.p50_ms <= t.p90_ms <= t.p99_ms, t
        assert t.mean_ms > 0
        assert t.throughput == pytest.approx(t.batch_size / (t.p50_ms / 1000.0), rel=1e-3)
        speedup = result.speedup(t)
        pytorch = result.timing("pytorch", t.batch_size, t.size)
        assert pytorch is not None
        # This machine may be loaded: unstable figures claim no speed-up (tested below).
        ratio = None if result.unstable else pytest.approx(pytorch.p50_ms / t.p50_ms)
        assert speedup == ratio
    for r in result.runtimes:
        assert r.load_seconds > 0 and r.size_bytes > 0, r
        assert r.rss_growth_mb is not None


def test_file_sizes_are_those_on_disk(result: BenchmarkRecord, tagger: Path, checkpoint) -> None:
    sizes = {r.name: r.size_bytes for r in result.runtimes}
    assert sizes["fp32"] == (tagger / "model_fp32.onnx").stat().st_size
    weights = checkpoint("distilbert-token") / "model.safetensors"
    assert sizes["pytorch"] == weights.stat().st_size


@pytest.mark.slow
def test_every_published_variant_is_measured(quantized: Path) -> None:
    result = benchmark_directory(quantized, TINY)
    assert [r.name for r in result.runtimes] == ["pytorch", "fp32", "int8"]
    sizes = {r.name: r.size_bytes for r in result.runtimes}
    assert sizes["int8"] == (quantized / "model_int8.onnx").stat().st_size
    assert sizes["int8"] < sizes["fp32"]
    for t in result.timings:
        assert 0 < t.p50_ms <= t.p90_ms <= t.p99_ms, t
    assert {t.runtime for t in result.timings} == {"pytorch", "fp32", "int8"}
    assert verify_directory(quantized) == [], "benchmarking changes nothing"


def test_threads_and_machine_are_recorded(result: BenchmarkRecord) -> None:
    assert result.machine["threads"] == TINY.threads
    assert result.machine["cpu_model"]
    assert "torch.set_num_threads(1)" in result.machine["threading"]
    assert "intra_op_num_threads=1, inter_op_num_threads=1" in result.machine["threading"]
    assert set(result.versions) >= {"torch", "onnxruntime"}


def test_the_result_survives_json(result: BenchmarkRecord) -> None:
    assert BenchmarkRecord.model_validate_json(result.model_dump_json()) == result


def test_torch_threads_are_restored(tagger: Path) -> None:
    import torch

    before = torch.get_num_threads()
    settings = BenchmarkSettings(batch_sizes=(1,), seq_lengths=(8,), threads=1, iterations=1)
    benchmark_directory(tagger, settings)
    assert torch.get_num_threads() == before


def test_session_options_are_the_same_threads_without_spinning() -> None:
    options = session_options(threads=3, spinning=False)
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (3, 1)
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    spinning = session_options(threads=3, spinning=True)
    assert spinning.get_session_config_entry("session.intra_op.allow_spinning") == "1"


def test_runs_are_interleaved_in_rotating_order() -> None:
    calls: list[str] = []

    def runtime(name: str) -> Runtime:
        figures = RuntimeRecord(name=name, engine="fake", file=None, size_bytes=1, load_seconds=0)
        return Runtime(figures, lambda _: calls.append(name))

    runtimes = [runtime("a"), runtime("b"), runtime("c")]
    timings = measure_interleaved(runtimes, [(1, 4)], lambda b, s: {}, iterations=3, warmup=1)
    assert calls == ["a", "b", "c", "a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert [t.runtime for t in timings] == ["a", "b", "c"]


def test_vision_models_use_their_own_image_size(converted, tmp_path: Path) -> None:
    settings = BenchmarkSettings(batch_sizes=(1, 2), seq_lengths=(8, 300), threads=1, iterations=2)
    result = benchmark_directory(converted("vit-image").directory, settings)
    assert result.size_name == "image size"
    assert result.inputs == "random pixels"
    assert {(t.batch_size, t.size) for t in result.timings} == {(1, 32), (2, 32)}


@pytest.fixture(scope="module")
def plain_output(plain, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A plain PyTorch source (a torch.export program: inputs `features` and `mask`)."""
    files = plain
    output = tmp_path_factory.mktemp("plain") / "out"
    config = ConversionConfig().with_overrides(onnx={"exporter": "torchscript"})
    convert(ConversionRequest(files.program, output, config))
    return output


@pytest.mark.parametrize("include_pytorch", [True, False])
def test_a_plain_source_runs_on_inputs_made_for_its_declared_inputs(
    plain_output: Path, include_pytorch: bool
) -> None:
    settings = BenchmarkSettings(batch_sizes=(1, 3), seq_lengths=(5,), threads=1, iterations=2)
    result = benchmark_directory(plain_output, settings, include_pytorch=include_pytorch)
    assert result.size_name == "size"
    assert result.inputs == "generated inputs"
    expected = ["pytorch", "fp32"] if include_pytorch else ["fp32"]
    assert [r.name for r in result.runtimes] == expected
    assert {(t.batch_size, t.size) for t in result.timings} == {(1, 5), (3, 5)}


def test_onnx_alone_does_not_import_torch(tagger: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys
        from onnxport.benchmark import BenchmarkSettings, benchmark_directory
        settings = BenchmarkSettings(batch_sizes=(2,), seq_lengths=(8,), threads=1, iterations=2)
        result = benchmark_directory({str(tagger)!r}, settings, include_pytorch=False)
        assert "torch" not in sys.modules, "torch was imported"
        print([r.name for r in result.runtimes], result.inputs)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['fp32'] tokenized sample text"


# ---------------------------------------------------------------------- the manifest


def test_record_benchmark_updates_the_manifest_and_keeps_it_verified(
    result: BenchmarkRecord, copy_output
) -> None:
    directory = copy_output("distilbert-token")
    model = sha256_file(directory / "model_fp32.onnx")
    written = record_benchmark(directory, result)
    manifest = read_manifest(directory)
    assert manifest == written
    assert manifest.benchmark == result
    assert verify_directory(directory) == []
    assert {p.name for p in directory.iterdir()} == set(manifest.files) | {MANIFEST_FILENAME}
    assert (directory / REPORT_PLOT_FILENAME).read_bytes().startswith(b"\x89PNG")
    page = (directory / REPORT_HTML_FILENAME).read_text(encoding="utf-8")
    assert "data:image/png;base64," in page and "<h2>Benchmark</h2>" in page
    assert "## Benchmark" in (directory / "report.md").read_text(encoding="utf-8")
    assert manifest.files["model_fp32.onnx"] == model, "the model is untouched"


# ---------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("changes", "says"),
    [
        ({"batch_sizes": ()}, "batch_sizes is empty"),
        ({"seq_lengths": ()}, "seq_lengths is empty"),
        ({"batch_sizes": (1, 0)}, "batch_sizes must be positive integers"),
        ({"seq_lengths": (-8,)}, "seq_lengths must be positive integers"),
        ({"threads": 0}, "threads must be at least 1"),
        ({"iterations": 0}, "iterations must be at least 1"),
        ({"warmup": -1}, "warmup must be 0 or more"),
    ],
)
def test_bad_settings_are_refused(changes: dict, says: str) -> None:
    with pytest.raises(BenchmarkInputError, match=says) as caught:
        BenchmarkSettings(**changes)
    assert caught.value.exit_code == 2


def test_a_directory_that_is_not_an_output_is_refused(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="is not a directory"):
        benchmark_directory(tmp_path / "nowhere", TINY)
    with pytest.raises(OutputError, match="holds no manifest"):
        benchmark_directory(tmp_path, TINY)


def test_a_damaged_directory_is_refused(copy_output) -> None:
    directory = copy_output("distilbert-token")
    with (directory / "model_fp32.onnx").open("ab") as f:
        f.write(b"\0")
    with pytest.raises(OutputError, match=r"is damaged: model_fp32\.onnx does not match"):
        benchmark_directory(directory, TINY)


def test_a_sequence_longer_than_the_model_reads_is_refused(converted) -> None:
    settings = BenchmarkSettings(seq_lengths=(16, 4096), threads=1, iterations=1)
    with pytest.raises(BenchmarkInputError, match="sequence length 4096 is more than the 128"):
        benchmark_directory(converted("distilbert-token").directory, settings)


def test_a_moved_source_checkpoint_suggests_no_pytorch(copy_output, tmp_path: Path) -> None:
    directory = copy_output("distilbert-token")
    manifest = read_manifest(directory)
    moved = manifest.source.model_copy(update={"path": str(tmp_path / "moved-away")})
    manifest = manifest.model_copy(update={"source": moved})
    (directory / MANIFEST_FILENAME).write_text(manifest.to_json(), encoding="utf-8")
    with pytest.raises(BenchmarkInputError, match="cannot load the source checkpoint") as caught:
        benchmark_directory(directory, TINY)
    assert "include_pytorch=False" in str(caught.value.hint)
    assert benchmark_directory(directory, TINY, include_pytorch=False).runtimes


# ---------------------------------------------------------------- figures that are noise


def _disturbed(result: BenchmarkRecord, **changes: float) -> list[TimingRecord]:
    """The measured timings with PyTorch's at the smallest shape changed as a loaded
    machine changes them (`p50_ms`, `p90_ms` as factors)."""
    smallest = (min(TINY.batch_sizes), min(TINY.seq_lengths))
    return [
        t.model_copy(update={k: getattr(t, k) * f for k, f in changes.items()})
        if (t.runtime, t.batch_size, t.size) == ("pytorch", *smallest)
        else t
        for t in result.timings
    ]


def test_a_larger_input_running_faster_is_unstable(result: BenchmarkRecord) -> None:
    largest = result.timing("pytorch", max(TINY.batch_sizes), max(TINY.seq_lengths))
    smallest = result.timing("pytorch", min(TINY.batch_sizes), min(TINY.seq_lengths))
    factor = 5 * largest.p50_ms / smallest.p50_ms  # 1x8 now 5x slower than 2x16
    reasons = unstable_reasons(_disturbed(result, p50_ms=factor, p90_ms=factor))
    assert any("2x16 ran in" in r and "faster than the smaller 1x8" in r for r in reasons), reasons


def test_a_wide_spread_is_unstable(result: BenchmarkRecord) -> None:
    smallest = result.timing("pytorch", min(TINY.batch_sizes), min(TINY.seq_lengths))
    factor = 5 * smallest.p50_ms / smallest.p90_ms  # p90 at 5x the p50
    reasons = unstable_reasons(_disturbed(result, p90_ms=factor))
    assert "pytorch at 1x8: p90 " in reasons[0] and "is 5.0x its p50" in reasons[0], reasons


def test_consistent_figures_are_not_unstable(result: BenchmarkRecord) -> None:
    # Latency that grows with the input and a narrow spread, as an undisturbed run's.
    order = {r.name: i for i, r in enumerate(result.runtimes)}
    consistent = []
    for t in result.timings:
        p50 = (1 + order[t.runtime]) * t.batch_size * t.size
        consistent.append(t.model_copy(update={"p50_ms": p50, "p90_ms": 1.3 * p50}))
    assert unstable_reasons(consistent) == []


def test_unstable_figures_are_recorded_and_claim_no_speed_up(
    result: BenchmarkRecord, copy_output
) -> None:
    directory = copy_output("distilbert-token")
    factor = 10 * max(t.p50_ms for t in result.timings) / result.timings[0].p50_ms
    timings = _disturbed(result, p50_ms=factor, p90_ms=factor)
    unstable = result.model_copy(update={"timings": timings, "unstable": unstable_reasons(timings)})
    assert unstable.unstable
    manifest = record_benchmark(directory, unstable)
    assert read_manifest(directory).benchmark.unstable == unstable.unstable
    assert all(unstable.speedup(t) is None for t in unstable.timings)
    markdown = (directory / "report.md").read_text(encoding="utf-8")
    assert "Unstable timings, no speed-up claimed: " in markdown
    assert "faster than the smaller 1x8" in markdown
    assert re.search(r"\d\.\d\dx", markdown) is None, "no speed-up figure is published"
    assert "| unstable |" in markdown
    html = (directory / REPORT_HTML_FILENAME).read_text(encoding="utf-8")
    assert "Unstable timings, no speed-up claimed" in html
    assert (directory / REPORT_PLOT_FILENAME).is_file() and verify_directory(directory) == []
    from onnxport.tracking.benchmark import benchmark_metrics

    metrics = benchmark_metrics(manifest.benchmark)
    assert metrics["benchmark.unstable"] == 1.0
    assert not [k for k in metrics if k.endswith("speedup_vs_pytorch")]
    console = Console(width=200, record=True, file=io.StringIO())
    console.print(benchmark_table(unstable))
    text = console.export_text()
    assert "Unstable timings, no speed-up claimed" in text
    assert re.search(r"\d\.\d\dx", text) is None


# ------------------------------------------------------------------------------- CLI


def test_benchmark_command_prints_json_and_records_it(cli, copy_output) -> None:
    directory = copy_output("distilbert-token")
    run = cli(
        *("benchmark", directory, "--batch-sizes", "1,2", "--seq-lengths", "8"),
        *("--threads", "1", "--iterations", "3", "--warmup", "1", "--json"),
    )
    assert run.code == 0, run.stderr
    printed = json.loads(run.stdout)
    assert read_manifest(directory).benchmark.model_dump(mode="json") == printed
    assert {t["runtime"] for t in printed["timings"]} == {"pytorch", "fp32"}
    assert "… benchmark (2 shapes, 1 threads, 3 iterations)" in run.stderr
    assert f"✓ benchmark {printed['seconds']:.1f} s" in run.stderr, "the stage's one figure"
    assert verify_directory(directory) == []


def test_benchmark_command_prints_a_table(cli, copy_output) -> None:
    directory = copy_output("distilbert-token")
    run = cli("benchmark", directory, "--seq-lengths", "8", "--iterations", "2", "--no-pytorch")
    assert run.code == 0, run.stderr
    assert "speed-up vs PyTorch" in run.stdout and "fp32" in run.stdout
    assert "pytorch" not in run.stdout.replace("PyTorch", "")
    assert str(directory / REPORT_HTML_FILENAME) in run.stdout


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--batch-sizes", ""], "--batch-sizes is empty"),
        (["--batch-sizes", "1,x"], "--batch-sizes takes comma-separated positive integers"),
        (["--seq-lengths", "0"], "seq_lengths must be positive integers"),
        (["--threads", "0"], "threads must be at least 1"),
        (["--iterations", "-3"], "iterations must be at least 1"),
    ],
)
def test_benchmark_command_refuses_bad_numbers(cli, converted, args: list[str], says: str) -> None:
    run = cli("benchmark", converted("distilbert-token").directory, *args)
    assert run.code == 2
    assert run.stderr.startswith(f"error (benchmark): {says}")
    assert "Traceback" not in run.stderr and run.stdout == ""


def test_benchmark_command_refuses_bad_directories(cli, copy_output, tmp_path: Path) -> None:
    damaged = copy_output("distilbert-token")
    (damaged / "model_fp32.onnx").write_bytes(b"")
    (tmp_path / "empty").mkdir()
    for directory, says in (
        (tmp_path / "nowhere", "is not a directory"),
        (tmp_path / "empty", "holds no manifest.json"),
        (damaged, "is damaged"),
    ):
        run = cli("benchmark", directory)
        assert run.code == 2, run.stderr
        first = run.stderr.splitlines()[0]
        assert first.startswith("error (output): ") and says in first
        assert "Traceback" not in run.stderr


@pytest.mark.slow
def test_convert_with_benchmark_benchmarks_the_published_directory(
    cli, checkpoint, tmp_path: Path
) -> None:
    output = tmp_path / "out"
    run = cli(
        *("convert", checkpoint("distilbert-token"), "-o", output),
        *("--exporter", "torchscript", "--benchmark", "--json"),
    )
    assert run.code == 0, run.stderr
    manifest = read_manifest(output)
    assert json.loads(run.stdout)["benchmark"] == manifest.benchmark.model_dump(mode="json")
    result = manifest.benchmark
    assert result.settings.batch_sizes == [1, 8] and result.settings.seq_lengths == [32, 128]
    assert [r.name for r in result.runtimes] == ["pytorch", "fp32"]
    assert (output / REPORT_PLOT_FILENAME).is_file()
    assert verify_directory(output) == []
    assert "speed-up vs PyTorch" in run.stderr, "the table goes with the progress lines"


# ---------------------------------------------------------------------------- MLflow


@pytest.mark.slow
def test_a_tracked_benchmark_logs_metrics_and_artifacts(
    cli, copy_output, tmp_path_factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    from onnxport.request.config import ExperimentConfig
    from onnxport.tracking.store import (
        create_run,
        ensure_experiment,
        prepare_store,
        resolve_artifact_location,
        resolve_tracking_uri,
    )
    from support import root_with_store

    root = root_with_store(tmp_path_factory, "benchmark-tracking")
    uri = resolve_tracking_uri(root, ExperimentConfig())
    client = prepare_store(uri)
    experiment = ensure_experiment(
        client, "benchmark-tests", resolve_artifact_location(root, ExperimentConfig())
    )
    run_id = create_run(client, experiment, run_name="benchmark", tags={})
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_RUN_ID", run_id)
    directory = copy_output("distilbert-token")
    run = cli(
        "benchmark", directory, "--batch-sizes", "1", "--seq-lengths", "8", "--iterations", "2"
    )
    assert run.code == 0, run.stderr
    metrics = client.get_run(run_id).data.metrics
    assert metrics["benchmark.fp32.b1.s8.p50_ms"] > 0
    assert metrics["benchmark.pytorch.b1.s8.throughput"] > 0
    # Two runs of 1x8 give no ordering to judge; a loaded machine may still spread them.
    if metrics["benchmark.unstable"] == 0:
        assert metrics["benchmark.fp32.b1.s8.speedup_vs_pytorch"] > 0
    else:
        assert "benchmark.fp32.b1.s8.speedup_vs_pytorch" not in metrics
    assert "benchmark.pytorch.b1.s8.speedup_vs_pytorch" not in metrics
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"report.md", REPORT_HTML_FILENAME, REPORT_PLOT_FILENAME} <= artifacts


# ------------------------------------------------------------------- text generation


def test_a_text_generation_conversion_is_measured_generating(cli, copy_output) -> None:
    """Prefill at two prompt lengths, decode tokens/s, each runtime's own peak RSS and its
    share of the measured memory bandwidth, PyTorch's `generate()` the reference."""
    directory = copy_output("gpt2-generation")
    run = cli(
        *("benchmark", directory, "--seq-lengths", "4,12", "--new-tokens", "6"),
        *("--rounds", "2", "--threads", "1", "--json"),
    )
    assert run.code == 0, run.stderr
    result = BenchmarkRecord.model_validate_json(run.stdout)
    assert read_manifest(directory).benchmark == result
    assert verify_directory(directory) == []
    generation = result.generation
    assert generation is not None
    names = [d.runtime for d in generation.decode]
    assert names[0] == "pytorch" and "fp32" in names
    assert {(t.runtime, t.batch_size, t.size) for t in result.timings} == {
        (name, 1, length) for name in names for length in (4, 12)
    }
    assert {t.iterations for t in result.timings} == {3 * 2}  # 3 forwards a round, 2 rounds
    assert (result.settings.new_tokens, result.settings.rounds) == (6, 2)
    assert generation.bandwidth_gb_s > 0.5
    assert len(generation.prompt_tokens) == 3
    for decode in generation.decode:
        assert len(decode.tokens_per_s_rounds) == 2
        assert min(decode.tokens_per_s_rounds) <= decode.tokens_per_s
        assert decode.tokens_per_s <= max(decode.tokens_per_s_rounds)
        assert decode.bytes_per_token > 0
        expected = decode.tokens_per_s * decode.bytes_per_token / (generation.bandwidth_gb_s * 1e9)
        assert decode.bandwidth_share == pytest.approx(expected)
    by_name = {d.runtime: d for d in generation.decode}
    assert by_name["fp32"].same_tokens == "3/3", "the proven graph generates PyTorch's tokens"
    assert by_name["pytorch"].same_tokens is None
    # Each runtime measured in a process of its own: torch's import alone outweighs the graph.
    assert by_name["pytorch"].peak_rss_mb > by_name["fp32"].peak_rss_mb > 0
    from onnxport.tracking.benchmark import benchmark_metrics

    metrics = benchmark_metrics(result)
    assert metrics["benchmark.fp32.decode.tokens_per_s"] == by_name["fp32"].tokens_per_s
    assert metrics["benchmark.memory_bandwidth_gb_s"] == generation.bandwidth_gb_s
    report = (directory / "report.md").read_text(encoding="utf-8")
    assert "## Benchmark: decode" in report
    assert "| fp32 | " in report.split("## Benchmark: decode")[1]


def test_a_generation_longer_than_the_model_reads_is_refused(cli, copy_output) -> None:
    directory = copy_output("gpt2-generation")
    before = (directory / MANIFEST_FILENAME).read_bytes()
    run = cli("benchmark", directory, "--seq-lengths", "4", "--new-tokens", "100000")
    assert run.code == 2, run.stderr
    assert "new tokens make" in run.stderr and "more than the" in run.stderr
    assert (directory / MANIFEST_FILENAME).read_bytes() == before
