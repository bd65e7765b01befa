"""Graph optimization for ONNX Runtime, at a level chosen in config.

- `basic`: ONNX Runtime's own basic graph optimizations (constant folding, redundant node
  elimination), saved offline; provider-independent.
- `extended`: operator fusions (attention, skip/layer norm, GELU, embedding layer norm):
  onnxscript's `ort_fusions` for dynamo-exported graphs, `onnxruntime.transformers`'
  optimizer for TorchScript-exported ones. The result uses ONNX Runtime contrib operators.

Which level is fastest is measured (benchmarks/), not assumed: a fused graph is not always
faster on a 2-core CPU than the plain graph under ORT's session-time optimizations.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

import onnx
import onnxruntime as ort

from onnxport.passes.base import PassContext, has_external_data
from onnxport.request.export_config import Exporter, OptimizeLevel
from onnxport.verify.runtime import create_session, session_options

logger = logging.getLogger(__name__)


def _ort_offline(model: Path, output: Path, level: ort.GraphOptimizationLevel) -> None:
    entries = {}
    if has_external_data(model):
        entries = {
            "session.optimized_model_external_initializers_file_name": output.name + ".data",
            "session.optimized_model_external_initializers_min_size_in_bytes": "1024",
        }
    options = session_options(
        optimization=level, optimized_model_path=output, config_entries=entries
    )
    create_session(model, options)  # writes the optimized graph as it loads


def _fuse_dynamo(model: Path, output: Path) -> dict[str, Any]:
    import onnx_ir as ir
    from onnxscript.rewriter.ort_fusions import optimize_for_ort

    ir_model = ir.load(str(model))
    fused, counts = optimize_for_ort(ir_model)
    external = has_external_data(model)
    ir.save(fused, str(output), external_data=output.name + ".data" if external else None)
    return {"fusions": {k: v for k, v in counts.items() if v}}


def _fuse_torchscript(model: Path, output: Path, context: PassContext) -> dict[str, Any]:
    from onnxruntime.transformers.optimizer import optimize_model

    optimized = optimize_model(
        str(model),
        model_type="bert",
        num_heads=context.num_heads,
        hidden_size=context.hidden_size,
        opt_level=0,
    )
    optimized.save_model_to_file(str(output), use_external_data_format=has_external_data(model))
    return {"fusions": {k: v for k, v in optimized.get_fused_operator_statistics().items() if v}}


CONTRIB_DOMAIN = "com.microsoft"


def fused_operators(model: Path) -> dict[str, int]:
    """The ONNX Runtime contrib operators in a graph: what the fusions made (Attention,
    SkipLayerNormalization, Gelu, ...), counted."""
    graph = onnx.load(str(model), load_external_data=False).graph
    return dict(Counter(n.op_type for n in graph.node if n.domain == CONTRIB_DOMAIN))


class OptimizePass:
    def __init__(self, level: OptimizeLevel) -> None:
        self.level = level
        self.name = f"optimize-{level.value}"

    def run(self, model: Path, output: Path, context: PassContext) -> dict[str, Any]:
        if self.level is OptimizeLevel.BASIC:
            _ort_offline(model, output, ort.GraphOptimizationLevel.ORT_ENABLE_BASIC)
            details: dict[str, Any] = {"level": "basic", "engine": "onnxruntime"}
        elif context.exporter is Exporter.DYNAMO:
            details = {"level": self.level.value, "engine": "onnxscript.rewriter.ort_fusions"}
            details.update(_fuse_dynamo(model, output))
        else:
            details = {"level": self.level.value, "engine": "onnxruntime.transformers.optimizer"}
            details.update(_fuse_torchscript(model, output, context))
        return {**details, "fused_operators": fused_operators(output)}
