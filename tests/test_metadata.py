"""Debug metadata: what holds a path or a stack trace leaves the model, wherever it sits, and
what the divergence search reads stays; weights are never touched; the switch keeps it all."""

from __future__ import annotations

import contextlib
import hashlib
import io
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from onnx.external_data_helper import uses_external_data

import onnxport.export.strategies
from checks import REPO, machine_traces
from onnxport.artifact.manifest import read_manifest
from onnxport.export.metadata import holds_machine_trace, strip_debug_metadata
from onnxport.export.strategies import adapter_for
from onnxport.verify.divergence.graph import FX_NODE, NAME_SCOPES, producers

STACK_TRACE = "pkg.torch.onnx.stack_trace"
# As the exporters write them, with this machine's directories, so that the scanner of
# `checks` (which knows this machine, not the patterns) sees them too.
SITE = f"{sys.prefix}/lib/python3.11/site-packages"
TRACE = (
    f'File "{REPO}/src/onnxport/export/strategies.py", line 35, in forward\n'
    "    outputs = self.model(**dict(zip(self.input_names, args)))\n"
    f'  File "{SITE}/torch/nn/modules/linear.py", line 134, in forward\n'
    "    return F.linear(input, self.weight, self.bias)"
)
FX = (
    "%linear_3 : [num_users=1] = call_function[target=torch.ops.aten.linear.default]"
    "(args = (%view_7, %p_weight, %p_bias), kwargs = {})"
)
SCOPES = (
    "['', 'model', 'model.distilbert', 'model.distilbert.transformer.layer.0.ffn.lin1', 'linear_3']"
)
CLASSES = (
    "['onnxport.export.strategies.ExportAdapter', "
    "'transformers.models.distilbert.modeling_distilbert.DistilBertForTokenClassification', "
    "'torch.nn.modules.linear.Linear', 'aten.linear.default']"
)
NAMESPACE = (
    ": onnxport.export.strategies.ExportAdapter/model: transformers.models.distilbert."
    "modeling_distilbert.DistilBertForTokenClassification/linear_3: aten.linear.default"
)
KEPT = {FX_NODE: FX, NAME_SCOPES: SCOPES, "pkg.torch.onnx.class_hierarchy": CLASSES}
KEPT["namespace"] = NAMESPACE


@pytest.mark.parametrize(
    "text",
    [
        TRACE,
        'File "torch/fx/passes/runtime_assert.py", line 24, in insert_deferred_runtime_asserts',
        # TorchScript, verbose: the stack, and the source location that ends a node's line.
        "/opt/venv/lib/python3.11/site-packages/transformers/masking_utils.py(835): _preprocess",
        "%logits : Float(2, 13, 5) = onnx::Add(%bias, %x), scope: Linear::classifier # "
        "/opt/venv/lib/python3.11/site-packages/torch/nn/modules/linear.py:134:0",
        "exported from C:\\Users\\me\\model.py",
        "weights in ~/models/tagger",
        "file:///home/me/model",
        "weights: '/data/run-7/model.safetensors'",
    ],
)
def test_a_path_or_a_stack_trace_is_found(text: str) -> None:
    assert holds_machine_trace(text)


@pytest.mark.parametrize(
    "text",
    [
        *KEPT.values(),
        "UnsqueezeUnsqueeze",
        "USER_INPUT",
        "{s33: VR[0, int_oo], s50: VR[0, int_oo]}",
        "p_model_weight: PARAMETER target='model.distilbert.embeddings.word_embeddings.weight'",
        "see https://onnx.ai/onnx/ for the operators",
        "",
    ],
)
def test_what_names_nodes_and_modules_is_no_path(text: str) -> None:
    assert not holds_machine_trace(text)


def _node(op: str, inputs: list[str], outputs: list[str], name: str, **kwargs) -> onnx.NodeProto:
    node = helper.make_node(op, inputs, outputs, name=name, **kwargs)
    helper.set_metadata_props(node, {**KEPT, STACK_TRACE: TRACE})
    return node


