"""report.md: the manifest's figures as Markdown."""

from __future__ import annotations

from onnxport.manifest import Manifest
from onnxport.report import render_markdown


def test_report_of_a_conversion(converted) -> None:
    manifest = converted("bert-encoder").manifest
    report = render_markdown(manifest)
    lines = report.splitlines()
    assert lines[0] == "# onnxport conversion: BertModel"
    assert f"- exporter: torchscript, opset {manifest.export.opset}" in lines
    fp32 = manifest.outputs[0]
    assert fp32.validation is not None and fp32.size_bytes is not None
    agreement = fp32.validation.task_agreement
    row = (
        f"| model_fp32.onnx | fp32 | yes | {fp32.size_bytes / 1e6:.1f} MB | yes | "
        f"cosine_similarity {agreement.value:.4f} (min 0.99) |"
    )
    assert row in lines
    for name, comparison in fp32.validation.outputs.items():
        assert f"| {name} | {comparison.max_abs_diff:.3g} |" in report
    assert "### fp32 (shapes [1, 8], [2, 37], [4, 128])" in lines
    for stage, seconds in manifest.timings.items():
        assert f"| {stage} | {seconds:.2f} |" in lines
    assert f"- torch: {manifest.versions['torch']}" in lines
    assert report.endswith("\n")


def test_report_shows_a_failed_or_unpublished_variant(converted) -> None:
    manifest = converted("bert-encoder").manifest.model_copy(deep=True)
    failed = manifest.outputs[0].model_copy(deep=True)
    failed.variant, failed.file, failed.published, failed.size_bytes = (
        "int8",
        "model_int8.onnx",
        False,
        None,
    )
    assert failed.validation is not None
    failed.validation.passed = False
    manifest.outputs.append(failed)
    report = render_markdown(manifest)
    assert "| model_int8.onnx | int8 | no | - | NO |" in report
    assert "### int8 (shapes" in report


def test_report_names_the_lineage(converted) -> None:
    manifest: Manifest = converted("bert-encoder").manifest.model_copy(
        update={"conv_fp": "deadbeef", "lineage": {"parent_exec_fp": "def456"}}
    )
    report = render_markdown(manifest)
    assert "- conversion fingerprint: `deadbeef`" in report
    assert "- parent_exec_fp: `def456`" in report
    assert "conversion fingerprint" not in render_markdown(converted("bert-encoder").manifest)
