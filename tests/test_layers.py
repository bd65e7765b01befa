"""`export.layers`: a decoder whose layers are alike is traced with four of them and the
others repeated. The graph computes what the whole trace computes, with each layer's own
weights and cache; layers that differ, as modules or in the traced graph, are traced whole."""

from __future__ import annotations

import collections
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from models import build_llama_chat
from onnxport.export import export_to_onnx
from onnxport.export.layers import TRACED_LAYERS, decoder_layers, fewer_layers, fill_layers
from onnxport.export.strategies import adapter_for
from onnxport.sources import load_source
from onnxport.verify.runtime import create_session, session_options

SCOPE = "model.model.model.layers."
WIDTH = 4


def _llama(layers: int, **config: object) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    settings = dict(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    return LlamaForCausalLM(LlamaConfig(**{**settings, **config})).eval()


def test_alike_layers_are_found_and_the_model_is_whole_after_a_shorter_trace() -> None:
    model = _llama(6)
    stack, why = decoder_layers(model, 6)
    assert stack is not None, why
    assert (stack.path, stack.count) == ("model.layers", 6)
    layers = model.model.layers
    with pytest.raises(RuntimeError, match="in the block"), fewer_layers(stack):
        assert len(model.model.layers) == TRACED_LAYERS == model.config.num_hidden_layers
        raise RuntimeError("in the block")
    assert model.model.layers is layers
    assert model.config.num_hidden_layers == 6


def test_layers_that_differ_as_modules_are_traced_whole() -> None:
    assert decoder_layers(_llama(5), 5) == (None, "it has 5 layers")
    wider = _llama(6)
    wider.model.layers[4].mlp.up_proj = torch.nn.Linear(16, 48, bias=False)
    stack, why = decoder_layers(wider, 6)
    assert stack is None
    assert "mlp.up_proj" in why
    # Sliding-window attention from the fourth layer on: an attribute of the attention.
    sliding = _llama(6, layer_types=["full_attention"] * 3 + ["sliding_attention"] * 3)
    stack, why = decoder_layers(sliding, 6)
    assert stack is None
    assert why == "its layers are of more than one type"


# A traced graph as the exporter shapes it, small enough to write by hand: before the layers
# the cache's update of each layer (a prologue: `Identity(past.i.key)`), then per layer
#   h = MatMul(h_prev, w_i); present.i.key = Add(cached_i, h); present.i.value =
#   Identity(past.i.value); h_i = Mul(h, scale)   (scale: one value every layer shares)
# and the head, logits = MatMul(h_last, head).


def _scopes(*path: str) -> str:
    return str(["", "model", *path])


def _node(op: str, inputs: list[str], output: str, scope: str) -> onnx.NodeProto:
    node = helper.make_node(op, inputs, [output], name=f"node_{output}")
    node.metadata_props.add(key="pkg.torch.onnx.name_scopes", value=scope)
    node.metadata_props.add(key="pkg.torch.onnx.fx_node", value=f"%{output} : [num_users=1]")
    return node


def _traced(plant: Callable[[onnx.GraphProto], None] | None = None) -> ir.Model:
    rng = np.random.default_rng(0)
    nodes = [_node("Identity", ["x"], "h_in", _scopes("model.model.model.embed_tokens"))]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", WIDTH])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", WIDTH])]
    weights = [numpy_helper.from_array(np.float32([2.0]), "scale")]
    previous = "h_in"
    for i in range(TRACED_LAYERS):
        for part in ("key", "value"):
            inputs.append(
                helper.make_tensor_value_info(
                    f"past_key_values.{i}.{part}", TensorProto.FLOAT, ["batch", WIDTH]
                )
            )
            outputs.append(
                helper.make_tensor_value_info(f"present.{i}.{part}", TensorProto.FLOAT, None)
            )
        nodes.insert(i, _node("Identity", [f"past_key_values.{i}.key"], f"cat_{i}", "['']"))
        weight = f"{SCOPE}{i}.w"
        weights.append(numpy_helper.from_array(rng.normal(size=(WIDTH, WIDTH)).astype("f"), weight))
        scope = _scopes(f"{SCOPE}{i}")
        nodes += [
            _node("MatMul", [previous, weight], f"mm_{i}", scope),
            _node("Add", [f"cat_{i}", f"mm_{i}"], f"present.{i}.key", scope),
            _node("Identity", [f"past_key_values.{i}.value"], f"present.{i}.value", scope),
            _node("Mul", [f"mm_{i}", "scale"], f"h_{i}", scope),
        ]
        previous = f"h_{i}"
    weights.append(numpy_helper.from_array(rng.normal(size=(WIDTH, WIDTH)).astype("f"), "head"))
    nodes.append(_node("MatMul", [previous, "head"], "logits", _scopes("model.model.lm_head")))
    graph = helper.make_graph(nodes, "traced", inputs, outputs, weights)
    if plant is not None:
        plant(graph)
    return ir.serde.deserialize_model(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    )


def _state(layers: int) -> set[str]:
    return {f"{SCOPE}{i}.w" for i in range(layers)} | {"head"}


