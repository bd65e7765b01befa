"""The dynamo export as a graph without weights (a template) and the binding of weights into it.

The dynamo exporter names each initializer after the parameter or buffer it holds (its fully
qualified name, as in `ONNXProgram.apply_weights`) until onnxscript's optimizer runs. That
optimizer also decides by the weights' values: it folds `Transpose(weight)` into a new
initializer and merges initializers of equal content (every LayerNorm of a freshly initialized
model is all ones: one initializer for all of them). A graph optimized with one checkpoint's
weights is therefore not the graph of another's. So the export runs in two steps:

1. `make_template`: of the export without the optimizer, take the values out of the
   initializers that hold the model's state, and optimize what is left. What the optimizer
   does then holds for any value of the weights: the template depends on the architecture,
   not on the checkpoint.
2. `bind`: write a model's own parameters and buffers into those initializers, by name, then
   fold what the values decide (`fold_weights`: `Transpose(weight)`, initializers of equal
   content), and save with external data. The optimizer's rewrite rules, which look at the
   graph and not at the weights, ran on the template: run again here they found nothing, and
   took most of a cache hit's time (SmolLM2-135M: 34.3 s against 7.1 s, the same graph).

Every dynamo export goes through both, so a template kept from one checkpoint and bound to
another gives the graph that checkpoint's own export gives (`onnxport.export.cache`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import onnx
import onnx_ir as ir
import torch
from onnx_ir.passes import common as common_passes
from onnxscript import optimizer
from torch.onnx._internal._lazy_import import onnxscript_apis
from torch.onnx._internal.exporter._core import TorchTensor

from onnxport.export.external_data import save_model
from onnxport.export.workarounds import release_rewriter_state

UNBOUND = "onnxport-unbound-weight"
"""The external data location a stored template's state initializers point at: nothing."""

# The initializer deduplication pass warns once per initializer without a value.
_QUIET_LOGGERS = ("onnx_ir.passes.common.initializer_deduplication",)


@dataclass(frozen=True)
class TemplateData:
    """A template as bytes (`template_bytes`) and its bindings: what the cache keeps."""

    graph: bytes
    bindings: dict[str, str]


@dataclass
class GraphTemplate:
    """An exported graph whose state initializers hold no value yet.

    `bindings` maps each of those initializers to the state tensor (parameter or buffer, by
    its name in `ExportAdapter`) whose value it takes.
    """

    model: ir.Model
    bindings: dict[str, str]