def _model() -> onnx.ModelProto:
    """Y = twice(X + W), or X + W: a node, an If with two branches, a local function, each
    node carrying the dynamo exporter's metadata; paths in doc strings at every level."""
    then_graph = helper.make_graph(
        [_node("Twice", ["sum"], ["doubled"], "call_twice", domain="local")],
        "then",
        [],
        [helper.make_tensor_value_info("doubled", TensorProto.FLOAT, [2, 3])],
    )
    else_graph = helper.make_graph(
        [_node("Identity", ["sum"], ["same"], "identity")],
        "else",
        [],
        [helper.make_tensor_value_info("same", TensorProto.FLOAT, [2, 3])],
    )
    add = _node("Add", ["X", "W"], ["sum"], "add")
    add.doc_string = f"scope: Linear::lin # {SITE}/torch/nn/modules/linear.py:134:0"
    branch = _node("If", ["cond"], ["Y"], "branch", then_branch=then_graph, else_branch=else_graph)
    weight = numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(2, 3), "W")
    weight.doc_string = f"loaded from {tempfile.gettempdir()}/run-7/model.safetensors"
    graph = helper.make_graph(
        [add, branch],
        "traced",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [2, 3])],
        initializer=[weight, numpy_helper.from_array(np.array(True), "cond")],
        doc_string=f"traced in {REPO}",
    )
    helper.set_metadata_props(graph, {"pkg.torch.export.ExportedProgram.range_constraints": "{}"})
    helper.set_metadata_props(graph.input[0], {"pkg.torch.onnx.original_node_name": "args_0"})
    twice = helper.make_function(
        "local",
        "Twice",
        ["x"],
        ["y"],
        [_node("Add", ["x", "x"], ["y"], "double")],
        [helper.make_opsetid("", 18)],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("local", 1)],
        functions=[twice],
        doc_string="a model made by test_metadata",
    )
    helper.set_metadata_props(model, {"origin": f"{Path.home()}/train.py", "team": "nlp"})
    onnx.checker.check_model(model, full_check=True)
    return model


def _entries(model: onnx.ModelProto) -> set[tuple[str, str]]:
    """Every (key, text) of doc strings and metadata anywhere in the model."""
    found: set[tuple[str, str]] = set()

    def visit(message) -> None:
        if getattr(message, "doc_string", ""):
            found.add(("doc_string", message.doc_string))
        found.update((p.key, p.value) for p in getattr(message, "metadata_props", ()))
        for field, value in message.ListFields():
            if field.message_type is not None:
                for item in value if field.is_repeated else (value,):
                    visit(item)

    visit(model)
    return found


def _run(path: Path) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"X": np.ones((2, 3), np.float32)})[0]


