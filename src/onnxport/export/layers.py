"""A decoder's graph traced with four of its layers, the others repeated from them.

torch.export's time grows with the operators it traces, and a decoder is its layers: on
SmolLM2-135M (30 layers), tracing all of them took 83 s of a 99 s conversion, tracing four
12 s. When every layer is the same module up to its index and its weights (`decoder_layers`),
the export traces `TRACED_LAYERS` of them (`fewer_layers`) and `fill_layers` builds the
whole graph from that trace: the first layer, which may make values the others share, two
alike, and the last, which feeds the head. The middle layers are copies of the third, each
fed the previous one's values, its own past and its own weights (named as the full model's,
so that the weights bind by name as in any dynamo export: `export.template`).

Nothing is assumed that the traced graph does not show: the third and fourth layers must be
node for node the same operators with the same attributes, fed alike (from their own layer,
the one before, their own past and weights, or the same shared value), and the second must
match the third, since copies are fed from a layer built like it. Otherwise the model is
traced whole.

The copies' nodes and values are named anew. No node names an FX node any more
(`pkg.torch.onnx.fx_node`): the whole trace numbers its nodes otherwise than the shorter one
(the cache's updates come before the layers, and every layer adds some), so the divergence
search, which pairs values with the FX program's nodes by those names, needs a graph traced
whole (`onnx.repeat_layers: false`). The graph is proven like any other: its outputs and its
generation against PyTorch's, every layer run.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from typing import Any

import onnx_ir as ir
import torch

from onnxport.tasks import (
    PAST_KEY,
    PAST_PREFIX,
    PAST_VALUE,
    PRESENT_KEY,
    PRESENT_PREFIX,
    PRESENT_VALUE,
)

TRACED_LAYERS = 4
MIN_LAYERS = TRACED_LAYERS + 2
"""Fewer layers than this are traced whole: repeating one or two saves too little."""

ADAPTER_PREFIX = "model.model."
"""Where `ExportAdapter` and `CausalLMWithPast` put the `*ForCausalLM` in module paths."""

_NAME_SCOPES = "pkg.torch.onnx.name_scopes"
_FX_NODE = "pkg.torch.onnx.fx_node"
_SIMPLE = (bool, int, float, str, type(None))
_COMMUTATIVE = frozenset({"Add", "Mul", "And", "Or", "Xor", "Equal", "Max", "Min", "Sum"})


@dataclass(frozen=True)
class LayerStack:
    """Where a decoder keeps its layers: `owner.attribute`, a ModuleList of `count`, at
    `path` in the `*ForCausalLM` (`model.layers`, `transformer.h`)."""

    model: torch.nn.Module
    owner: torch.nn.Module
    attribute: str
    path: str
    count: int

    @property
    def scope(self) -> str:
        """How the exporter's name scopes, and the weights' names, start in these layers."""
        return f"{ADAPTER_PREFIX}{self.path}."


def _attributes(module: torch.nn.Module) -> dict[tuple[str, str], Any]:
    """What decides a module's graph, besides its weights' values: each submodule's class,
    its plain attributes, and its parameters' and buffers' shapes and dtypes."""
    found: dict[tuple[str, str], Any] = {}
    for path, sub in module.named_modules():
        found[(path, "class")] = type(sub).__qualname__
        for key, value in vars(sub).items():
            if key.startswith("_"):  # bookkeeping (`_is_hf_initialized`), not the graph's
                continue
            if isinstance(value, _SIMPLE) or (
                isinstance(value, tuple) and all(isinstance(v, _SIMPLE) for v in value)
            ):
                found[(path, key)] = value
        tensors = [*sub.named_parameters(recurse=False), *sub.named_buffers(recurse=False)]
        for name, tensor in tensors:
            found[(path, name)] = (tuple(tensor.shape), tensor.dtype)
    return found


def _alike(layers: torch.nn.ModuleList) -> str | None:
    """Why `layers` are not the same module up to their index and weights (None: they are).
    An attribute may differ only by holding each layer's index (`layer_idx`)."""
    found = [_attributes(layer) for layer in layers]
    for attributes in found[1:]:
        unlike = sorted(attributes.keys() ^ found[0].keys())
        if unlike:
            return f"its layers are not built alike ({'.'.join(p for p in unlike[0] if p)})"
    for key in found[0]:
        values = [f[key] for f in found]
        if any(v != values[0] for v in values) and values != list(range(len(layers))):
            path = ".".join(p for p in key if p)
            return f"its layers differ in {path}"
    return None


