"""Prove that an ONNX model computes what the PyTorch model computes.

Each variant runs in ONNX Runtime on several input shapes (batch 1, and sequence lengths other
than the export example, which is what proves the dynamic axes), against PyTorch outputs
computed once. Per output: max absolute and relative difference against a tolerance; per
task: an agreement figure (argmax agreement, cosine similarity) against a minimum.
The result says whether it passed; the pipeline turns a failure into an error, never a warning.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from onnxport.artifact.records import (
    OutputComparisonRecord,
    TaskAgreementRecord,
    ValidationRecord,
)
from onnxport.errors import one_line
from onnxport.request.config import DEFAULT_MIN_TASK_AGREEMENT
from onnxport.tasks import TASKS, AgreementMetric, Task
from onnxport.verify.compare import Tolerance, compare
from onnxport.verify.evaluation import Evaluation, metric_failure
from onnxport.verify.runtime import RUNTIME_ERRORS, create_session, declared_inputs, run_session
from onnxport.verify.shapes import describe_shapes, refusal_reason

logger = logging.getLogger(__name__)


# Elementwise tolerances per variant. fp32 must match closely; quantized variants are judged
# by the task-level gate, their elementwise figures are recorded for the report.
DEFAULT_TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(atol=1e-4, rtol=1e-3),
    "fp16": Tolerance(atol=5e-2, rtol=5e-2),
    "int8": Tolerance(atol=5e-1, rtol=5e-1),
    "int8-static": Tolerance(atol=5e-1, rtol=5e-1),
}


@dataclass(frozen=True)
class Reference:
    """PyTorch's outputs for one input shape, computed once and compared with every variant."""

    shape: tuple[int, int]
    """(batch, size) as the validation settings give it; the inputs' shapes are their own."""
    inputs: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]

    def input_shapes(self) -> dict[str, list[int]]:
        """The full shape of every input: `[2, 3, 224, 224]` for an image batch."""
        return {name: list(value.shape) for name, value in self.inputs.items()}

    def describe(self) -> str:
        """The inputs' shape for a message: `[2, 37]`, `[2, 3, 224, 224]`; inputs of
        different shapes each by name."""
        return describe_shapes(self.input_shapes()) or str(list(self.shape))


def _primary_outputs(output_names: list[str]) -> list[str]:
    logits = [n for n in output_names if n.endswith("logits")]
    return logits or output_names[:1]


def _comparable(name: str, ref: Reference, actual: dict[str, np.ndarray]) -> bool:
    """Whether an output exists with the reference's shape; else it is a failure already
    recorded elementwise, and its agreement is the worst possible."""
    return name in actual and actual[name].shape == ref.outputs[name].shape


def _argmax_agreement(task: Task, ref: Reference, actual: dict[str, np.ndarray]) -> tuple[int, int]:
    agree = total = 0
    mask = ref.inputs.get("attention_mask")
    for name in _primary_outputs(list(ref.outputs)):
        expected = ref.outputs[name].argmax(axis=-1)
        if not _comparable(name, ref, actual):  # every position counts as a disagreement
            total += int(expected.size)
            continue
        got = actual[name].argmax(axis=-1)
        same = expected == got
        if TASKS[task].token_level and mask is not None and same.shape == mask.shape:
            same = same[mask.astype(bool)]
        agree += int(same.sum())
        total += int(same.size)
    return agree, total


def _cosine(ref: Reference, actual: dict[str, np.ndarray]) -> float:
    """Cosine similarity of mean-pooled embeddings (the sentence vectors users compare)."""
    name = _primary_outputs(list(ref.outputs))[0]
    if not _comparable(name, ref, actual):
        return -1.0  # the worst similarity there is
    expected, got = ref.outputs[name].astype(np.float64), actual[name].astype(np.float64)
    mask = ref.inputs.get("attention_mask")
    if expected.ndim == 3 and mask is not None:
        weights = mask[..., None].astype(np.float64)
        expected = (expected * weights).sum(1) / np.maximum(weights.sum(1), 1)
        got = (got * weights).sum(1) / np.maximum(weights.sum(1), 1)
    expected = expected.reshape(expected.shape[0], -1)
    got = got.reshape(got.shape[0], -1)
    dot = (expected * got).sum(1)
    norms = np.linalg.norm(expected, axis=1) * np.linalg.norm(got, axis=1)
    return float(np.min(dot / np.maximum(norms, 1e-12)))


Rows = dict[str, list[tuple[float, float, bool, tuple[int, int]]]]
"""Per output, per reference: max abs diff, max rel diff, within tolerance, the shape."""


