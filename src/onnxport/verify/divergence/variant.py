"""The node of a quantized or float16 variant that loses the most against the fp32 ONNX model
it was made from: the one to leave in float (`quantize.nodes_to_exclude`).

Values that keep their names in both graphs are compared; the node whose output loses the
most (relative L2 error) over what its inputs had already lost is named.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx

from onnxport.artifact.records import DivergenceRecord, NodeDivergenceRecord
from onnxport.verify.compare import Tolerance, compare, relative_l2
from onnxport.verify.divergence.graph import (
    producers,
    run_with_intermediates,
    structure,
    upstream,
)
from onnxport.verify.divergence.pytorch import FOLLOWING

logger = logging.getLogger(__name__)


def _changed_nodes(fp32: onnx.ModelProto, variant: onnx.ModelProto) -> set[str]:
    """fp32 nodes that the variant quantized or converted: the candidates. A dynamic int8
    model replaces them (another op type); a QDQ model keeps them and feeds them through
    DequantizeLinear."""
    made_by = {out: n.op_type for n in variant.graph.node for out in n.output}
    quantized = {
        (n.name, n.op_type)
        for n in variant.graph.node
        if any(made_by.get(i) == "DequantizeLinear" for i in n.input)
    }
    kept = {(n.name, n.op_type) for n in variant.graph.node}
    return {
        n.name
        for n in fp32.graph.node
        if (n.name, n.op_type) not in kept or (n.name, n.op_type) in quantized
    }


def localize_variant(
    fp32_path: Path,
    variant_path: Path,
    inputs: Mapping[str, np.ndarray],
    *,
    tolerance: Tolerance,
) -> DivergenceRecord:
    """The node of the variant whose output error (relative to the fp32 model's value)
    grows the most over its inputs' error."""
    started = time.perf_counter()
    shape = list(next(iter(inputs.values())).shape)
    fp32, variant = structure(fp32_path), structure(variant_path)
    found = producers(fp32)
    in_variant = producers(variant)
    names = [n for n in found if n in in_variant]
    expected = run_with_intermediates(fp32_path, names, inputs)
    actual = run_with_intermediates(variant_path, [n for n in names if n in expected], inputs)
    order = [o for n in fp32.graph.node for o in n.output if o in expected and o in actual]
    lost = {name: relative_l2(actual[name], expected[name]) for name in order}
    changed = _changed_nodes(fp32, variant)
    ranked = []
    for name in order:  # topological order
        if found[name].node not in changed:
            continue
        before = max(upstream(name, found, lost), default=0.0)
        if lost[name] - before <= 0:
            continue
        producer = found[name]
        inputs_abs = max(
            (
                compare(actual[v], expected[v], tolerance).max_abs_diff
                for v in producer.inputs
                if v in lost
            ),
            default=0.0,
        )
        ranked.append(
            producer.divergence(
                name,
                compare(actual[name], expected[name], tolerance),
                inputs_abs,
                relative_l2=lost[name],
                input_relative_l2=before,
            )
        )

    def growth(d: NodeDivergenceRecord) -> float:
        return (d.relative_l2 or 0.0) - (d.input_relative_l2 or 0.0)

    # Errors compound downstream, so the largest growth can sit after the culprit: name the
    # first node (in order) whose own growth is within half of the largest.
    largest = max((growth(d) for d in ranked), default=0.0)
    first = next((d for d in ranked if growth(d) >= max(largest / 2, 1e-3)), None)
    following = sorted((d for d in ranked if d is not first), key=growth, reverse=True)
    result = DivergenceRecord(
        against="fp32-onnx",
        shape=shape,
        compared=len(order),
        first=first,
        following=following[:FOLLOWING],
        atol=tolerance.atol,
        rtol=tolerance.rtol,
        suggestion=f"quantize.nodes_to_exclude: [{first.node}]" if first else None,
        exclude=[first.node] if first else [],
        seconds=round(time.perf_counter() - started, 3),
    )
    logger.info("localization (variant): %s", result.summary())
    return result