def decoder_layers(model: torch.nn.Module, count: int) -> tuple[LayerStack | None, str]:
    """The layer stack of a `*ForCausalLM` of `count` layers whose graph can be traced with
    `TRACED_LAYERS` of them, or None and why not."""
    if count < MIN_LAYERS:
        return None, f"it has {count} layers"
    config = getattr(model, "config", None)
    if config is None or getattr(config, "num_hidden_layers", None) != count:
        return None, "its config does not say its layers"
    stacks = [
        (path, module)
        for path, module in model.named_modules()
        if isinstance(module, torch.nn.ModuleList) and len(module) == count
    ]
    if len(stacks) != 1:
        return None, f"it holds {len(stacks)} module lists of {count}"
    path, layers = stacks[0]
    unlike = _alike(layers)
    if unlike is not None:
        return None, unlike
    types = getattr(config, "layer_types", None)
    if types is not None and len(set(types)) > 1:
        return None, "its layers are of more than one type"
    owner_path, _, attribute = path.rpartition(".")
    owner = model.get_submodule(owner_path)
    return LayerStack(model, owner, attribute, path, count), ""


@contextlib.contextmanager
def fewer_layers(stack: LayerStack, keep: int = TRACED_LAYERS) -> Iterator[None]:
    """`stack`'s model with its first `keep` layers alone (its config says so too) while the
    block runs; the model is whole again after it."""
    config = stack.model.config
    layers = getattr(stack.owner, stack.attribute)
    types = getattr(config, "layer_types", None)
    setattr(stack.owner, stack.attribute, torch.nn.ModuleList(list(layers)[:keep]))
    config.num_hidden_layers = keep
    if types is not None:
        config.layer_types = list(types)[:keep]
    try:
        yield
    finally:
        setattr(stack.owner, stack.attribute, layers)
        config.num_hidden_layers = stack.count
        if types is not None:
            config.layer_types = types


class _Unlike(Exception):
    """The traced graph's layers do not repeat: the model is traced whole."""


def _attribute_key(attribute: ir.Attr) -> Any:
    value = attribute.value
    if attribute.type is ir.AttributeType.TENSOR:
        return (value.dtype, tuple(value.shape), value.tobytes())
    if attribute.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS):
        raise _Unlike("a layer holds a subgraph")
    return tuple(value) if isinstance(value, list | tuple) else value


def _operator(node: ir.Node) -> tuple[Any, ...]:
    attributes = tuple(sorted((k, _attribute_key(a)) for k, a in node.attributes.items()))
    return (node.domain, node.op_type, node.overload, len(node.outputs), attributes)


