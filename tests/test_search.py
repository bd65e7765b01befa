"""The variant search: the fastest model that passes the gate, measured on this machine.

The int8 search is tried on the trained tagger with an activation outlier in its first
feed-forward layer, as trained sentence encoders have: plain dynamic int8 fails the gate
there, and the search must find the setting and the node to leave in float that pass it.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from onnxport.artifact.manifest import Manifest, verify_directory
from onnxport.errors import ValidationError
from support import convert_with

pytestmark = pytest.mark.slow

FAST = {"exporter": "torchscript"}
FFN = "distilbert.transformer.layer.0.ffn."
LIN2 = "/model/distilbert/transformer/layer.0/ffn/lin2/MatMul"
SCALE = 100.0


@pytest.fixture(scope="module")
def outlier(trained_tagger, tmp_path_factory) -> Path:
    """The trained tagger with one first-layer feed-forward neuron 100 times larger, and its
    outgoing weights 100 times smaller: nearly the same function, with an activation outlier
    feeding `lin2` that per-tensor activation quantization cannot resolve."""
    checkpoint = tmp_path_factory.mktemp("activation-outlier") / "checkpoint"
    shutil.copytree(trained_tagger, checkpoint)
    weights = load_file(checkpoint / "model.safetensors")
    weights[FFN + "lin1.weight"][0] *= SCALE
    weights[FFN + "lin1.bias"][0] *= SCALE
    weights[FFN + "lin2.weight"][:, 0] /= SCALE
    save_file(weights, checkpoint / "model.safetensors", metadata={"format": "pt"})
    return checkpoint


class _Kept(logging.Handler):
    """The records logged at WARNING and above while it is attached to the root logger."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def searched_and_warned(outlier, tmp_path_factory) -> tuple[Manifest, Path, list[str]]:
    """The search's conversion, and the warnings the gate logged during it."""
    output = tmp_path_factory.mktemp("searched") / "out"
    kept = _Kept()
    logging.getLogger().addHandler(kept)
    try:
        manifest = convert_with(outlier, output, onnx={**FAST, "quantization": "auto"})
    finally:
        logging.getLogger().removeHandler(kept)
    gate = [r.getMessage() for r in kept.records if r.name == "onnxport.verify.gate"]
    return manifest, output, gate


@pytest.fixture(scope="module")
def searched(searched_and_warned) -> tuple[Manifest, Path]:
    manifest, output, _ = searched_and_warned
    return manifest, output


def test_plain_int8_fails_the_gate_on_an_activation_outlier(outlier, tmp_path) -> None:
    with pytest.raises(ValidationError, match=r"int8 ONNX model .* does not compute"):
        convert_with(outlier, tmp_path / "out", onnx={**FAST, "quantization": "int8"})
    assert not (tmp_path / "out").exists()


def test_auto_publishes_an_int8_model_that_passes_naming_what_stays_in_float(searched) -> None:
    manifest, output = searched
    int8 = manifest.output("int8")
    assert (int8.variant, int8.file) == ("int8", "model_int8.onnx")
    assert int8.published and int8.validation.passed
    assert int8.validation.task_agreement.value >= int8.validation.task_agreement.minimum == 0.99
    assert int8.smoke_test.passed and verify_directory(output) == []
    search = int8.search
    (chosen,) = [c for c in search.candidates if c.chosen]
    assert search.chosen == chosen.name and chosen.passed
    assert LIN2 in chosen.excluded_nodes, "the node fed by the outlier stays in float"
    assert int8.passes[-1].details["nodes_to_exclude"] == chosen.excluded_nodes
    first = search.candidates[0]
    assert (first.name, first.excluded_nodes, first.passed) == ("dynamic per-tensor", [], False)
    assert first.failures and "below the minimum 0.99" in first.failures[0]
    names = {c.name for c in search.candidates}
    assert names == {"dynamic per-tensor", "dynamic per-channel", "static QDQ per-channel"}
    assert sorted(p.name for p in output.iterdir() if p.suffix == ".onnx") == [
        "model_fp32.onnx",
        "model_int8.onnx",
    ], "the other candidates are removed"


