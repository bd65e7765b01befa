"""Weight-only quantization, the decoder LM variants: each MatMul weight stored in 4 bits
(`int4`) or 8 bits (`int8-weights`) per block of `quantize.block_size` values, with a scale
(and a zero point, unless `quantize.symmetric`), run by ONNX Runtime's MatMulNBits;
activations stay in float (`onnxruntime.quantization`'s `MatMulNBitsQuantizer`). Dynamic
int8 quantizes the activations too, per tensor: a decoder's outlier activations then cost
it most of its next-token agreement (SmolLM2-135M: 0.57), where 8-bit weights keep 0.97.

The vocabulary projection (the MatMul that makes `logits`) is stored as `quantize.lm_head`
says. A model with tied embeddings feeds it the embedding's weight through a Transpose, which
the quantizer passes over (it quantizes initializers only): the transposed weight is then
made an initializer of its own, quantized, while the embedding's Gather keeps the float one.

A decoder's attention is fused for ONNX Runtime first (`passes.decoder_fusion`: one
GroupQueryAttention per layer, its Q/K/V and gate/up MatMuls merged), when every layer fuses
and no `quantize.nodes_to_exclude` names nodes; the pass records what it fused.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import onnx
from onnx import numpy_helper

from onnxport.passes.base import PassContext, save_like
from onnxport.passes.decoder_fusion import fuse_decoder
from onnxport.passes.quantize import check_nodes_to_exclude, quantized_nodes
from onnxport.request.quantize_config import LmHead, QuantizeConfig

logger = logging.getLogger(__name__)

LOGITS = "logits"


def _lm_head(graph: onnx.GraphProto) -> onnx.NodeProto | None:
    """The MatMul that writes the graph's `logits` output, if there is one."""
    outputs = {o.name for o in graph.output if o.name.endswith(LOGITS)}
    return next((n for n in graph.node if n.op_type == "MatMul" and n.output[0] in outputs), None)


def _untie(graph: onnx.GraphProto, head: onnx.NodeProto) -> bool:
    """Give `head` its weight as an initializer when a Transpose of one feeds it; whether it
    did. The Transpose is removed once nothing else reads it."""
    initializers = {i.name: i for i in graph.initializer}
    if head.input[1] in initializers:
        return False
    transpose = next((n for n in graph.node if head.input[1] in n.output), None)
    if transpose is None or transpose.op_type != "Transpose":
        return False
    if transpose.input[0] not in initializers:
        return False
    perm = next((list(a.ints) for a in transpose.attribute if a.name == "perm"), None)
    weight = numpy_helper.to_array(initializers[transpose.input[0]]).transpose(perm)
    name = f"{head.name}.weight"
    graph.initializer.append(numpy_helper.from_array(weight.copy(), name))
    head.input[1] = name
    if not any(transpose.output[0] in n.input for n in graph.node):
        graph.node.remove(transpose)
    return True


def _quantizer() -> type:
    """`MatMulNBitsQuantizer`, imported without the root logging setup its module makes.

    The module calls `logging.basicConfig(level=INFO)` on import, which in a program without
    a root handler installs one and then prints a line per node of the graph (and leaves the
    caller's own logging setup without effect). A handler already there makes it do nothing.
    """
    root = logging.getLogger()
    stand_in = None if root.handlers else logging.NullHandler()
    if stand_in is not None:
        root.addHandler(stand_in)
    try:
        from onnxruntime.quantization import matmul_nbits_quantizer
    finally:
        if stand_in is not None:
            root.removeHandler(stand_in)
    logging.getLogger(matmul_nbits_quantizer.__name__).setLevel(logging.WARNING)
    return matmul_nbits_quantizer.MatMulNBitsQuantizer


def _quantize(
    model: onnx.ModelProto, settings: QuantizeConfig, *, bits: int, exclude: set[str]
) -> onnx.ModelProto:
    quantizer = _quantizer()(
        model,
        bits=bits,
        block_size=settings.block_size,
        is_symmetric=settings.symmetric,
        accuracy_level=settings.accuracy_level,
        nodes_to_exclude=sorted(exclude),
        op_types_to_quantize=("MatMul",),
    )
    quantizer.process()
    return quantizer.model.model


class WeightOnlyPass:
    """MatMul weights to `bits` bits per block (the vocabulary projection as `lm_head` says:
    in float, in 8 bits, or in `bits` like the others)."""

    bits = 4
    name = "quantize-weights"

    def run(self, model: Path, output: Path, context: PassContext) -> dict[str, Any]:
        settings = context.settings
        check_nodes_to_exclude(model, settings.nodes_to_exclude)
        proto = onnx.load(str(model))
        head = _lm_head(proto.graph)
        untied = False
        excluded = set(settings.nodes_to_exclude)
        if head is not None and settings.lm_head is not LmHead.FLOAT:
            untied = _untie(proto.graph, head)
        fusions = None
        # Fused after the head is untied (else its Transpose and MatMul fuse into a
        # FusedMatMul the quantizer passes over); not when the user names nodes to keep.
        if context.max_positions and not settings.nodes_to_exclude:
            fused = fuse_decoder(proto, max_positions=context.max_positions)
            if fused is not None:
                proto, fusions = fused
                head = _lm_head(proto.graph)
        # The head is quantized with the others unless it is kept in float, or in 8 bits
        # when the others take 4 (a pass of its own below).
        kept_apart = (LmHead.FLOAT,) if self.bits == 8 else (LmHead.FLOAT, LmHead.INT8)
        if head is not None and settings.lm_head in kept_apart:
            excluded.add(head.name)
        proto = _quantize(proto, settings, bits=self.bits, exclude=excluded)
        if head is not None and settings.lm_head is LmHead.INT8 and self.bits != 8:
            others = {n.name for n in proto.graph.node if n.name != head.name}
            proto = _quantize(proto, settings, bits=8, exclude=others)
        save_like(proto, output, model)
        return {
            "mode": "weight-only",
            "bits": self.bits,
            "block_size": settings.block_size,
            "symmetric": settings.symmetric,
            "accuracy_level": settings.accuracy_level,
            "lm_head": settings.lm_head.value if head is not None else None,
            "lm_head_untied": untied,
            "decoder_fusion": fusions,
            "nodes_to_exclude": list(settings.nodes_to_exclude),
            "quantized_nodes": quantized_nodes(output),
        }


class Int4Pass(WeightOnlyPass):
    name = "quantize-int4"
    bits = 4


class Int8WeightsPass(WeightOnlyPass):
    name = "quantize-int8-weights"
    bits = 8