class _Layers:
    """The traced graph's nodes by layer (from their name scopes), and how each input of a
    layer's nodes is fed."""

    def __init__(self, graph: ir.Graph, scope: str, traced: int, state: Collection[str]):
        self.graph = graph
        self.scope = scope
        self.state = state
        self.inputs = {v.name: v for v in graph.inputs}
        self.outputs = {v.name: v for v in graph.outputs}
        pattern = re.compile(re.escape(scope) + r"(\d+)(?!\d)")
        nodes = list(graph)
        layer_of = [self._layer(node, pattern) for node in nodes]
        order = [x for i, x in enumerate(layer_of) if i == 0 or layer_of[i - 1] != x]
        if order != [None, *range(traced), None]:
            raise _Unlike("the layers' nodes are not in one run each, in order")
        # The nodes before the layers that read one layer's past alone (the cache's update,
        # the past's shape) are that layer's too.
        start = layer_of.index(0)
        prologue = self._prologues(nodes[:start], layer_of[start:], nodes[start:], traced)
        self.nodes: list[list[ir.Node]] = [[] for _ in range(traced)]
        for node, layer in [*prologue, *zip(nodes[start:], layer_of[start:])]:
            if layer is not None:
                self.nodes[layer].append(node)
        self.place = {
            node: (layer, index)
            for layer, members in enumerate(self.nodes)
            for index, node in enumerate(members)
        }

    def _prologues(
        self,
        before: list[ir.Node],
        layer_of: list[int | None],
        after: list[ir.Node],
        traced: int,
    ) -> list[tuple[ir.Node, int]]:
        """Of the nodes `before` the layers, those that read one layer's past and whose
        results only that layer reads, with the layer."""
        owner: dict[ir.Node, int | None] = dict(zip(after, layer_of))
        pasts = {
            id(self.inputs[t.format(i)]): i
            for i in range(traced)
            for t in (PAST_KEY, PAST_VALUE)
            if t.format(i) in self.inputs
        }
        candidate: dict[ir.Node, int] = {}
        for node in before:
            read = set()
            for value in node.inputs:
                if value is None:
                    continue
                producer = value.producer()
                if id(value) in pasts:
                    read.add(pasts[id(value)])
                elif producer is not None and producer in candidate:
                    read.add(candidate[producer])
            if len(read) == 1:
                candidate[node] = read.pop()
        for node in reversed(before):
            layer = candidate.get(node)
            if layer is None:
                continue
            users = [user for value in node.outputs for user, _ in value.uses()]
            if users and all(owner.get(user, candidate.get(user)) == layer for user in users):
                owner[node] = layer
            else:
                del candidate[node]
        return [(node, candidate[node]) for node in before if node in candidate]

    @staticmethod
    def _layer(node: ir.Node, pattern: re.Pattern[str]) -> int | None:
        scopes = node.metadata_props.get(_NAME_SCOPES, "")
        found = {int(m.group(1)) for m in pattern.finditer(scopes)}
        if len(found) > 1:
            raise _Unlike(f"node {node.name} is in layers {sorted(found)}")
        return found.pop() if found else None

    def prefix(self, layer: int) -> str:
        return f"{self.scope}{layer}."

    def feed(self, value: ir.Value | None, layer: int) -> tuple[Any, ...]:
        """How `value` feeds a node of `layer`."""
        if value is None:
            return ("none",)
        producer = value.producer()
        if producer is not None:
            at = self.place.get(producer)
            if at is not None and at[0] == layer:
                return ("own", at[1], value.index())
            if at is not None and at[0] == layer - 1:
                return ("previous", at[1], value.index())
            return ("shared", id(value))
        name = value.name or ""
        for template in (PAST_KEY, PAST_VALUE):
            if name == template.format(layer):
                return ("past", template)
        if value.is_initializer() and name.startswith(self.prefix(layer)):
            rest = name[len(self.prefix(layer)) :]
            return ("weight", rest)
        return ("shared", id(value))


