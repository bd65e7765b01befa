"""`verify.divergence`: a graph made wrong in one known place is found at exactly that place."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from onnxport.passes import DynamicInt8Pass, PassContext, StaticInt8Pass, apply_pass
from onnxport.passes.calibration import Calibration
from onnxport.pipeline import convert
from onnxport.request import ConversionRequest
from onnxport.request.config import ConversionConfig
from onnxport.request.export_config import Exporter
from onnxport.request.quantize_config import QuantizeConfig
from onnxport.request.sections import SourceConfig
from onnxport.request.validation_config import DEFAULT_MAX_ERROR_RATIO
from onnxport.sources import load_source
from onnxport.verify.divergence import failing_input, fp32_divergence
from onnxport.verify.divergence.graph import producers
from onnxport.verify.divergence.pytorch import divergence_from_pytorch
from onnxport.verify.divergence.variant import changed_nodes, divergence_from_base
from onnxport.verify.references import add_exact_answers, compute_references
from onnxport.verify.validate import DEFAULT_TOLERANCES, Judging, validate_model

pytestmark = pytest.mark.slow

TOLERANCE = Judging(DEFAULT_TOLERANCES["fp32"])
BUDGET = Judging(DEFAULT_TOLERANCES["fp32"], max_error_ratio=DEFAULT_MAX_ERROR_RATIO)

BIAS = "model.distilbert.transformer.layer.0.ffn.lin1.bias"


def shifted_copy(model_path: Path, target: Path) -> Path:
    """The model at `model_path`, saved at `target` with the bias `BIAS` shifted by 0.5."""
    model = onnx.load(str(model_path))
    (bias,) = [i for i in model.graph.initializer if i.name == BIAS]
    bias.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(bias) + 0.5, BIAS))
    target.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(target))
    return target


@pytest.fixture(scope="module")
def broken(exported, source, checkpoint, tmp_path_factory):
    """The tiny DistilBERT's dynamo export with one bias shifted by 0.5."""
    result = exported("distilbert-token", Exporter.DYNAMO)
    path = shifted_copy(result.path, tmp_path_factory.mktemp("broken") / "model.onnx")
    src = source("distilbert-token")
    references = compute_references(src, [(1, 8), (2, 37)])
    return path, src, references


def test_validation_fails_and_localization_names_the_node_and_module(broken, checkpoint):
    path, src, references = broken
    validation = validate_model(path, references, task=src.task)
    assert not validation.passed
    found = fp32_divergence(
        lambda: load_source(checkpoint("distilbert-token"), SourceConfig()),
        path,
        references,
        validation,
        opset=18,
    )
    assert found is not None and found.against == "pytorch"
    assert found.max_error_ratio is None, "the tolerance judged, so the tolerance localizes"
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
    found = divergence_from_pytorch(lambda: src, result.path, inputs, opset=18, judging=TOLERANCE)
    assert found.first is None
    assert found.compared > 20


def test_a_torchscript_export_says_localization_needs_dynamo(exported, source):
    result = exported("distilbert-token", Exporter.TORCHSCRIPT)
    src = source("distilbert-token")
    inputs = {k: v.numpy() for k, v in src.make_inputs(1, 16, 0).items()}
    found = divergence_from_pytorch(lambda: src, result.path, inputs, opset=18, judging=BUDGET)
    assert found.first is None and "dynamo" in found.note


def test_failing_input_is_batch_one_of_the_worst_shape(broken):
    path, src, references = broken
    validation = validate_model(path, references, task=src.task)
    inputs = failing_input(references, validation)
    assert {v.shape[0] for v in inputs.values()} == {1}


# ------------------------------------------------- the error budget's yardstick, per node


@pytest.fixture(scope="module")
def exact_references(source):
    """The tiny DistilBERT's answers in float32 and in float64, at two shapes."""
    src = source("distilbert-token")
    references = compute_references(src, [(1, 8), (2, 37)])
    references, skipped = add_exact_answers(src, references, max_weights_gb=1.0)
    assert skipped is None
    return references


