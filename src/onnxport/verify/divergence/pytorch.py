"""The first ONNX node that parts ways with PyTorch.

The ONNX model runs once in ONNX Runtime with its intermediate values exposed as outputs,
and the PyTorch model runs under an FX interpreter over the program the dynamo exporter
traces (`torch.onnx`'s own verification interpreter pairs values the same way, but runs one
ONNX Runtime session per value; one run with every value exposed is what keeps a BERT-base
model within a minute). ONNX values are paired with FX nodes by the `pkg.torch.onnx.fx_node`
metadata the exporter writes on every node; the module path comes from its name scopes.

Each paired value is judged by the yardstick that judged the model (`Judging`). With the
error budget the program also runs in float64, node by node beside the float32 run, and a
value passes while its error against float64 is within the limit times PyTorch's own float32
error at that node (`verify.compare.error_budget`, as for the outputs). With the tolerance it
is compared with PyTorch's float32 value (`verify.compare.compare`).
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from onnxport.artifact.records.divergence import DivergenceRecord, NodeDivergenceRecord
from onnxport.verify.compare import ErrorBudget, TensorComparison, compare, error_budget
from onnxport.verify.divergence.graph import (
    Producer,
    producers,
    run_with_intermediates,
    structure,
    upstream,
)
from onnxport.verify.validate import Judging

if TYPE_CHECKING:
    from onnxport.sources.base import Source

logger = logging.getLogger(__name__)

FOLLOWING = 5
"""How many further diverging nodes the record lists after the first."""


@dataclass(frozen=True)
class _Paired:
    """One ONNX value against PyTorch's at the same FX node: the tolerance's figures, the
    budget's (when it judges), and the verdict of the yardstick that judged the model."""

    found: TensorComparison
    budget: ErrorBudget | None
    passed: bool


def _fx_comparisons(
    source: Source,
    inputs: Mapping[str, np.ndarray],
    opset: int,
    onnx_values: dict[str, np.ndarray],
    judging: Judging,
) -> tuple[list[str], dict[str, _Paired]]:
    """Run the program the dynamo exporter traces under an FX interpreter (for the budget,
    with its float64 twin in step) and judge each paired value as it is computed; each ONNX
    value is dropped once judged, so memory holds one forward pass, not two."""
    import torch

    from onnxport.export.strategies import dynamo_program
    from onnxport.export.workarounds import captured_stdout

    args = tuple(torch.from_numpy(inputs[name]) for name in source.input_names)
    with warnings.catch_warnings(), captured_stdout():
        warnings.simplefilter("ignore")
        module = dynamo_program(source, args, opset=opset, optimize=False).exported_program.module()
    exact = _float64_twin(module) if judging.by_budget else None
    order: list[str] = []
    paired: dict[str, _Paired] = {}

    class Comparer(torch.fx.Interpreter):
        def run_node(self, n):
            result = super().run_node(n)
            answer = exact.step(n) if exact is not None else None
            actual = onnx_values.pop(n.name, None)
            if actual is not None and isinstance(result, torch.Tensor):
                expected = result.detach().float().numpy()
                found = compare(actual, expected, judging.tolerance)
                budget = (
                    error_budget(actual, expected, answer.detach().numpy())
                    if isinstance(answer, torch.Tensor)
                    else None
                )
                paired[n.name] = _Paired(found, budget, judging.passes(found, budget))
                order.append(n.name)
            return result

    with torch.inference_mode():
        if exact is not None:
            exact.start(args)
        Comparer(module).run(*args)
    return order, paired