def _check(layers: _Layers, traced: int, count: int) -> None:
    """Raise `_Unlike` unless the traced layers repeat as the module docstring says."""
    pattern, last = traced - 2, traced - 1
    alike = [layers.nodes[i] for i in (pattern - 1, pattern, last)]
    if len({len(nodes) for nodes in alike}) != 1:
        raise _Unlike("the layers have different numbers of nodes")
    for before, node, after in zip(*alike):
        if not _operator(before) == _operator(node) == _operator(after):
            raise _Unlike(f"{node.name} and {after.name} are not the same operator")
        fed = [layers.feed(v, pattern) for v in node.inputs]
        theirs = [layers.feed(v, last) for v in after.inputs]
        if node.op_type in _COMMUTATIVE and node.domain == "":
            # sympy orders a sum's terms by their symbols' names, which a layer changes.
            fed, theirs = sorted(fed, key=repr), sorted(theirs, key=repr)
        if fed != theirs:
            raise _Unlike(f"{node.name} and {after.name} are not fed alike")
        for weight in (rest[0] for kind, *rest in fed if kind == "weight"):
            for i in range(pattern + 1, count):
                if layers.prefix(i) + weight not in layers.state:
                    raise _Unlike(f"the model has no weight {layers.prefix(i)}{weight}")
        for mine in node.outputs:
            for user, _ in mine.uses():
                at = layers.place.get(user)
                if at is None or at[0] not in (pattern, last):
                    raise _Unlike(f"{mine.name} is read outside its layer and the next")
            presents = (PRESENT_KEY.format(pattern), PRESENT_VALUE.format(pattern))
            if mine.is_graph_output() and mine.name not in presents:
                raise _Unlike(f"{mine.name} is a graph output")
    for i in range(traced):
        for template in (PAST_KEY, PAST_VALUE):
            if template.format(i) not in layers.inputs:
                raise _Unlike(f"no input {template.format(i)}")
        for template in (PRESENT_KEY, PRESENT_VALUE):
            present = layers.outputs.get(template.format(i))
            producer = present.producer() if present is not None else None
            made_by = layers.place.get(producer, (None,))[0] if producer is not None else None
            if present is None or (i >= pattern and made_by != i):
                raise _Unlike(f"{template.format(i)} is not made by its layer")


