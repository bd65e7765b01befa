"""A directory published by onnxport 0.1.0 (`tests/fixtures/onnxport-0.1.0`) still works:
it verifies, predicts, benchmarks and re-renders its report with today's code, and its
manifest reads back with every key it was written with."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from onnxport.artifact.manifest import MANIFEST_FILENAME, read_manifest, verify_directory
from onnxport.predict import EntityPrediction, OnnxPredictor

FIXTURE = Path(__file__).parent / "fixtures" / "onnxport-0.1.0"
LINE = "Contact Priya Natarajan at priya.natarajan@example.com or +44 (207) 555-0199 ."


@pytest.fixture
def published(tmp_path: Path) -> Path:
    """A private copy: benchmarking and re-rendering write into the directory."""
    return Path(shutil.copytree(FIXTURE, tmp_path / "onnxport-0.1.0"))


def _keys(value: object, prefix: str = "") -> set[str]:
    if isinstance(value, dict):
        found = set()
        for key, item in value.items():
            found |= {f"{prefix}{key}"} | _keys(item, f"{prefix}{key}.")
        return found
    if isinstance(value, list):
        return set().union(*(_keys(item, f"{prefix}[].") for item in value)) if value else set()
    return set()


def test_it_verifies_and_its_manifest_keeps_every_key() -> None:
    assert verify_directory(FIXTURE) == []
    written = json.loads((FIXTURE / MANIFEST_FILENAME).read_text(encoding="utf-8"))
    manifest = read_manifest(FIXTURE)
    assert manifest.onnxport_version == "0.1.0"
    assert [o.variant for o in manifest.published_outputs()] == ["fp32", "int8"]
    assert manifest.benchmark is not None
    reread = json.loads(manifest.to_json())
    assert _keys(written) <= _keys(reread), _keys(written) - _keys(reread)


def test_it_predicts_with_both_variants() -> None:
    for variant in ("fp32", "int8"):
        (prediction,) = OnnxPredictor(FIXTURE, variant=variant).predict([LINE])
        assert isinstance(prediction, EntityPrediction)
        assert prediction.text == LINE
        for entity in prediction.entities:  # random weights: spans, not particular labels
            assert LINE[entity.start : entity.end] == entity.word
            assert 0.0 < entity.score <= 1.0


def test_it_benchmarks_and_re_renders_its_report(cli, published: Path) -> None:
    run = cli(
        "benchmark", published, "--no-pytorch", "--batch-sizes", "1", "--seq-lengths", "16",
        "--iterations", "3", "--warmup", "1",
    )  # fmt: skip
    assert run.code == 0, run.stderr
    benchmark = read_manifest(published).benchmark
    assert {t.runtime for t in benchmark.timings} == {"fp32", "int8"}
    assert verify_directory(published) == []
    (published / "report.md").unlink()
    run = cli("report", published)
    assert run.code == 0, run.stderr
    assert "model_int8.onnx" in (published / "report.md").read_text(encoding="utf-8")
    assert verify_directory(published) == []


def test_its_tables_show_the_shapes_it_recorded() -> None:
    """Written before the inputs' full shapes were: the (batch, size) pairs it has are shown,
    and no input or resolution is made up."""
    from rich.console import Console

    from onnxport.artifact.report.tables import facts, resolution_note
    from onnxport.commands.render import manifest_tables

    manifest = read_manifest(FIXTURE)
    validation = manifest.outputs[0].validation
    assert validation.input_shapes == [] and validation.graph_inputs == []
    assert manifest.source.fixed_resolution is None
    console = Console(record=True, width=200, color_system=None)
    console.print(manifest_tables(manifest)[0])
    shapes = " ".join("x".join(str(n) for n in shape) for shape in validation.shapes)
    assert shapes in console.export_text()
    assert resolution_note(manifest) is None
    assert not any(fact.startswith("inputs:") for fact in facts(manifest))
