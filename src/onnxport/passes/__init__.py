"""Passes: each turns one ONNX file into a new variant, composable and named.

`optimize_passes(config)` and `quantization_pass(config)` say which passes make which
published variant: the fp32 model gets the optimize pass (when asked); a quantized or fp16
variant is made from the graph as exported (see `pipeline.convert` for why).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from onnxport.passes.base import (
    OnnxPass,
    PassContext,
    apply_pass,
    apply_sequence,
    count_nodes,
)
from onnxport.passes.calibration import calibration, gate_texts
from onnxport.passes.candidates import quantize_search
from onnxport.passes.optimize import OptimizePass
from onnxport.passes.quantize import (
    DynamicInt8Pass,
    Fp16Pass,
    StaticInt8Pass,
    check_nodes_to_exclude,
)
from onnxport.passes.weight_only import Int4Pass, Int8WeightsPass
from onnxport.request.config import ConversionConfig
from onnxport.request.export_config import Exporter, OptimizeLevel, Quantization
from onnxport.tasks import Task

if TYPE_CHECKING:  # sources import torch; the passes run without it
    from onnxport.sources.base import Source

__all__ = [
    "QUANTIZATION_PASSES",
    "DynamicInt8Pass",
    "Fp16Pass",
    "Int4Pass",
    "Int8WeightsPass",
    "OnnxPass",
    "OptimizePass",
    "PassContext",
    "StaticInt8Pass",
    "apply_pass",
    "apply_sequence",
    "check_nodes_to_exclude",
    "count_nodes",
    "optimize_passes",
    "pass_context",
    "quantization_pass",
]

QUANTIZATION_PASSES: dict[Quantization, type] = {
    Quantization.INT8: DynamicInt8Pass,
    Quantization.INT8_STATIC: StaticInt8Pass,
    Quantization.FP16: Fp16Pass,
    Quantization.INT4: Int4Pass,
    Quantization.INT8_WEIGHTS: Int8WeightsPass,
}


def optimize_passes(config: ConversionConfig) -> list[OnnxPass]:
    level = config.onnx.optimize
    return [] if level in (OptimizeLevel.NONE, OptimizeLevel.AUTO) else [OptimizePass(level)]


def quantization_pass(config: ConversionConfig) -> OnnxPass | None:
    cls = QUANTIZATION_PASSES.get(config.onnx.quantization)
    return cls() if cls else None


def pass_context(source: Source, exporter: Exporter, config: ConversionConfig) -> PassContext:
    """What the passes of this conversion need to know beyond the model file."""
    asked = config.onnx.quantization
    static = asked is Quantization.INT8_STATIC or (
        asked is Quantization.AUTO and any(s.static for s in quantize_search(source.task).settings)
    )
    return PassContext(
        exporter=exporter,
        model_type=source.model_type,
        num_heads=source.facts.num_heads,
        hidden_size=source.facts.hidden_size,
        max_positions=source.facts.max_positions,
        calibration=calibration(source, config) if static else None,
        settings=config.quantize,
        texts=gate_texts(source, config) if source.task is Task.TEXT_GENERATION else (),
    )