def test_the_traced_layers_are_repeated_into_every_layer_with_its_own_weights_and_cache(
    tmp_path: Path,
) -> None:
    model = _traced()
    head = model.graph.initializers["head"].const_value.numpy()
    assert fill_layers(model, SCOPE, TRACED_LAYERS, 6, _state(6)) is None
    graph = model.graph
    assert [v.name for v in graph.inputs] == ["x"] + [
        f"past_key_values.{i}.{p}" for i in range(6) for p in ("key", "value")
    ]
    assert [v.name for v in graph.outputs] == ["logits"] + [
        f"present.{i}.{p}" for i in range(6) for p in ("key", "value")
    ]
    assert not any("pkg.torch.onnx.fx_node" in n.metadata_props for n in graph)
    assert collections.Counter(n.op_type for n in graph) == {
        "Identity": 1 + 2 * 6,
        "MatMul": 6 + 1,
        "Add": 6,
        "Mul": 6,
    }
    # Each layer its own weight: the copies' are named as the whole model's.
    rng = np.random.default_rng(1)
    weights = {f"{SCOPE}{i}.w": rng.normal(size=(WIDTH, WIDTH)).astype("f") for i in range(6)}
    for name, value in weights.items():
        graph.initializers[name].const_value = ir.Tensor(value, name=name)
    ir.save(model, tmp_path / "filled.onnx")
    session = create_session(tmp_path / "filled.onnx", session_options(threads=1))
    feeds = {"x": rng.normal(size=(2, WIDTH)).astype("f")}
    for i in range(6):
        for part in ("key", "value"):
            feeds[f"past_key_values.{i}.{part}"] = rng.normal(size=(2, WIDTH)).astype("f")
    answers = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
    h = feeds["x"]
    for i in range(6):
        mm = h @ weights[f"{SCOPE}{i}.w"]
        np.testing.assert_allclose(
            answers[f"present.{i}.key"], feeds[f"past_key_values.{i}.key"] + mm, rtol=1e-5
        )
        np.testing.assert_array_equal(
            answers[f"present.{i}.value"], feeds[f"past_key_values.{i}.value"]
        )
        h = mm * 2.0
    np.testing.assert_allclose(answers["logits"], h @ head, rtol=1e-5)


def _node_named(graph: onnx.GraphProto, output: str) -> onnx.NodeProto:
    return next(n for n in graph.node if output in n.output)


def _other_operator(graph: onnx.GraphProto) -> None:
    _node_named(graph, "present.3.key").op_type = "Sub"


def _other_shared_value(graph: onnx.GraphProto) -> None:
    graph.initializer.append(numpy_helper.from_array(np.float32([3.0]), "other_scale"))
    _node_named(graph, "h_3").input[1] = "other_scale"


def _read_by_the_head(graph: onnx.GraphProto) -> None:
    _node_named(graph, "logits").input[0] = "h_2"


@pytest.mark.parametrize(
    ("plant", "state", "why"),
    [
        (_other_operator, _state(6), "are not the same operator"),
        (_other_shared_value, _state(6), "are not fed alike"),
        (_read_by_the_head, _state(6), "is read outside its layer and the next"),
        (None, _state(6) - {f"{SCOPE}5.w"}, f"the model has no weight {SCOPE}5.w"),
    ],
)
def test_a_traced_graph_whose_layers_do_not_repeat_is_left_as_it_was(
    plant: Callable[[onnx.GraphProto], None] | None, state: set[str], why: str
) -> None:
    model = _traced(plant)
    before = ir.serde.serialize_model(model).SerializeToString()
    found = fill_layers(model, SCOPE, TRACED_LAYERS, 6, state)
    assert found is not None
    assert found.endswith(why)
    assert ir.serde.serialize_model(model).SerializeToString() == before


@pytest.mark.slow
def test_a_deep_decoder_traced_with_four_layers_computes_what_the_whole_trace_computes(
    tmp_path: Path,
) -> None:
    checkpoint = build_llama_chat(tmp_path / "deep", num_hidden_layers=6)
    repeated = export_to_onnx(checkpoint, tmp_path / "repeated" / "model.onnx")
    whole = export_to_onnx(checkpoint, tmp_path / "whole" / "model.onnx", repeat_layers=False)
    assert [a.traced_layers for a in repeated.attempts] == [TRACED_LAYERS]
    assert [a.traced_layers for a in whole.attempts] == [None]
    graphs = [onnx.load(str(tmp_path / side / "model.onnx")) for side in ("repeated", "whole")]
    for part in ("input", "output"):
        names = [[v.name for v in getattr(g.graph, part)] for g in graphs]
        assert names[0] == names[1]
    counts = [collections.Counter(n.op_type for n in g.graph.node) for g in graphs]
    assert counts[0] == counts[1]

    # A left-padded decode step after the model's own cache of 12 tokens: every layer's
    # weights and cache count, and PyTorch computes the same.
    source = load_source(checkpoint)
    inputs = source.make_inputs(3, 1, 0)
    feeds = {name: value.numpy() for name, value in inputs.items()}
    options = session_options(threads=1)
    answers = [
        create_session(tmp_path / side / "model.onnx", options).run(None, feeds)
        for side in ("repeated", "whole")
    ]
    with torch.no_grad():
        expected = adapter_for(source)(*(inputs[n] for n in source.input_names))
    for name, mine, theirs, torch_answer in zip(
        source.output_names, answers[0], answers[1], expected
    ):
        np.testing.assert_allclose(mine, theirs, rtol=0, atol=1e-5, err_msg=name)
        np.testing.assert_allclose(mine, torch_answer.numpy(), rtol=1e-3, atol=1e-4, err_msg=name)
