"""The reports: report.md, the self-contained report.html and the report.png plot."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import pytest
from matplotlib.image import imread

from onnxport.artifact.manifest import (
    MANIFEST_FILENAME,
    REPORT_FILENAME,
    Manifest,
    read_manifest,
    verify_directory,
)
from onnxport.artifact.records.benchmark import (
    BenchmarkRecord,
    BenchmarkSettingsRecord,
    RuntimeRecord,
    TimingRecord,
)
from onnxport.artifact.records.outputs import CandidateRecord, SearchRecord
from onnxport.artifact.records.validation import YardstickRecord
from onnxport.artifact.report import (
    REPORT_FILENAMES,
    REPORT_HTML_FILENAME,
    REPORT_PLOT_FILENAME,
    render_html,
    render_markdown,
    render_plot,
    rerender_reports,
    write_reports,
)
from onnxport.artifact.report.plot import search_figure
from onnxport.errors import OutputError


def test_report_of_a_conversion(converted) -> None:
    manifest = converted("bert-encoder").manifest
    report = render_markdown(manifest)
    lines = report.splitlines()
    assert lines[0] == "# onnxport conversion: BertModel"
    assert f"- exporter: torchscript, opset {manifest.export.opset}" in lines
    fp32 = manifest.outputs[0]
    assert fp32.validation is not None and fp32.size_bytes is not None
    agreement = fp32.validation.task_agreement
    worst = max(c.error_ratio or 0.0 for c in fp32.validation.outputs.values())
    row = (
        f"| model_fp32.onnx | fp32 | yes | {fp32.size_bytes / 1e6:.1f} MB | yes | "
        f"{worst:.2g} ≤ 4 | cosine_similarity {agreement.value:.4f} (min 0.99) |"
    )
    assert row in lines
    for name, comparison in fp32.validation.outputs.items():
        for b in comparison.budget:
            shape = "x".join(map(str, b.shape))
            assert f"| {name} | {shape} | {b.onnx_max:.3g} | {b.onnx_rms:.3g} |" in report
    assert "### fp32 (shapes 1x8 2x37 4x128)" in lines
    assert (
        "- inputs: `input_ids` int64 [batch, sequence], `attention_mask` int64 [batch, sequence], "
        "`token_type_ids` int64 [batch, sequence]"
    ) in lines
    for stage, seconds in manifest.timings.items():
        assert f"| {stage} | {seconds:.2f} |" in lines
    assert f"- torch: {manifest.versions['torch']}" in lines
    assert report.endswith("\n")


def test_report_shows_a_failed_or_unpublished_variant(converted) -> None:
    manifest = converted("bert-encoder").manifest
    fp32 = manifest.outputs[0]
    assert fp32.validation is not None
    failed = fp32.model_copy(
        update={
            "variant": "int8",
            "file": "model_int8.onnx",
            "published": False,
            "size_bytes": None,
            "validation": fp32.validation.model_copy(update={"passed": False}),
        }
    )
    manifest = manifest.model_copy(update={"outputs": [fp32, failed]})
    report = render_markdown(manifest)
    assert "| model_int8.onnx | int8 | no | - | NO |" in report
    assert "### int8 (shapes" in report


def _with_a_searched_int8(manifest: Manifest) -> Manifest:
    """`manifest` with an int8 variant as the search publishes it: judged on the task, its
    elementwise differences beyond fp32's tolerance, one node left in float."""
    fp32 = manifest.outputs[0]
    assert fp32.validation is not None
    differences = {
        name: c.model_copy(update={"max_abs_diff": 0.518, "atol": 0.5, "rtol": 0.5})
        for name, c in fp32.validation.outputs.items()
    }
    search = SearchRecord(
        target="int8",
        candidates=[
            CandidateRecord(name="dynamic per-tensor", passed=True, latency_ms={"1x8": 2.0}),
            CandidateRecord(
                name="dynamic per-channel",
                excluded_nodes=["/ffn/lin2/MatMul"],
                passed=True,
                latency_ms={"1x8": 1.5},
                chosen=True,
            ),
        ],
        chosen="dynamic per-channel",
        threads=1,
    )
    int8 = fp32.model_copy(
        update={
            "variant": "int8",
            "file": "model_int8.onnx",
            "search": search,
            "validation": fp32.validation.model_copy(
                update={"elementwise_gate": False, "outputs": differences}
            ),
        }
    )
    return manifest.model_copy(update={"outputs": [fp32, int8]})