def _float64_twin(module):
    """An FX interpreter of `module` in float64, stepped one node at a time beside the
    float32 run (`start`, then `step` per node), with its values freed after their last use
    as the float32 run frees its own. Floating-point inputs and weights are cast as they are
    read (a weight's float64 copy lives while it is used, not for the whole run), and a
    float32 dtype the trace baked into an op (`zeros(dtype=float32)`, `_to_copy`) asks for
    float64, so that no float32 value mixes in."""
    import torch
    from torch.fx.node import map_aggregate

    def cast(value):
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            return value.double()
        return value

    def widened(value):
        return torch.float64 if value is torch.float32 else value

    class Float64(torch.fx.Interpreter):
        def start(self, args: tuple) -> None:
            self.env = {}
            self.args_iter = iter(self.graph.process_inputs(*args))

        def step(self, node):
            value = self.run_node(node)
            self.env[node] = value
            for done in self.user_to_last_uses.get(node, []):
                del self.env[done]
            return value

        def placeholder(self, target, args, kwargs):
            return cast(super().placeholder(target, args, kwargs))

        def get_attr(self, target, args, kwargs):
            return cast(super().get_attr(target, args, kwargs))

        def call_function(self, target, args, kwargs):
            args, kwargs = map_aggregate((args, kwargs), widened)
            return super().call_function(target, args, kwargs)

    return Float64(module)


def divergence_from_pytorch(
    load_source: Callable[[], Source],
    model_path: Path,
    inputs: Mapping[str, np.ndarray],
    *,
    opset: int,
    judging: Judging,
) -> DivergenceRecord:
    """The first ONNX node (in topological order) whose output fails `judging` (the error
    budget's limit, or the tolerance) while the values feeding it passed, comparing with the
    PyTorch model's values.

    `load_source` is called only after the ONNX side has run and released its session, so
    that the ONNX and PyTorch weights are never in memory together.
    """
    started = time.perf_counter()
    shape = list(next(iter(inputs.values())).shape)
    # The record names the limit that judged: the budget's, or the tolerance's.
    tolerance = None if judging.by_budget else judging.tolerance
    yardstick = {
        "max_error_ratio": judging.max_error_ratio,
        "atol": tolerance.atol if tolerance else None,
        "rtol": tolerance.rtol if tolerance else None,
    }
    found = producers(structure(model_path))
    # A value named after its FX node is that node's result in both graphs.
    paired = [name for name, p in found.items() if p.fx_node == name]
    if not paired:
        return DivergenceRecord(
            against="pytorch",
            shape=shape,
            compared=0,
            first=None,
            **yardstick,
            note="the model's nodes name no FX node (exported with TorchScript, or a decoder "
            "whose layers were repeated from a trace of four); finding where it diverges "
            "needs the dynamo exporter tracing every layer (onnx.repeat_layers: false)",
            seconds=round(time.perf_counter() - started, 3),
        )
    onnx_values = run_with_intermediates(model_path, paired, inputs)
    order, paired = _fx_comparisons(load_source(), inputs, opset, onnx_values, judging)
    diverging = [_node(name, found, paired) for name in order if not paired[name].passed]
    # The first whose inputs all passed introduced the error.
    origin = next(
        (d for d in diverging if all(p.passed for p in upstream(d.value, found, paired))),
        diverging[0] if diverging else None,
    )
    result = DivergenceRecord(
        against="pytorch",
        shape=shape,
        compared=len(paired),
        first=origin,
        following=[d for d in diverging if d is not origin][:FOLLOWING],
        **yardstick,
        seconds=round(time.perf_counter() - started, 3),
    )
    logger.info("divergence (pytorch): %s", result.summary())
    return result


def _node(
    name: str, found: dict[str, Producer], paired: dict[str, _Paired]
) -> NodeDivergenceRecord:
    inputs = upstream(name, found, paired)
    own = paired[name].budget
    figures = (
        {}
        if own is None
        else {
            "error_ratio": own.ratio,
            "onnx_max": own.onnx_max,
            "onnx_rms": own.onnx_rms,
            "pytorch_max": own.pytorch_max,
            "pytorch_rms": own.pytorch_rms,
            "input_error_ratio": max((p.budget.ratio for p in inputs if p.budget), default=0.0),
        }
    )
    return found[name].divergence(
        name,
        paired[name].found,
        max((p.found.max_abs_diff for p in inputs), default=0.0),
        **figures,
    )