def _compare_outputs(
    ref: Reference,
    actual: dict[str, np.ndarray] | None,
    tolerance: Tolerance,
    elementwise_gate: bool,
    rows: Rows,
) -> list[str]:
    """Compare each output with PyTorch's into `rows`; the failures to report. No answer at
    all (`None`: the graph refused the input) fails every output, said once by the caller."""
    failures = []
    for name, expected in ref.outputs.items():
        if actual is None or name not in actual:
            if actual is not None:
                failures.append(f"output '{name}' is missing from the ONNX model")
            rows.setdefault(name, []).append((np.inf, np.inf, False, ref.shape))
            continue
        found = compare(actual[name], expected, tolerance)
        rows.setdefault(name, []).append(
            (found.max_abs_diff, found.max_rel_diff, found.within, ref.shape)
        )
        if not found.within and elementwise_gate:
            failures.append(
                f"output '{name}' at shape {ref.describe()}: max abs diff "
                f"{found.max_abs_diff:.3g}, max rel diff {found.max_rel_diff:.3g} exceed "
                f"atol {tolerance.atol:g} / rtol {tolerance.rtol:g}"
            )
    return failures


def first_refusal(model_path: Path, references: list[Reference]) -> str | None:
    """Why `model_path` does not run the first of `references` it refuses (the shape named),
    or None when ONNX Runtime runs them all; the values are the gate's to judge."""
    session = create_session(model_path)
    for ref in references:
        try:
            run_session(session, ref.inputs)
        except RUNTIME_ERRORS as e:
            logger.info("the graph refuses %s: %s", ref.describe(), one_line(e, None))
            return f"at {ref.describe()}, {refusal_reason(declared_inputs(session), e)}"
    return None


def validate_model(
    model_path: Path,
    references: list[Reference],
    *,
    task: Task,
    tolerance: Tolerance = DEFAULT_TOLERANCES["fp32"],
    min_agreement: float = DEFAULT_MIN_TASK_AGREEMENT,
    elementwise_gate: bool = True,
    evaluation: Evaluation | None = None,
) -> ValidationRecord:
    """Compare `model_path` in ONNX Runtime with the PyTorch `references`.

    Args:
        model_path: the ONNX file to check.
        references: PyTorch outputs from `compute_references`.
        task: decides the agreement metric.
        tolerance: the elementwise tolerance (`verify.compare`).
        min_agreement: the task-level gate.
        elementwise_gate: whether an elementwise breach fails the validation (fp32: yes;
            quantized variants are gated by task agreement alone).
        evaluation: a labelled set whose task metric must stay near PyTorch's, scored in
            the same session.
    """
    started = time.perf_counter()
    session = create_session(model_path)
    inputs = declared_inputs(session)
    metric = TASKS[task].metric
    per_output: Rows = {}
    agree = total = 0
    cosines: list[float] = []
    failures: list[str] = []
    runtime_errors: list[str] = []
    refused: dict[str, list[str]] = {}  # why the graph refused, and at which shapes
    for ref in references:
        try:
            actual: dict[str, np.ndarray] | None = run_session(session, ref.inputs)
        except RUNTIME_ERRORS as e:
            refused.setdefault(refusal_reason(inputs, e), []).append(ref.describe())
            runtime_errors.append(f"at shape {ref.describe()}: {one_line(e, None)}")
            actual = None
        failures += _compare_outputs(ref, actual, tolerance, elementwise_gate, per_output)
        actual = actual or {}  # no answer disagrees everywhere
        if metric is AgreementMetric.ARGMAX:
            a, t = _argmax_agreement(task, ref, actual)
            agree, total = agree + a, total + t
        else:
            cosines.append(_cosine(ref, actual))
    value = (agree / total if total else 1.0) if metric is AgreementMetric.ARGMAX else min(cosines)
    failures[:0] = [
        f"the graph does not accept inputs of shape {' or '.join(shapes)}: {reason}"
        for reason, shapes in refused.items()
    ]
    if value < min_agreement and not refused:  # a refused input says it already
        failures.append(
            f"{metric.value} {value:.4f} is below the minimum {min_agreement:g} "
            f"over shapes [{', '.join(r.describe() for r in references)}]"
        )
    # A graph that refuses inputs would refuse the labelled set's too: the refusal says it all.
    task_metric = evaluation.judge(session) if evaluation is not None and not refused else None
    if task_metric is not None and not task_metric.passed:
        failures.append(metric_failure(task_metric))
    record = ValidationRecord(
        passed=not failures,
        shapes=[list(r.shape) for r in references],
        input_shapes=[r.input_shapes() for r in references],
        graph_inputs=inputs,
        runtime_errors=runtime_errors,
        outputs={
            name: OutputComparisonRecord(
                max_abs_diff=max(r[0] for r in rows),
                max_rel_diff=max(r[1] for r in rows),
                atol=tolerance.atol,
                rtol=tolerance.rtol,
                passed=all(r[2] for r in rows),
                worst_shape=list(max(rows, key=lambda r: r[0])[3]),
            )
            for name, rows in per_output.items()
        },
        task_agreement=TaskAgreementRecord(
            metric=metric.value, value=value, minimum=min_agreement, passed=value >= min_agreement
        ),
        task_metric=task_metric,
        elementwise_gate=elementwise_gate,
        failures=failures,
        seconds=round(time.perf_counter() - started, 3),
    )
    logger.info(
        "validated %s on %d shapes: %s, %s %.4f",
        model_path.name,
        len(references),
        "passed" if record.passed else "FAILED",
        metric.value,
        value,
    )
    return record