def test_a_search_that_succeeds_warns_of_nothing(searched_and_warned) -> None:
    """The candidates it rejected on the way are in the manifest and the report (and in the
    log with -v), not warnings of a run that went well."""
    manifest, _, warnings = searched_and_warned
    assert any(not c.passed for c in manifest.output("int8").search.candidates)
    assert warnings == []


def test_the_gate_is_the_same_for_every_candidate(searched) -> None:
    manifest, _ = searched
    for candidate in manifest.output("int8").search.candidates:
        assert candidate.passed is (candidate.agreement >= 0.99), candidate


def test_the_fastest_passing_candidate_is_chosen(searched) -> None:
    search = searched[0].output("int8").search
    passing = [c for c in search.candidates if c.passed]
    assert all(set(c.latency_ms) == {"1x8", "1x37", "1x128"} for c in passing)
    assert all(not c.latency_ms for c in search.candidates if not c.passed)
    fastest = min(passing, key=lambda c: sum(c.latency_ms.values()))
    assert fastest.chosen
    assert search.threads >= 1


def test_the_machine_and_the_search_are_in_the_reports(searched) -> None:
    manifest, output = searched
    assert manifest.machine.cpu_model and manifest.machine.logical_cpus >= 1
    assert "avx2" in manifest.machine.isa or manifest.machine.machine != "x86_64"
    markdown = (output / "report.md").read_text(encoding="utf-8")
    assert "## Search: int8 settings tried" in markdown and LIN2 in markdown
    html = (output / "report.html").read_text(encoding="utf-8")
    assert "Search: int8" in html and "median latency of the search" in html
    assert "converted on: " in markdown


def test_no_passing_candidate_is_refused_with_what_was_tried(outlier, tmp_path) -> None:
    with pytest.raises(ValidationError) as raised:
        convert_with(
            outlier,
            tmp_path / "out",
            onnx={**FAST, "quantization": "auto"},
            quantize={"max_excluded_nodes": 0},
        )
    message = str(raised.value)
    assert message.startswith("no int8 candidate passes the accuracy gate (tried dynamic per-")
    for name in ("dynamic per-tensor", "dynamic per-channel", "static QDQ per-channel"):
        assert f"{name}: agreement 0." in message
    assert not (tmp_path / "out").exists()


def test_the_budget_stops_the_search_and_skip_publishes_fp32_alone(outlier, tmp_path) -> None:
    manifest = convert_with(
        outlier,
        tmp_path / "out",
        onnx={**FAST, "quantization": "auto"},
        quantize={"search_budget_seconds": 0.001, "on_failure": "skip"},
    )
    fp32, int8 = manifest.outputs
    assert fp32.published and not int8.published
    assert len(int8.search.candidates) == 1
    assert int8.search.note == "the search stopped at its budget of 0.001 s"
    assert not (tmp_path / "out" / "model_int8.onnx").exists()


def test_optimize_auto_keeps_the_fastest_level_that_validates(checkpoint, tmp_path) -> None:
    manifest = convert_with(
        checkpoint("distilbert-token"),
        tmp_path / "out",
        onnx={**FAST, "optimize": "auto"},
    )
    (fp32,) = manifest.outputs
    search = fp32.search
    assert [c.name for c in search.candidates] == [
        "optimize: none",
        "optimize: basic",
        "optimize: extended",
    ]
    assert all(c.passed for c in search.candidates)
    chosen = min(search.candidates, key=lambda c: sum(c.latency_ms.values()))
    assert chosen.chosen and search.chosen == chosen.name
    level = chosen.settings["level"]
    assert [p.name for p in fp32.passes] == ([] if level == "none" else [f"optimize-{level}"])
    assert manifest.config["onnx"]["optimize"] == "auto"
    assert "passes" in manifest.timings and "validate" not in manifest.timings