def test_a_variant_is_shown_judged_on_the_task_not_on_a_tolerance(converted) -> None:
    manifest = _with_a_searched_int8(converted("bert-encoder").manifest)
    report = render_markdown(manifest)
    int8 = report[report.index("### int8 (shapes") :].split("\n## ", 1)[0]
    agreement = manifest.outputs[1].validation.task_agreement
    assert f"Judged on cosine_similarity {agreement.value:.4f} (min 0.99): passed." in int8
    assert "recorded, not judged" in int8
    assert "| output | max abs diff | max rel diff |" in int8
    for word in ("within tolerance", "atol", "| yes |"):
        assert word not in int8, int8
    fp32 = report[report.index("### fp32 (shapes") : report.index("### int8")]
    assert "Judged by the error budget" in fp32
    assert "| output | shape | ONNX error max | ONNX error RMS | PyTorch error max |" in fp32
    tolerance = manifest.outputs[0].validation.model_copy(  # type: ignore[union-attr]
        update={"yardstick": YardstickRecord(mode="tolerance", reason="validation.atol/rtol set")}
    )
    judged = manifest.model_copy(
        update={"outputs": [manifest.outputs[0].model_copy(update={"validation": tolerance})]}
    )
    fp32 = render_markdown(judged)
    assert "| output | max abs diff | max rel diff | atol | rtol | within tolerance |" in fp32
    assert "Judged by the tolerance: validation.atol/rtol set." in fp32


def test_the_search_plot_names_what_each_candidate_left_in_float(converted) -> None:
    figure = search_figure(_with_a_searched_int8(converted("bert-encoder").manifest))
    (axes,) = figure.axes
    assert [t.get_text() for t in axes.get_legend().get_texts()] == [
        "dynamic per-tensor",
        "dynamic per-channel, 1 node left in float (chosen)",
    ]


def test_report_names_the_lineage(converted) -> None:
    manifest: Manifest = converted("bert-encoder").manifest.model_copy(
        update={"conv_fp": "deadbeef", "lineage": {"parent_exec_fp": "def456"}}
    )
    report = render_markdown(manifest)
    assert "- conversion fingerprint: `deadbeef`" in report
    assert "- parent_exec_fp: `def456`" in report
    assert "conversion fingerprint" not in render_markdown(converted("bert-encoder").manifest)


# ------------------------------------------------------------ reports with a benchmark


def _benchmark(*, pytorch_ms: float = 10.0, fp32_ms: float = 4.0) -> BenchmarkRecord:
    """A recorded benchmark with round figures (rendering does not care how they were made)."""

    def timing(runtime: str, batch: int, size: int, p50: float) -> TimingRecord:
        return TimingRecord(
            runtime=runtime,
            batch_size=batch,
            size=size,
            iterations=3,
            p50_ms=p50,
            p90_ms=p50 * 1.1,
            p99_ms=p50 * 1.2,
            mean_ms=p50,
            throughput=batch / p50 * 1e3,
        )

    def runtime(name: str, engine: str, file: str, size: int, load: float, rss: float):
        return RuntimeRecord(
            name=name,
            engine=engine,
            file=file,
            size_bytes=size,
            load_seconds=load,
            rss_growth_mb=rss,
        )

    timings = [
        timing(name, batch, size, base * batch * size / 32)
        for batch in (1, 8)
        for size in (32, 128)
        for name, base in (("pytorch", pytorch_ms), ("fp32", fp32_ms))
    ]
    return BenchmarkRecord(
        settings=BenchmarkSettingsRecord(
            batch_sizes=[1, 8], seq_lengths=[32, 128], threads=2, iterations=3, warmup=3
        ),
        runtimes=[
            runtime("pytorch", "pytorch-eager", "model.safetensors", 2_000_000, 1.5, 120.0),
            runtime("fp32", "onnxruntime", "model_fp32.onnx", 2_100_000, 0.05, 10.0),
        ],
        timings=timings,
        size_name="sequence length",
        inputs="tokenized sample text",
        machine={"cpu_model": "Test CPU <x>", "logical_cpus": 2, "threads": 2, "threading": "t"},
        versions={"onnxruntime": "1.0", "torch": "2.0"},
        created_at="2026-01-01T00:00:00+00:00",
        seconds=1.0,
    )


@pytest.fixture
def benchmarked(converted) -> Manifest:
    return converted("bert-encoder").manifest.model_copy(update={"benchmark": _benchmark()})


def test_markdown_has_the_benchmark_tables_and_the_plot(benchmarked: Manifest) -> None:
    report = render_markdown(benchmarked)
    lines = report.splitlines()
    assert "## Benchmark" in lines
    assert "| pytorch | pytorch-eager | model.safetensors | 2.0 MB | 1.50 | 120 MB |" in lines
    assert "| 1 | 32 | pytorch | 10.00 | 11.00 | 12.00 | 100.0 | reference |" in lines
    assert "| 1 | 32 | fp32 | 4.00 | 4.40 | 4.80 | 250.0 | 2.50x |" in lines
    assert "| 8 | 128 | fp32 | 128.00 | 140.80 | 153.60 | 62.5 | 2.50x |" in lines
    assert "![median latency by sequence length](report.png)" in lines
    assert "Test CPU <x> (2 logical CPUs), 2 threads" in report
    # The sections before and after stay where they were.
    assert lines.index("## Validation against PyTorch") < lines.index("## Benchmark")
    assert lines.index("## Benchmark") < lines.index("## Timings")