class _Copier:
    """Makes the graph's layers from `traced - 1` up to `count - 2` as copies of the traced
    pattern (`traced - 2`), and moves the traced last one to `count - 1`."""

    def __init__(self, layers: _Layers, traced: int, count: int):
        self.layers = layers
        self.pattern = traced - 2
        self.last = traced - 1
        self.count = count
        self.graph = layers.graph
        self.pasts = {
            i: {t: layers.inputs[t.format(i)] for t in (PAST_KEY, PAST_VALUE)}
            for i in range(traced)
        }
        self.presents = {
            i: {t: layers.outputs[t.format(i)] for t in (PRESENT_KEY, PRESENT_VALUE)}
            for i in range(traced)
        }

    def _relabel(self, node: ir.Node, layer: int, of: int) -> None:
        """`node`, traced in layer `of`, labelled as in `layer`: its modules' paths."""
        old_scope = re.compile(rf"{re.escape(self.layers.scope)}{of}(?!\d)")
        for key in (_NAME_SCOPES, "namespace"):
            text = node.metadata_props.get(key)
            if text is not None:
                node.metadata_props[key] = old_scope.sub(f"{self.layers.scope}{layer}", text)

    def _new_weight(self, rest: str, layer: int) -> ir.Value:
        like = self.graph.initializers[self.layers.prefix(self.pattern) + rest]
        value = ir.Value(
            name=self.layers.prefix(layer) + rest,
            shape=like.shape,
            type=like.type,
            const_value=like.const_value,  # a stand-in: the template takes the values out
        )
        self.graph.register_initializer(value)
        return value

    def copy(self, layer: int, previous: list[ir.Node]) -> list[ir.Node]:
        """The pattern layer's nodes as `layer`, fed from `previous` (the layer before)."""
        made: list[ir.Node] = []
        pasts = {
            t: ir.Value(name=t.format(layer), shape=v.shape, type=v.type)
            for t, v in self.pasts[self.pattern].items()
        }
        presents = {id(v): t for t, v in self.presents[self.pattern].items()}
        self.pasts[layer], self.presents[layer] = pasts, {}
        weights: dict[str, ir.Value] = {}
        for node in self.layers.nodes[self.pattern]:
            inputs: list[ir.Value | None] = []
            for value in node.inputs:
                kind, *rest = self.layers.feed(value, self.pattern)
                if kind == "own":
                    inputs.append(made[rest[0]].outputs[rest[1]])
                elif kind == "previous":
                    inputs.append(previous[rest[0]].outputs[rest[1]])
                elif kind == "past":
                    inputs.append(pasts[rest[0]])
                elif kind == "weight":
                    if rest[0] not in weights:
                        weights[rest[0]] = self._new_weight(rest[0], layer)
                    inputs.append(weights[rest[0]])
                else:  # shared, or none
                    inputs.append(value)
            # Named when it joins the graph, as are its results.
            copied = ir.Node(
                node.domain,
                node.op_type,
                inputs,
                list(node.attributes.values()),
                overload=node.overload,
                num_outputs=len(node.outputs),
                version=node.version,
                metadata_props=dict(node.metadata_props),
            )
            self._relabel(copied, layer, self.pattern)
            for mine, original in zip(copied.outputs, node.outputs):
                mine.shape, mine.type = original.shape, original.type
                template = presents.get(id(original))
                if template is not None:
                    mine.name = template.format(layer)
                    self.presents[layer][template] = mine
            made.append(copied)
        return made

    def build(self) -> None:
        layers, graph = self.layers, self.graph
        last_nodes = layers.nodes[self.last]
        final = self.count - 1
        # The traced last layer becomes the model's last: renamed first, so that the copies
        # can take the names it had.
        fed = [[layers.feed(v, self.last) for v in node.inputs] for node in last_nodes]
        for node, feeds in zip(last_nodes, fed):
            for value, (kind, *rest) in zip(node.inputs, feeds):
                if kind == "weight" and value is not None:
                    value.name = layers.prefix(final) + rest[0]
        for by_layer in (self.pasts, self.presents):
            moved = by_layer.pop(self.last)
            for template, value in moved.items():
                value.name = template.format(final)
            by_layer[final] = moved
        previous = layers.nodes[self.pattern]
        anchor = previous[-1]
        for layer in range(self.pattern + 1, final):
            made = self.copy(layer, previous)
            graph.insert_after(anchor, made)
            anchor, previous = made[-1], made
        # Fed, as traced, by the pattern layer: now by the copy before it.
        for node, feeds in zip(last_nodes, fed):
            for index, (kind, *rest) in enumerate(feeds):
                if kind == "previous":
                    node.replace_input_with(index, previous[rest[0]].outputs[rest[1]])
            self._relabel(node, final, self.last)
        for node in graph:
            node.metadata_props.pop(_FX_NODE, None)
        self._interface()

    def _interface(self) -> None:
        """The graph's inputs and outputs: the step's, then every layer's past (present)."""
        graph = self.graph
        steps = [v for v in graph.inputs if not (v.name or "").startswith(PAST_PREFIX)]
        heads = [v for v in graph.outputs if not (v.name or "").startswith(PRESENT_PREFIX)]
        pasts = [self.pasts[i][t] for i in range(self.count) for t in (PAST_KEY, PAST_VALUE)]
        presents = [
            self.presents[i][t] for i in range(self.count) for t in (PRESENT_KEY, PRESENT_VALUE)
        ]
        graph.inputs.clear()
        graph.inputs.extend([*steps, *pasts])
        graph.outputs.clear()
        graph.outputs.extend([*heads, *presents])


def fill_layers(
    model: ir.Model, scope: str, traced: int, count: int, state: Collection[str]
) -> str | None:
    """Make `model`, a graph traced with `traced` layers (their nodes' name scopes start
    with `scope` and the index), the graph of `count` layers, in place; `state` names the
    whole model's weights. Returns why it cannot (the model unchanged), or None."""
    try:
        layers = _Layers(model.graph, scope, traced, state)
        _check(layers, traced, count)
    except _Unlike as e:
        return str(e)
    _Copier(layers, traced, count).build()
    return None