def test_traces_go_everywhere_and_what_the_divergence_search_reads_stays(tmp_path) -> None:
    path = tmp_path / "model.onnx"
    onnx.save(_model(), str(path))
    before = producers(onnx.load(str(path)))
    assert len(machine_traces(path)) == 9, "the scanner sees every planted trace"

    assert strip_debug_metadata(path) == 9  # 5 nodes' stack traces, 3 doc strings, 1 value
    stripped = onnx.load(str(path))
    assert machine_traces(path) == []
    assert _entries(stripped) == {
        *KEPT.items(),
        ("pkg.torch.export.ExportedProgram.range_constraints", "{}"),
        ("pkg.torch.onnx.original_node_name", "args_0"),
        ("doc_string", "a model made by test_metadata"),
        ("team", "nlp"),
    }
    for node in (stripped.graph.node[0], stripped.functions[0].node[0]):
        assert {p.key for p in node.metadata_props} == set(KEPT), node.name
    assert producers(stripped) == before
    assert producers(stripped)["sum"].module == "distilbert.transformer.layer.0.ffn.lin1"
    onnx.checker.check_model(stripped, full_check=True)
    np.testing.assert_array_equal(_run(path), 2 * (1 + np.arange(6).reshape(2, 3)))
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_external_weights_are_neither_read_nor_moved(tmp_path) -> None:
    path = tmp_path / "model.onnx"
    model = _model()
    big = np.linspace(0, 1, 64 * 1024, dtype=np.float32)  # above onnx's inline threshold
    model.graph.initializer.append(numpy_helper.from_array(big, "unused"))
    onnx.save_model(model, str(path), save_as_external_data=True, location="model.onnx.data")
    data = path.with_name("model.onnx.data")
    digest = hashlib.sha256(data.read_bytes()).hexdigest()
    modified = data.stat().st_mtime_ns
    expected = _run(path)

    assert strip_debug_metadata(path) == 9
    assert machine_traces(path) == []
    assert hashlib.sha256(data.read_bytes()).hexdigest() == digest
    assert data.stat().st_mtime_ns == modified
    stripped = onnx.load(str(path), load_external_data=False)
    assert [t.name for t in stripped.graph.initializer if uses_external_data(t)] == ["unused"]
    np.testing.assert_array_equal(_run(path), expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.onnx.data"]


def test_a_model_without_traces_is_left_as_it_is(tmp_path) -> None:
    path = tmp_path / "model.onnx"
    model = _model()
    onnx.save(model, str(path))
    strip_debug_metadata(path)
    content, modified = path.read_bytes(), path.stat().st_mtime_ns
    assert strip_debug_metadata(path) == 0
    assert (path.read_bytes(), path.stat().st_mtime_ns) == (content, modified)


@pytest.mark.slow
def test_torchscript_source_locations_are_removed(source, tmp_path) -> None:
    """The TorchScript exporter writes the stack of each node into its doc string when
    verbose; onnxport exports without, but a model exported so must lose them too."""
    loaded = source("distilbert-token")
    args = tuple(loaded.example_inputs()[name] for name in loaded.input_names)
    path = tmp_path / "verbose.onnx"
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            adapter_for(loaded), args, str(path), dynamo=False, opset_version=18, verbose=True,
            input_names=list(loaded.input_names), output_names=list(loaded.output_names),
        )  # fmt: skip
    traces = machine_traces(path)
    assert traces and all(".doc_string: " in t for t in traces)
    expected = _run_tagger(path, args)

    assert strip_debug_metadata(path) == len(traces)
    assert machine_traces(path) == []
    np.testing.assert_array_equal(_run_tagger(path, args), expected)


def _run_tagger(path: Path, args: tuple[torch.Tensor, ...]) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    return session.run(None, {n: a.numpy() for n, a in zip(names, args, strict=True)})[0]


@pytest.mark.slow
def test_keep_debug_metadata_publishes_the_stack_traces(cli, checkpoint, tmp_path) -> None:
    output = tmp_path / "out"
    run = cli(
        "convert", checkpoint("distilbert-token"), "-o", output, "--quantize", "int8",
        # Random weights: int8 moves near-tied argmaxes; the gate is not under test here.
        "--min-agreement", "0.01", "--keep-debug-metadata",
    )  # fmt: skip
    assert run.code == 0, run.stderr
    manifest = read_manifest(output)
    assert manifest.export.exporter == "dynamo"
    assert manifest.config["output"]["keep_debug_metadata"] is True
    assert [o.variant for o in manifest.published_outputs()] == ["fp32", "int8"]
    adapter = onnxport.export.strategies.__file__  # the adapter's frame: this machine's path
    for out in manifest.published_outputs():
        model = onnx.load(str(output / out.file), load_external_data=False)
        traces = [
            p.value for n in model.graph.node for p in n.metadata_props if p.key == STACK_TRACE
        ]
        assert any(adapter in t for t in traces), out.file
        assert machine_traces(output / out.file), out.file