def test_markdown_without_a_benchmark_has_no_benchmark_section(converted) -> None:
    report = render_markdown(converted("bert-encoder").manifest)
    assert "## Benchmark" not in report
    assert REPORT_PLOT_FILENAME not in report


def test_plot_is_a_deterministic_png(benchmarked: Manifest, converted) -> None:
    plot = render_plot(benchmarked)
    assert plot is not None and plot.startswith(b"\x89PNG\r\n\x1a\n")
    assert render_plot(benchmarked) == plot, "same manifest, same bytes: checksums stay stable"
    image = imread(io.BytesIO(plot), format="png")
    height, width = image.shape[:2]
    assert width > 2 * height, "one panel per batch size, side by side"
    assert render_plot(converted("bert-encoder").manifest) is None


def test_html_is_self_contained_with_the_plot_embedded(benchmarked: Manifest) -> None:
    plot = render_plot(benchmarked)
    page = render_html(benchmarked, plot)
    assert page.startswith("<!DOCTYPE html>")
    assert "<style>" in page
    assert "<script" not in page.lower()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page, re.IGNORECASE)
    assert "<link" not in page.lower()
    match = re.search(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert match and base64.b64decode(match.group(1)) == plot
    assert "<h2>Benchmark</h2>" in page
    assert '<td class="num faster">2.50x</td>' in page
    assert "Test CPU &lt;x&gt;" in page, "text is escaped"
    for name in benchmarked.outputs[0].validation.outputs:  # type: ignore[union-attr]
        assert f"<td>{name}</td>" in page


def test_html_without_a_benchmark_has_no_image(converted) -> None:
    page = render_html(converted("bert-encoder").manifest)
    assert "<img" not in page and "<h2>Benchmark</h2>" not in page
    assert "<h2>Validation against PyTorch</h2>" in page


def test_the_pipeline_writes_html_beside_markdown(converted) -> None:
    result = converted("bert-encoder")
    html_file = result.directory / REPORT_HTML_FILENAME
    assert html_file.read_text(encoding="utf-8") == render_html(result.manifest)
    assert REPORT_HTML_FILENAME in result.manifest.files
    assert not (result.directory / REPORT_PLOT_FILENAME).exists(), "no plot before a benchmark"


def test_write_reports_updates_checksums_and_leaves_no_temporary_file(
    copy_output, benchmarked: Manifest
) -> None:
    directory = copy_output("bert-encoder")
    written = write_reports(directory, benchmarked)
    assert verify_directory(directory) == []
    assert read_manifest(directory) == written
    assert written.benchmark == benchmarked.benchmark
    assert {REPORT_FILENAME, REPORT_HTML_FILENAME, REPORT_PLOT_FILENAME} <= set(written.files)
    assert {p.name for p in directory.iterdir()} == set(written.files) | {MANIFEST_FILENAME}
    assert (directory / REPORT_PLOT_FILENAME).read_bytes() == render_plot(benchmarked)


def test_rerender_repairs_missing_report_files(copy_output, benchmarked: Manifest) -> None:
    directory = copy_output("bert-encoder")
    write_reports(directory, benchmarked)
    before = {name: (directory / name).read_bytes() for name in REPORT_FILENAMES}
    for name in REPORT_FILENAMES:
        (directory / name).unlink()
    assert verify_directory(directory) != []
    rerender_reports(directory)
    assert {name: (directory / name).read_bytes() for name in REPORT_FILENAMES} == before
    assert verify_directory(directory) == []


def test_rerender_refuses_a_damaged_model(copy_output) -> None:
    directory = copy_output("bert-encoder")
    with (directory / "model_fp32.onnx").open("ab") as f:
        f.write(b"x")
    with pytest.raises(OutputError, match="does not match its checksum") as caught:
        rerender_reports(directory)
    assert caught.value.exit_code == 2


def test_rerender_refuses_a_directory_without_manifest(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match=r"holds no manifest\.json"):
        rerender_reports(tmp_path)
    with pytest.raises(OutputError, match="is not a directory"):
        rerender_reports(tmp_path / "nowhere")


def test_report_command_renders_again(cli, copy_output) -> None:
    directory = copy_output("bert-encoder")
    (directory / REPORT_HTML_FILENAME).unlink()
    run = cli("report", directory)
    assert run.code == 0, run.stderr
    assert str(directory / REPORT_HTML_FILENAME) in run.stdout
    assert verify_directory(directory) == []


def test_report_command_refuses_bad_input_in_one_line(cli, tmp_path: Path) -> None:
    run = cli("report", tmp_path)
    assert run.code == 2
    assert run.stderr.startswith("error (output): ")
    assert "Traceback" not in run.stderr