def scale_weight(model: onnx.ModelProto, module: str) -> onnx.NodeProto:
    """Scale by 1 + 1e-3 the weight matrix of the MatMul of `module`: the node it returns."""
    found = producers(model)
    weights = {i.name: i for i in model.graph.initializer}
    (node,) = [
        n for n in model.graph.node if n.op_type == "MatMul" and found[n.output[0]].module == module
    ]
    (weight,) = [weights[name] for name in node.input if name in weights]
    scaled = numpy_helper.to_array(weight) * np.float32(1 + 1e-3)
    weight.CopyFrom(numpy_helper.from_array(scaled, weight.name))
    return node


def change_epsilon(model: onnx.ModelProto, module: str) -> onnx.NodeProto:
    """Set the epsilon of the LayerNormalization of `module` to 1e-4 (PyTorch's is 1e-12):
    an exporter that reads a norm's epsilon from the wrong place."""
    found = producers(model)
    (node,) = [
        n
        for n in model.graph.node
        if n.op_type == "LayerNormalization" and found[n.output[0]].module == module
    ]
    (epsilon,) = [a for a in node.attribute if a.name == "epsilon"]
    epsilon.f = 1e-4
    return node


def _named_by_pytorch(model: onnx.ModelProto, node: onnx.NodeProto) -> onnx.NodeProto:
    """`node`, or its immediate consumer when its output has no FX node of its own (a
    MatMul whose sum with the bias is the FX `linear`)."""
    if producers(model)[node.output[0]].fx_node == node.output[0]:
        return node
    (consumer,) = [n for n in model.graph.node if node.output[0] in n.input]
    return consumer


@pytest.mark.parametrize(
    ("plant", "module"),
    [
        (scale_weight, "distilbert.transformer.layer.1.ffn.lin1"),
        # The last norm: the next would normalize away most of what an epsilon changes.
        (change_epsilon, "distilbert.transformer.layer.1.output_layer_norm"),
    ],
)
def test_a_planted_bug_is_localized_by_its_error_against_float64(
    exported, source, exact_references, tmp_path, plant, module
):
    model = onnx.load(str(exported("distilbert-token", Exporter.DYNAMO).path))
    expected = _named_by_pytorch(model, plant(model, module))
    path = tmp_path / "model.onnx"
    onnx.save(model, str(path))
    src = source("distilbert-token")
    validation = validate_model(path, exact_references, task=src.task, judging=BUDGET)
    assert not validation.passed and validation.yardstick.mode == "budget"
    logits = validation.outputs["logits"]
    inputs = failing_input(exact_references, validation)
    worst = max(logits.budget, key=lambda b: b.ratio).shape
    assert next(iter(inputs.values())).shape[1] == worst[1], "the shape the budget erred most"

    found = fp32_divergence(lambda: src, path, exact_references, validation, opset=18)

    assert found is not None and found.max_error_ratio == DEFAULT_MAX_ERROR_RATIO
    first = found.first
    assert (first.node, first.op_type, first.module) == (expected.name, expected.op_type, module)
    assert first.error_ratio > 10 * DEFAULT_MAX_ERROR_RATIO, "far above the limit"
    assert first.input_error_ratio <= DEFAULT_MAX_ERROR_RATIO, "its inputs were within it"
    assert first.onnx_max > first.pytorch_max > 0 and first.onnx_rms > first.pytorch_rms > 0
    assert found.summary() == (
        f"first divergence at node {expected.name} ({expected.op_type}, {module}): error "
        f"{first.error_ratio:.0f}x PyTorch's own (limit 4)"
    )


def test_an_intact_model_has_no_divergence_against_float64(exported, source):
    result = exported("distilbert-token", Exporter.DYNAMO)
    src = source("distilbert-token")
    inputs = {k: v.numpy() for k, v in src.make_inputs(1, 16, 0).items()}
    found = divergence_from_pytorch(lambda: src, result.path, inputs, opset=18, judging=BUDGET)
    assert found.max_error_ratio == DEFAULT_MAX_ERROR_RATIO and found.compared > 20
    assert found.first is None and found.following == []


