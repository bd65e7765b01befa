"""The rules the gate applies to a model (`verify.gate.Rules`), built from the conversion's
settings: the fp32 model's (its values against PyTorch's, by the error budget or the
tolerance, and on the task) and a variant's (on the task, its values recorded). One place,
for a conversion and for `onnxport verify` alike.
"""

from __future__ import annotations

from onnxport.names import Variant
from onnxport.request.config import ConversionConfig
from onnxport.request.export_config import OptimizeLevel, Quantization
from onnxport.request.validation_config import Yardstick
from onnxport.verify.compare import Tolerance
from onnxport.verify.evaluation import Evaluation
from onnxport.verify.gate import Rules
from onnxport.verify.generation import GenerationProof
from onnxport.verify.next_token import NextTokenGate
from onnxport.verify.shapes import ExportOrigin
from onnxport.verify.validate import DEFAULT_TOLERANCES, Judging

# Remedies a refused variant's message offers, here and in the variant search's refusal.
SKIP_THE_VARIANT = "quantize.on_failure: skip to publish the fp32 model alone"
SMALLER_BLOCKS = "a smaller quantize.block_size"
FLOAT_LM_HEAD = "quantize.lm_head: float"


def fp32_rules(
    config: ConversionConfig,
    evaluation: Evaluation | None,
    origin: ExportOrigin | None = None,
    float64_skipped: str | None = None,
    generation: GenerationProof | None = None,
) -> Rules:
    """The fp32 model matches PyTorch element by element (its error against float64 within
    the budget, or the tolerance), and on the task. `origin`: how the graph was made, said
    on failure with what it suggests trying; `float64_skipped`: why PyTorch did not run in
    float64, when the budget was asked for; `generation`: PyTorch's greedy generations, which
    the model's must equal."""
    default = DEFAULT_TOLERANCES[Variant.FP32]
    validation = config.validation
    tolerance = Tolerance(
        atol=validation.atol or default.atol,
        rtol=default.rtol if validation.rtol is None else validation.rtol,
    )
    if validation.yardstick is Yardstick.BUDGET and float64_skipped is None:
        judging = Judging(tolerance, max_error_ratio=validation.max_error_ratio)
    elif validation.yardstick is Yardstick.BUDGET:
        judging = Judging(tolerance, reason=float64_skipped)
    else:
        asked = "validation.mode: tolerance" if validation.mode else "validation.atol/rtol set"
        judging = Judging(tolerance, reason=asked)
    remedies = [
        *(origin.remedies if origin else ()),
        "onnx.optimize: none" if config.onnx.optimize is not OptimizeLevel.NONE else "",
        "another opset",
    ]
    if evaluation is not None:
        remedies.append("a larger validation.max_metric_drop")
    return Rules(
        judging=judging,
        min_agreement=config.validation.min_task_agreement,
        evaluation=evaluation,
        generation=generation,
        remedies=tuple(r for r in remedies if r),
        origin=origin.sentence if origin else None,
    )


def variant_rules(
    config: ConversionConfig,
    evaluation: Evaluation | None,
    next_token: NextTokenGate | None = None,
) -> Rules:
    """A variant is judged on the task; its elementwise figures are recorded. A language
    model's (`next_token`) is judged on real text against the fp32 model instead: the argmax
    agreement on the few validation steps is recorded, and a few of those positions, which
    random weights or a quantized model may tie, would refuse a variant that keeps the text's
    next tokens and perplexity."""
    variant = config.onnx.quantization
    remedies = []
    if variant is Quantization.INT4:
        remedies += ["onnx.quantization: int8-weights", FLOAT_LM_HEAD]
    if variant in (Quantization.INT4, Quantization.INT8_WEIGHTS):
        remedies.append(SMALLER_BLOCKS)
    if variant in (Quantization.INT8, Quantization.INT8_STATIC):
        remedies.append(
            "onnx.quantization: auto, which searches int8 settings and nodes to leave in float"
        )
    if variant is Quantization.INT8:
        remedies.append("the calibrated onnx.quantization: int8-static")
    if not config.quantize.per_channel:
        remedies.append("quantize.per_channel: true")
    if not config.validation.localize:
        remedies.append("validation.localize: true to find which node to leave in float")
    remedies.append(SKIP_THE_VARIANT)
    return Rules(
        judging=Judging(DEFAULT_TOLERANCES[variant.variant], elementwise=False),
        min_agreement=0.0 if next_token else config.validation.min_task_agreement,
        evaluation=evaluation,
        next_token=next_token,
        on_failure=config.quantize.on_failure,
        remedies=tuple(remedies),
    )
