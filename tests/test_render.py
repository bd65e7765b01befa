"""Terminal rendering: progress lines and result tables, printed to a recording console."""

from __future__ import annotations

from rich.console import Console

from onnxport.artifact.records.outputs import CandidateRecord, SearchRecord
from onnxport.commands.render import ChildLines, ProgressPrinter, manifest_tables, print_manifest
from onnxport.progress import Stage, StageEvent, Status


def _console() -> Console:
    return Console(record=True, width=200, color_system=None)


def test_progress_prints_one_line_per_event() -> None:
    console = _console()
    printer = ProgressPrinter(console)
    printer(StageEvent(Stage.EXPORT, Status.START))
    printer(StageEvent(Stage.EXPORT, Status.DONE, 12.34))
    printer(StageEvent(Stage.VALIDATE, Status.FAILED, 0.5))
    assert console.export_text().splitlines() == [
        "… export to ONNX",
        "✓ export to ONNX 12.3 s",
        "✗ validate against PyTorch 0.5 s",
    ]


def test_a_stage_inside_another_is_indented_under_it() -> None:
    console = _console()
    printer = ProgressPrinter(console, indent="  ")
    printer(StageEvent(Stage.PUBLISH, Status.START))
    printer(StageEvent(Stage.TRACK, Status.START))
    printer(StageEvent(Stage.TRACK, Status.DONE, 2.5))
    printer(StageEvent(Stage.PUBLISH, Status.FAILED, 0.1))
    printer(StageEvent(Stage.BENCHMARK, Status.START))
    assert console.export_text().splitlines() == [
        "  … publish",
        "    … log to MLflow",
        "    ✓ log to MLflow 2.5 s",
        "  ✗ publish 0.1 s",
        "  … benchmark",
    ]


def test_tables_show_the_validation_figures(converted) -> None:
    manifest = converted("distilbert-token").manifest
    console = _console()
    outputs, timings = manifest_tables(manifest)
    console.print(outputs)
    console.print(timings)
    text = console.export_text()
    assert "onnxport: DistilBertForTokenClassification" in text
    fp32 = manifest.outputs[0]
    assert fp32.validation is not None
    worst = max(c.max_abs_diff for c in fp32.validation.outputs.values())
    row = next(line for line in text.splitlines() if "model_fp32.onnx" in line)
    for cell in ("fp32", "✓", "1x8 2x37 4x128", f"{worst:.2e}", "1.0000 ≥ 0.99"):
        assert cell in row
    assert "seconds per stage" in text
    for stage in manifest.timings:
        assert stage in text


def test_tables_mark_an_unpublished_variant(converted) -> None:
    manifest = converted("distilbert-token").manifest
    fp32 = manifest.outputs[0]
    assert fp32.validation is not None
    skipped = fp32.model_copy(
        update={
            "variant": "int8",
            "file": "model_int8.onnx",
            "published": False,
            "validation": fp32.validation.model_copy(update={"passed": False}),
        }
    )
    manifest = manifest.model_copy(update={"outputs": [fp32, skipped]})
    console = _console()
    console.print(manifest_tables(manifest)[0])
    row = next(line for line in console.export_text().splitlines() if "model_int8" in line)
    assert "✗ (not published)" in row


def test_a_long_output_path_is_printed_whole_on_its_own_line(converted) -> None:
    """At 100 columns, a path longer than the terminal breaks no title into fragments."""
    manifest = converted("distilbert-token").manifest
    path = "/srv/" + "/".join(f"spec_{i:02d}_exec_{i:02d}" for i in range(12)) + "/conv_abc"
    console = Console(record=True, width=100, color_system=None)
    print_manifest(console, manifest, path)
    lines = console.export_text().splitlines()
    assert lines[0] == f"output: {path}"
    (title,) = [line for line in lines if "onnxport:" in line]
    assert title.strip() == "onnxport: DistilBertForTokenClassification"
    assert all(len(line) <= 100 for line in lines[1:])


def test_text_from_a_model_or_a_library_prints_literally(converted) -> None:
    """Node names in brackets, a closing-tag look-alike, and a child's log line are text,
    never console markup."""
    manifest = converted("distilbert-token").manifest
    fp32 = manifest.outputs[0]
    search = SearchRecord(
        target="int8",
        candidates=[
            CandidateRecord(
                name="dynamic [per-tensor]",
                excluded_nodes=["[node_MatMul_127]", "[/model/MatMul]"],
                passed=True,
                chosen=True,
            )
        ],
        chosen="dynamic [per-tensor]",
        threads=1,
    )
    manifest = manifest.model_copy(update={"outputs": [fp32.model_copy(update={"search": search})]})
    console = _console()
    print_manifest(console, manifest, "out/[red]x[/red]")
    ChildLines(console, verbose=True, indent="  ")(
        "WARNING gate: try quantize.nodes_to_exclude: [node_MatMul_127]"
    )
    text = console.export_text()
    assert "output: out/[red]x[/red]" in text
    assert "dynamic [per-tensor]" in text
    assert "[node_MatMul_127], [/model/MatMul]" in text
    assert "  WARNING gate: try quantize.nodes_to_exclude: [node_MatMul_127]" in text


def test_an_image_models_shapes_are_whole_and_its_resolution_declared(converted) -> None:
    vit = converted("vit-image").manifest
    resnet = converted("resnet-image").manifest
    console = _console()
    for manifest in (vit, resnet):
        console.print(manifest_tables(manifest)[0])
    text = console.export_text()
    assert "1x3x32x32 2x3x32x32 4x3x32x32 " in text
    assert "1x3x32x32 2x3x32x32 4x3x32x32 1x3x64x64 1x3x96x96" in text
    assert "fixed resolution 32x32: the model takes 32x32 images only" in text
    assert "images of any size (validated at 32x32, 64x64, 96x96)" in text