def test_variant_localization_ranks_quantized_nodes(exported, source, tmp_path):
    result = exported("distilbert-token", Exporter.TORCHSCRIPT)
    src = source("distilbert-token")
    apply_pass(DynamicInt8Pass(), result.path, tmp_path / "q.onnx", PassContext())
    inputs = {k: v.numpy() for k, v in src.make_inputs(1, 16, 0).items()}
    found = divergence_from_base(
        result.path, tmp_path / "q.onnx", inputs, tolerance=DEFAULT_TOLERANCES["int8"]
    )
    assert found.against == "fp32-onnx" and found.compared > 10
    assert found.first is not None and found.first.op_type == "MatMul"
    assert found.suggestion == f"quantize.nodes_to_exclude: [{found.first.node}]"
    assert not list(tmp_path.glob(".*debug*")), "the exposed-values copy is removed"


def test_debug_command_compares_a_published_dynamo_export(cli, cli_converted):
    run, output = cli_converted("distilbert-token")
    assert run.code == 0
    # Published without the exporter's stack traces, with the metadata that pairs values.
    model = onnx.load(str(output / "model_fp32.onnx"))
    keys = {p.key for n in model.graph.node for p in n.metadata_props}
    assert "pkg.torch.onnx.stack_trace" not in keys
    assert {"pkg.torch.onnx.fx_node", "pkg.torch.onnx.name_scopes"} <= keys
    manifest = json.loads((output / "manifest.json").read_text())
    (fp32,) = [o for o in manifest["outputs"] if o["variant"] == "fp32"]
    assert fp32["validation"]["yardstick"]["mode"] == "budget"
    debug = cli("debug", output, "--json")
    assert debug.code == 0, debug.stderr
    found = json.loads(debug.stdout)
    assert found["fp32"]["against"] == "pytorch"
    assert found["fp32"]["max_error_ratio"] == DEFAULT_MAX_ERROR_RATIO, "the manifest's yardstick"
    assert found["fp32"]["first"] is None and found["fp32"]["compared"] > 20


def test_debug_command_on_a_directory_without_manifest_is_a_clear_error(cli, tmp_path):
    run = cli("debug", tmp_path)
    assert run.code == 2 and "manifest.json" in run.stderr
    assert "Traceback" not in run.stderr


# ------------------------------------------------------------- through `onnxport convert`


@pytest.fixture
def diverging_exporter(exported, monkeypatch: pytest.MonkeyPatch) -> None:
    """`onnxport convert`'s export stage hands over the tiny DistilBERT's dynamo export with
    the bias shifted: an exporter that gets one operation wrong, which no real exporter does
    on demand. The export itself is real: the session's, by `export_to_onnx` with dynamo."""

    def export(source, output_path: Path, settings, use):
        assert settings.exporter is Exporter.AUTO, "convert's default tries dynamo first"
        assert not settings.keep_debug_metadata, "convert strips the stack traces by default"
        assert source.architecture == "DistilBertForTokenClassification"
        result = exported("distilbert-token", Exporter.DYNAMO)
        assert result.record.exporter == "dynamo"
        shifted_copy(result.path, Path(output_path))
        return result.record

    # The export stage (with the export cache); preparation imports it when it runs.
    monkeypatch.setattr("onnxport.export.cache.use.export_with_cache", export)


def _error_line(run) -> str:
    assert "Traceback" not in run.stderr
    (line,) = [line for line in run.stderr.splitlines() if line.startswith("error")]
    return line


def test_convert_names_the_first_diverging_node_in_its_one_line_error(
    cli, checkpoint, exported, diverging_exporter, tmp_path
):
    run = cli("convert", checkpoint("distilbert-token"), "-o", tmp_path / "out")
    assert run.code == 1
    error = _error_line(run)
    assert error.startswith(
        "error (validate): the fp32 ONNX model does not compute what PyTorch computes: "
        "output 'logits' "
    )
    model = onnx.load(str(exported("distilbert-token", Exporter.DYNAMO).path))
    node, op_type = next((n.name, n.op_type) for n in model.graph.node if BIAS in n.input)
    # The default yardstick judged (the budget), and localized with it.
    assert re.search(
        rf"; first divergence at node {re.escape(node)} \({op_type}, "
        r"distilbert\.transformer\.layer\.0\.ffn\.lin1\): error \d+x PyTorch's own \(limit 4\)"
        r"; the dynamo exporter made the graph$",
        error,
    ), error
    assert not (tmp_path / "out").exists()


