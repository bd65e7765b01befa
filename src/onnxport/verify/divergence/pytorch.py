"""The first ONNX node that parts ways with PyTorch.

The ONNX model runs once in ONNX Runtime with its intermediate values exposed as outputs,
and the PyTorch model runs under an FX interpreter over the program the dynamo exporter
traces (`torch.onnx`'s own verification interpreter pairs values the same way, but runs one
ONNX Runtime session per value; one run with every value exposed is what keeps a BERT-base
model within a minute). ONNX values are paired with FX nodes by the `pkg.torch.onnx.fx_node`
metadata the exporter writes on every node; the module path comes from its name scopes.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from onnxport.artifact.records import DivergenceRecord, NodeDivergenceRecord
from onnxport.verify.compare import TensorComparison, Tolerance, compare
from onnxport.verify.divergence.graph import (
    Producer,
    producers,
    run_with_intermediates,
    structure,
    upstream,
)

if TYPE_CHECKING:
    from onnxport.sources.base import Source

logger = logging.getLogger(__name__)

FOLLOWING = 5
"""How many further diverging nodes the record lists after the first."""


def _fx_comparisons(
    source: Source,
    inputs: Mapping[str, np.ndarray],
    opset: int,
    onnx_values: dict[str, np.ndarray],
    tolerance: Tolerance,
) -> tuple[list[str], dict[str, TensorComparison]]:
    """Run the program the dynamo exporter traces under an FX interpreter and compare each
    paired value as it is computed; each ONNX value is dropped once compared, so memory
    holds one forward pass, not two."""
    import torch

    from onnxport.export.strategies import dynamo_program
    from onnxport.export.workarounds import captured_stdout

    args = tuple(torch.from_numpy(inputs[name]) for name in source.input_names)
    with warnings.catch_warnings(), captured_stdout():
        warnings.simplefilter("ignore")
        module = dynamo_program(source, args, opset=opset, optimize=False).exported_program.module()
    order: list[str] = []
    comparisons: dict[str, TensorComparison] = {}

    class Comparer(torch.fx.Interpreter):
        def run_node(self, n):
            result = super().run_node(n)
            actual = onnx_values.pop(n.name, None)
            if actual is not None and isinstance(result, torch.Tensor):
                comparisons[n.name] = compare(actual, result.detach().float().numpy(), tolerance)
                order.append(n.name)
            return result

    with torch.inference_mode():
        Comparer(module).run(*args)
    return order, comparisons


def localize_against_pytorch(
    load_source: Callable[[], Source],
    model_path: Path,
    inputs: Mapping[str, np.ndarray],
    *,
    opset: int,
    tolerance: Tolerance,
) -> DivergenceRecord:
    """The first ONNX node (in topological order) whose output leaves the tolerance while
    the values feeding it were within it, comparing with the PyTorch model's values.

    `load_source` is called only after the ONNX side has run and released its session, so
    that the ONNX and PyTorch weights are never in memory together.
    """
    started = time.perf_counter()
    shape = list(next(iter(inputs.values())).shape)
    found = producers(structure(model_path))
    # A value named after its FX node is that node's result in both graphs.
    paired = [name for name, p in found.items() if p.fx_node == name]
    if not paired:
        return DivergenceRecord(
            against="pytorch",
            shape=shape,
            compared=0,
            first=None,
            atol=tolerance.atol,
            rtol=tolerance.rtol,
            note="the model carries no torch.onnx node metadata (exported with TorchScript?); "
            "localization needs the dynamo exporter",
            seconds=round(time.perf_counter() - started, 3),
        )
    onnx_values = run_with_intermediates(model_path, paired, inputs)
    order, comparisons = _fx_comparisons(load_source(), inputs, opset, onnx_values, tolerance)
    diverging = [_node(name, found, comparisons) for name in order if not comparisons[name].within]
    # The first whose inputs were all within tolerance introduced the error.
    origin = next(
        (d for d in diverging if all(c.within for c in upstream(d.value, found, comparisons))),
        diverging[0] if diverging else None,
    )
    result = DivergenceRecord(
        against="pytorch",
        shape=shape,
        compared=len(comparisons),
        first=origin,
        following=[d for d in diverging if d is not origin][:FOLLOWING],
        atol=tolerance.atol,
        rtol=tolerance.rtol,
        seconds=round(time.perf_counter() - started, 3),
    )
    logger.info("localization (pytorch): %s", result.summary())
    return result


def _node(
    name: str, found: dict[str, Producer], comparisons: dict[str, TensorComparison]
) -> NodeDivergenceRecord:
    inputs = upstream(name, found, comparisons)
    return found[name].divergence(
        name,
        comparisons[name],
        max((c.max_abs_diff for c in inputs), default=0.0),
    )