def state_tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer of `module` by name, each alias of a tied weight included
    (the exporter names a tied weight's initializer after one of them)."""
    found: dict[str, torch.Tensor] = dict(module.named_parameters(remove_duplicate=False))
    found.update(module.named_buffers(remove_duplicate=False))
    return found


@contextlib.contextmanager
def _quiet_optimizer() -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in _QUIET_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


# Rewrite rules the optimizer does not run. `SlicesSplit` (two Slices of one tensor -> one
# Split) is a two-root pattern, which onnxscript 0.7 matches by trying every pair of nodes:
# on SmolLM2-135M's 5,295 nodes it took 64 s of the first rewrite pass's 80 s and matched
# nothing (transformers' `x[..., half:]` slices end at INT64_MAX, not at the dimension).
_SLOW_RULES = frozenset({"SlicesSplit"})


@contextlib.contextmanager
def _without_slow_rules() -> Iterator[None]:
    """onnxscript's default rewrite rules, less `_SLOW_RULES`, while the block runs (the
    optimizer reads them from its module on each call and takes no other set)."""
    from onnxscript import rewriter

    rules = getattr(rewriter, "_DEFAULT_REWRITE_RULES", None)
    if rules is None:  # another onnxscript: its optimizer as it is
        yield
        return
    rewriter._DEFAULT_REWRITE_RULES = tuple(r for r in rules if r.name not in _SLOW_RULES)
    try:
        yield
    finally:
        rewriter._DEFAULT_REWRITE_RULES = rules


def exporter_optimize(model: ir.Model) -> None:
    """The optimizer `torch.onnx.export(optimize=True)` runs (onnxscript's, via torch's own
    choice of its API version), less `_SLOW_RULES`, in place."""
    with _quiet_optimizer(), _without_slow_rules():
        onnxscript_apis.optimize(model)


def fold_weights(model: ir.Model) -> None:
    """What of the optimizer depends on the weights' values, in place: constants folded
    (a weight's Transpose becomes an initializer of its own), made initializers, merged when
    equal, and the nodes that then compute the same thing merged too."""
    with _quiet_optimizer():
        optimizer.fold_constants(model, onnx_shape_inference=False)
        ir.passes.Sequential(
            common_passes.RemoveUnusedNodesPass(),
            common_passes.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
            common_passes.DeduplicateInitializersPass(),
            common_passes.CommonSubexpressionEliminationPass(),
            common_passes.RemoveUnusedNodesPass(),
        )(model)


def make_template(model: ir.Model, state: Mapping[str, torch.Tensor]) -> GraphTemplate:
    """The template of `model`, the dynamo exporter's graph before its optimizer, whose
    initializers named after `state`'s tensors lose their values (this changes `model`)."""
    bindings = {}
    for name, value in model.graph.initializers.items():
        if name in state:
            value.const_value = None
            bindings[name] = name
    exporter_optimize(model)
    # An unused parameter (a head the task does not call) is gone from the optimized graph.
    kept = model.graph.initializers
    return GraphTemplate(model, {k: v for k, v in bindings.items() if k in kept})


def bind(
    template: GraphTemplate, state: Mapping[str, torch.Tensor], path: Path, *, external: bool
) -> None:
    """Write `state`'s tensors into `template` (which this changes), fold them
    (`fold_weights`) and save the model to `path`, its weights inline or in `<path>.data`
    (`external`), in one write (`save_model`).

    Raises ValueError when `state` does not fit: a tensor missing, or of another shape or
    dtype than its initializer.
    """
    initializers = template.model.graph.initializers
    for name, state_name in template.bindings.items():
        value = initializers.get(name)
        tensor = state.get(state_name)
        if value is None or tensor is None:
            raise ValueError(f"initializer {name} or state tensor {state_name} is missing")
        bound = TorchTensor(tensor.detach(), name)
        shape = list(value.shape) if value.shape is not None else None
        if (bound.dtype, list(bound.shape)) != (value.dtype, shape):
            raise ValueError(
                f"{state_name} is {bound.dtype} {list(bound.shape)}, its initializer "
                f"{value.dtype} {shape}"
            )
        value.const_value = bound
    unbound = sorted(n for n, v in initializers.items() if v.const_value is None)
    if unbound:
        raise ValueError(f"initializers without a value: {', '.join(unbound[:3])}")
    fold_weights(template.model)
    save_model(template.model, path, external=external)
    release_rewriter_state()


def template_bytes(template: GraphTemplate) -> bytes:
    """`template` as an ONNX model whose state initializers point at external data that does
    not exist (`UNBOUND`): the graph, its constants, and each weight's dtype and shape."""
    initializers = template.model.graph.initializers
    for name in template.bindings:
        value = initializers[name]
        if value.dtype is None or value.shape is None:
            raise ValueError(f"initializer {name} has no dtype or shape")
        value.const_value = ir.ExternalTensor(
            UNBOUND, None, None, value.dtype, shape=value.shape, name=name
        )
    try:
        return ir.serde.serialize_model(template.model).SerializeToString()
    finally:
        for name in template.bindings:
            initializers[name].const_value = None


def template_from_bytes(data: bytes, bindings: Mapping[str, str]) -> GraphTemplate:
    """The template `template_bytes` wrote. Raises ValueError when the graph and `bindings`
    disagree on which initializers wait for a value."""
    model = ir.serde.deserialize_model(onnx.ModelProto.FromString(data))
    initializers = model.graph.initializers
    for name, value in initializers.items():
        tensor = value.const_value
        unbound = isinstance(tensor, ir.ExternalTensor) and tensor.location == UNBOUND
        if unbound != (name in bindings):
            raise ValueError(f"initializer {name} and the bindings disagree")
        if unbound:
            value.const_value = None
    missing = sorted(set(bindings) - set(initializers))
    if missing:
        raise ValueError(f"bound initializers missing from the graph: {', '.join(missing[:3])}")
    return GraphTemplate(model, dict(bindings))
