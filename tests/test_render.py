"""Terminal rendering: progress lines and result tables, printed to a recording console."""

from __future__ import annotations

from rich.console import Console

from onnxport.commands.render import ProgressPrinter, manifest_tables
from onnxport.progress import Stage, StageEvent, Status


def _console() -> Console:
    return Console(record=True, width=200, color_system=None)


def test_progress_prints_one_line_per_event() -> None:
    console = _console()
    printer = ProgressPrinter(console)
    printer(StageEvent(Stage.EXPORT, Status.START))
    printer(StageEvent(Stage.EXPORT, Status.DONE, 12.34))
    printer(StageEvent(Stage.VALIDATE, Status.FAILED, 0.5))
    printer(StageEvent(Stage.BENCHMARK, Status.SKIPPED))
    assert console.export_text().splitlines() == [
        "… export to ONNX",
        "✓ export to ONNX 12.3 s",
        "✗ validate against PyTorch 0.5 s",
        "- benchmark (skipped)",
    ]


def test_tables_show_the_validation_figures(converted) -> None:
    manifest = converted("distilbert-token").manifest
    console = _console()
    outputs, timings = manifest_tables(manifest, "out/")
    console.print(outputs)
    console.print(timings)
    text = console.export_text()
    assert "onnxport: DistilBertForTokenClassification → out/" in text
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
    console.print(manifest_tables(manifest, "out/")[0])
    row = next(line for line in console.export_text().splitlines() if "model_int8" in line)
    assert "✗ (not published)" in row
