"""Passes: each turns one ONNX file into a new variant, composable and named.

`optimize_passes(config)` and `quantization_pass(config)` say which passes make which
published variant: the fp32 model gets the optimize pass (when asked); a quantized or fp16
variant is made from the graph as exported (see `pipeline.convert` for why).
"""

from __future__ import annotations

from onnxport.config import ConversionConfig, OptimizeLevel, Quantization
from onnxport.passes.base import (
    OnnxPass,
    PassContext,
    PassResult,
    apply_pass,
    apply_sequence,
    count_nodes,
    remove_model,
)
from onnxport.passes.optimize import OptimizePass
from onnxport.passes.quantize import DynamicInt8Pass, Fp16Pass, StaticInt8Pass

__all__ = [
    "QUANTIZATION_PASSES",
    "DynamicInt8Pass",
    "Fp16Pass",
    "OnnxPass",
    "OptimizePass",
    "PassContext",
    "PassResult",
    "StaticInt8Pass",
    "apply_pass",
    "apply_sequence",
    "count_nodes",
    "optimize_passes",
    "quantization_pass",
    "remove_model",
]

QUANTIZATION_PASSES: dict[Quantization, type] = {
    Quantization.INT8: DynamicInt8Pass,
    Quantization.INT8_STATIC: StaticInt8Pass,
    Quantization.FP16: Fp16Pass,
}


def optimize_passes(config: ConversionConfig) -> list[OnnxPass]:
    level = config.onnx.optimize
    return [] if level is OptimizeLevel.NONE else [OptimizePass(level)]


def quantization_pass(config: ConversionConfig) -> OnnxPass | None:
    cls = QUANTIZATION_PASSES.get(config.onnx.quantization)
    return cls() if cls else None
