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

from onnxport.artifact.records.divergence import DivergenceRecord, NodeDivergenceRecord
from onnxport.verify.compare import Tolerance, compare, relative_l2
from onnxport.verify.divergence.graph import (
    producers,
    run_with_intermediates,
    structure,
    upstream,
)
from onnxport.verify.divergence.pytorch import FOLLOWING

logger = logging.getLogger(__name__)


def changed_nodes(fp32: onnx.ModelProto, variant: onnx.ModelProto) -> set[str]:
    """fp32 nodes that the variant quantized or converted: the only ones that leaving in
    float (`quantize.nodes_to_exclude`) changes. A dynamic int8 model replaces them (another
    op type). A QDQ model keeps them and feeds all their inputs through DequantizeLinear;
    it also feeds every other reader of a quantized activation from the same
    DequantizeLinear (a residual Add, a MatMul left in float that shares its input), which
    it did not quantize. So a kept node counts when all its inputs but integer constants
    come through DequantizeLinear and its op type is one whose weights were quantized."""
    made_by = {out: n for n in variant.graph.node for out in n.output}
    initializers = {i.name: i.data_type for i in variant.graph.initializer}
    integer = {
        name
        for name, dtype in initializers.items()
        if not np.issubdtype(onnx.helper.tensor_dtype_to_np_dtype(dtype), np.floating)
    }

    def dequantized(value: str) -> bool:
        producer = made_by.get(value)
        return producer is not None and producer.op_type == "DequantizeLinear"

    weighted = {
        n.op_type
        for n in variant.graph.node
        if any(dequantized(i) and made_by[i].input[0] in initializers for i in n.input)
    }
    quantized = {
        (n.name, n.op_type)
        for n in variant.graph.node
        if n.op_type in weighted
        and any(dequantized(i) for i in n.input)
        and all(dequantized(i) or i in integer or not i for i in n.input)
    }
    kept = {(n.name, n.op_type) for n in variant.graph.node}
    return {
        n.name
        for n in fp32.graph.node
        if (n.name, n.op_type) not in kept or (n.name, n.op_type) in quantized
    }


def divergence_from_base(
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
    changed = changed_nodes(fp32, variant)
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
        note=None
        if first
        else "no node the variant quantized loses more than its inputs had lost: there is "
        "no node to leave in float",
        seconds=round(time.perf_counter() - started, 3),
    )
    logger.info("divergence (variant): %s", result.summary())
    return result
