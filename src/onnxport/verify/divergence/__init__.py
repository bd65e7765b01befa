"""Say where the numbers part ways: the first diverging operation of a failed model, against
PyTorch (`pytorch`) or, for a variant, against the fp32 ONNX model (`variant`).

Both run on a single input (batch 1), so memory stays bounded by one forward pass, and both
compare values with `verify.compare`, the comparison validation uses. A search that cannot
run is logged and returns None: a diagnostic never hides the failure it explains.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from onnxport.artifact.records.divergence import DivergenceRecord
from onnxport.artifact.records.validation import OutputComparisonRecord, ValidationRecord
from onnxport.verify.divergence.pytorch import divergence_from_pytorch
from onnxport.verify.divergence.variant import divergence_from_base
from onnxport.verify.validate import Judging, Reference

__all__ = ["failing_input", "fp32_divergence", "variant_divergence"]

logger = logging.getLogger(__name__)


def failing_input(
    references: Sequence[Reference], validation: ValidationRecord
) -> dict[str, np.ndarray]:
    """Batch 1 of the reference input where the first failing output erred most: by the
    ratio when the error budget judged it, else by the absolute difference."""
    failing = [c for c in validation.outputs.values() if not c.passed]
    shape = tuple(_worst_shape(failing[0])) if failing else references[-1].shape
    reference = next((r for r in references if tuple(r.shape) == shape), references[-1])
    return {k: v[:1] for k, v in reference.inputs.items()}


def _worst_shape(output: OutputComparisonRecord) -> list[int]:
    if output.max_error_ratio is not None and output.budget:
        return max(output.budget, key=lambda b: b.ratio).shape
    return output.worst_shape


def fp32_divergence(
    load_source: Callable[[], object],
    model_path: Path,
    references: Sequence[Reference],
    validation: ValidationRecord,
    *,
    opset: int,
) -> DivergenceRecord | None:
    """Where a failed fp32 model parts ways with PyTorch, judged by the yardstick that
    judged it (`validation`: the error budget or the tolerance). The source is loaded again
    (`load_source`): the pipeline frees the PyTorch model before validation, and a failure
    can afford the reload."""
    try:
        return divergence_from_pytorch(
            load_source,  # type: ignore[arg-type]
            model_path,
            failing_input(references, validation),
            opset=opset,
            judging=Judging.recorded(validation),
        )
    except Exception as e:  # a diagnostic must never hide the validation error itself
        logger.warning("could not find where it diverges: %s: %s", type(e).__name__, e)
        return None


def variant_divergence(
    base: Path, variant: Path, references: Sequence[Reference], validation: ValidationRecord
) -> DivergenceRecord | None:
    """Where a failed variant loses the most against the model it was made from."""
    try:
        return divergence_from_base(
            base,
            variant,
            failing_input(references, validation),
            tolerance=Judging.recorded(validation).tolerance,
        )
    except Exception as e:  # a diagnostic must never hide the gate failure itself
        logger.warning("could not find where the variant diverges: %s: %s", type(e).__name__, e)
        return None