def test_convert_no_localize_fails_without_searching(cli, checkpoint, diverging_exporter, tmp_path):
    run = cli("convert", checkpoint("distilbert-token"), "-o", tmp_path / "out", "--no-localize")
    assert run.code == 1
    error = _error_line(run)
    assert "does not compute what PyTorch computes: output 'logits' " in error
    assert "divergence" not in error and "diverging" not in error


# ---------------------------------------------------------- advice that can be followed


def _static_qdq(base: Path, output: Path, src, **settings) -> Path:
    """`base` quantized as the search's static QDQ setting does: MatMuls only, calibrated."""
    samples = tuple({k: v.numpy() for k, v in src.make_inputs(1, 16, i).items()} for i in range(4))
    context = PassContext(
        calibration=Calibration(samples, "test samples"),
        settings=QuantizeConfig(per_channel=True, op_types=["MatMul"], **settings),
    )
    apply_pass(StaticInt8Pass(), base, output, context)
    return output


def test_static_qdq_localization_blames_only_nodes_the_quantizer_quantized(
    exported, source, tmp_path
):
    """Static QDQ feeds every reader of a quantized activation from its DequantizeLinear,
    residual Adds included: those are not quantized, and leaving one in float changes
    nothing. Only the MatMuls the quantizer quantized are candidates, and a MatMul left in
    float is no longer one."""
    base = exported("distilbert-token", Exporter.DYNAMO).path
    src = source("distilbert-token")
    model = onnx.load(str(base))
    matmuls = {n.name for n in model.graph.node if n.op_type == "MatMul"}
    variant = _static_qdq(base, tmp_path / "s.onnx", src)
    assert changed_nodes(model, onnx.load(str(variant))) == matmuls
    inputs = {k: v.numpy() for k, v in src.make_inputs(1, 16, 0).items()}
    found = divergence_from_base(base, variant, inputs, tolerance=DEFAULT_TOLERANCES["int8"])
    assert found.first is not None and found.exclude == [found.first.node]
    assert {d.node for d in (found.first, *found.following)} <= matmuls
    retried = _static_qdq(base, tmp_path / "r.onnx", src, nodes_to_exclude=found.exclude)
    left = changed_nodes(model, onnx.load(str(retried)))
    assert left == matmuls - {found.first.node}, "the retry changes the blamed node"


@pytest.fixture(scope="module")
def optimized_int8(checkpoint, tmp_path_factory) -> Path:
    """The tiny DistilBERT published as an optimized (fused) fp32 model and a dynamic int8
    model made from the graph as exported; the int8 gate is low (random weights)."""
    output = tmp_path_factory.mktemp("optimized-int8") / "out"
    config = ConversionConfig().with_overrides(
        onnx={"exporter": "dynamo", "optimize": "extended", "quantization": "int8"},
        validation={"min_task_agreement": 0.5},
    )
    convert(ConversionRequest(checkpoint("distilbert-token"), output, config))
    return output


def test_debug_blames_a_node_of_the_graph_the_variant_was_made_from(cli, exported, optimized_int8):
    fused = {n.op_type for n in onnx.load(str(optimized_int8 / "model_fp32.onnx")).graph.node}
    assert "SkipLayerNormalization" in fused, "the published fp32 graph is fused"
    found = json.loads(cli("debug", optimized_int8, "--json").stdout)["int8"]
    exported_graph = onnx.load(str(exported("distilbert-token", Exporter.DYNAMO).path)).graph
    assert found["first"]["node"] in {n.name for n in exported_graph.node}
    assert found["suggestion"] == f"quantize.nodes_to_exclude: [{found['first']['node']}]"
    table = cli("debug", optimized_int8)
    assert table.code == 0, table.stderr
    assert f"[{found['first']['node']}]" in table.stdout, "the remedy is printed, not eaten"
