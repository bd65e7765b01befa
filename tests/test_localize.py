"""Localization: a graph made wrong in one known place is found at exactly that place."""

from __future__ import annotations

import json

import onnx
import pytest
from onnx import numpy_helper

from onnxport.config import Exporter, SourceConfig
from onnxport.localize import (
    failing_input,
    localize_against_pytorch,
    localize_fp32_failure,
    localize_variant,
)
from onnxport.passes import DynamicInt8Pass, PassContext, apply_pass
from onnxport.validate import compute_references, validate_model

pytestmark = pytest.mark.slow

BIAS = "model.distilbert.transformer.layer.0.ffn.lin1.bias"


@pytest.fixture(scope="module")
def broken(exported, source, checkpoint, tmp_path_factory):
    """The tiny DistilBERT's dynamo export with one bias shifted by 0.5."""
    result = exported("distilbert-token", Exporter.DYNAMO)
    model = onnx.load(str(result.path))
    (bias,) = [i for i in model.graph.initializer if i.name == BIAS]
    bias.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(bias) + 0.5, BIAS))
    path = tmp_path_factory.mktemp("broken") / "model.onnx"
    onnx.save(model, str(path))
    src = source("distilbert-token")
    references = compute_references(src, [(1, 8), (2, 37)])
    return path, src, references


def test_validation_fails_and_localization_names_the_node_and_module(broken, checkpoint):
    path, src, references = broken
    validation = validate_model(path, references, task=src.task)
    assert not validation.passed
    found = localize_fp32_failure(
        checkpoint("distilbert-token"), SourceConfig(), path, references, validation, opset=18
    )
    assert found is not None and found.against == "pytorch"
    assert found.first.module == "distilbert.transformer.layer.0.ffn.lin1"
    # The exporter shares one initializer between equal tensors (layer 1's zero bias too):
    # the first node in topological order that reads the shifted bias is the one to name.
    reads = [(n.name, n.op_type) for n in onnx.load(str(path)).graph.node if BIAS in n.input]
    assert (found.first.node, found.first.op_type) == reads[0]
    assert found.first.max_abs_diff == pytest.approx(0.5, rel=1e-3)
    assert found.first.input_max_abs_diff < 1e-4
    assert found.following, "what diverges after it is listed too"
    assert found.summary().startswith(f"first divergence at node {found.first.node} (")
    assert "distilbert.transformer.layer.0.ffn.lin1): max abs 0.5 vs tolerance 0.0001" in (
        found.summary()
    )


def test_an_intact_model_has_no_divergence(exported, source):
    result = exported("distilbert-token", Exporter.DYNAMO)
    src = source("distilbert-token")
    inputs = {k: v.numpy() for k, v in src.make_inputs(1, 16, 0).items()}
    found = localize_against_pytorch(
        lambda: src, result.path, inputs, opset=18, atol=1e-4, rtol=1e-3
    )
    assert found.first is None
    assert found.compared > 20


def test_a_torchscript_export_says_localization_needs_dynamo(exported, source):
    result = exported("distilbert-token", Exporter.TORCHSCRIPT)
    src = source("distilbert-token")
    inputs = {k: v.numpy() for k, v in src.make_inputs(1, 16, 0).items()}
    found = localize_against_pytorch(
        lambda: src, result.path, inputs, opset=18, atol=1e-4, rtol=1e-3
    )
    assert found.first is None and "dynamo" in found.note


def test_failing_input_is_batch_one_of_the_worst_shape(broken):
    path, src, references = broken
    validation = validate_model(path, references, task=src.task)
    inputs = failing_input(references, validation)
    assert {v.shape[0] for v in inputs.values()} == {1}


def test_variant_localization_ranks_quantized_nodes(exported, source, tmp_path):
    result = exported("distilbert-token", Exporter.TORCHSCRIPT)
    src = source("distilbert-token")
    variant = apply_pass(DynamicInt8Pass(), result.path, tmp_path / "q.onnx", PassContext())
    inputs = {k: v.numpy() for k, v in src.make_inputs(1, 16, 0).items()}
    found = localize_variant(result.path, variant.output, inputs)
    assert found.against == "fp32-onnx" and found.compared > 10
    assert found.first is not None and found.first.op_type == "MatMul"
    assert found.suggestion == f"quantize.nodes_to_exclude: [{found.first.node}]"
    assert not list(tmp_path.glob(".*debug*")), "the exposed-values copy is removed"


def test_debug_command_compares_a_published_dynamo_export(cli, cli_converted):
    run, output = cli_converted("distilbert-token")
    assert run.code == 0
    debug = cli("debug", output, "--json")
    assert debug.code == 0, debug.stderr
    found = json.loads(debug.stdout)
    assert found["fp32"]["against"] == "pytorch"
    assert found["fp32"]["first"] is None and found["fp32"]["compared"] > 20


def test_debug_command_on_a_directory_without_manifest_is_a_clear_error(cli, tmp_path):
    run = cli("debug", tmp_path)
    assert run.code == 2 and "manifest.json" in run.stderr
    assert "Traceback" not in run.stderr
