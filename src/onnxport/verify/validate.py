"""Prove that an ONNX model computes what the PyTorch model computes.

Each variant runs in ONNX Runtime on several input shapes (batch 1, and sequence lengths other
than the export example, which is what proves the dynamic axes), against PyTorch outputs
computed once. Per output: max absolute and relative difference against a tolerance; per
task: an agreement figure (argmax agreement, cosine similarity) against a minimum.
The result says whether it passed; the pipeline turns a failure into an error, never a warning.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from onnxport.artifact.records.validation import (
    ErrorBudgetRecord,
    OutputComparisonRecord,
    TaskAgreementRecord,
    ValidationRecord,
    YardstickRecord,
)
from onnxport.errors import one_line
from onnxport.names import Variant
from onnxport.request.validation_config import DEFAULT_MIN_TASK_AGREEMENT, Yardstick
from onnxport.tasks import TASKS, AgreementMetric, Task
from onnxport.verify.compare import (
    ErrorBudget,
    TensorComparison,
    Tolerance,
    compare,
    error_budget,
)
from onnxport.verify.evaluation import Evaluation, metric_failure
from onnxport.verify.generation import GenerationProof, generation_failure
from onnxport.verify.next_token import NextTokenGate
from onnxport.verify.next_token import failures as next_token_failures
from onnxport.verify.runtime import RUNTIME_ERRORS, create_session, declared_inputs, run_session
from onnxport.verify.shapes import describe_shapes, refusal_reason

logger = logging.getLogger(__name__)


# Elementwise tolerances per variant. fp32 must match closely; quantized variants are judged
# by the task-level gate, their elementwise figures are recorded for the report.
DEFAULT_TOLERANCES: dict[Variant, Tolerance] = {
    Variant.FP32: Tolerance(atol=1e-4, rtol=1e-3),
    Variant.FP16: Tolerance(atol=5e-2, rtol=5e-2),
    Variant.INT8: Tolerance(atol=5e-1, rtol=5e-1),
    Variant.INT8_STATIC: Tolerance(atol=5e-1, rtol=5e-1),
    Variant.INT4: Tolerance(atol=5e-1, rtol=5e-1),
    Variant.INT8_WEIGHTS: Tolerance(atol=5e-1, rtol=5e-1),
}


@dataclass(frozen=True)
class Reference:
    """PyTorch's outputs for one input shape, computed once and compared with every variant."""

    shape: tuple[int, int]
    """(batch, size) as the validation settings give it; the inputs' shapes are their own."""
    inputs: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]
    exact: dict[str, np.ndarray] | None = None
    """The same model's outputs in float64 on the same inputs (the exact answer the error
    budget measures against); None where float64 did not run."""
    padding: dict[str, np.ndarray] | None = None
    """Per output, the elements that are padding (`Source.padding`), set to 0 in every value
    compared: what a model computes there is arbitrary and no user reads it."""

    def unpadded(self, name: str, value: np.ndarray) -> np.ndarray:
        """`value` of output `name` with its padding set to 0."""
        where = self.padding.get(name) if self.padding is not None else None
        if where is None or value.ndim != where.ndim:
            return value
        return np.where(where, np.zeros((), value.dtype), value)

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


@dataclass(frozen=True)
class _Row:
    """One output at one reference: the tolerance's figures, the budget's, the verdict."""

    shape: tuple[int, int]
    found: TensorComparison
    budget: ErrorBudget | None
    passed: bool


Rows = dict[str, list[_Row]]
_MISSING = TensorComparison(np.inf, np.inf, False)


def _compare_outputs(
    ref: Reference,
    actual: dict[str, np.ndarray] | None,
    judge: Judging,
    rows: Rows,
) -> list[str]:
    """Compare each output with PyTorch's into `rows`; the failures to report. No answer at
    all (`None`: the graph refused the input) fails every output, said once by the caller."""
    failures = []
    for name, expected in ref.outputs.items():
        if actual is None or name not in actual:
            if actual is not None:
                failures.append(f"output '{name}' is missing from the ONNX model")
            rows.setdefault(name, []).append(_Row(ref.shape, _MISSING, None, False))
            continue
        value, expected = ref.unpadded(name, actual[name]), ref.unpadded(name, expected)
        found = compare(value, expected, judge.tolerance)
        exact = ref.exact.get(name) if ref.exact is not None else None
        if exact is not None:
            budget = error_budget(value, expected, ref.unpadded(name, exact))
        else:
            budget = None
        passed = judge.passes(found, budget)
        if judge.by_budget and budget is not None:
            failure = (
                f"output '{name}' at shape {ref.describe()}: its error against PyTorch in "
                f"float64 is {budget.ratio:.3g}x PyTorch's own float32 error (max "
                f"{budget.onnx_max:.3g} vs {budget.pytorch_max:.3g}, RMS {budget.onnx_rms:.3g} "
                f"vs {budget.pytorch_rms:.3g}), above validation.max_error_ratio "
                f"{judge.max_error_ratio:g}"
            )
        else:
            failure = (
                f"output '{name}' at shape {ref.describe()}: max abs diff "
                f"{found.max_abs_diff:.3g}, max rel diff {found.max_rel_diff:.3g} exceed "
                f"atol {judge.tolerance.atol:g} / rtol {judge.tolerance.rtol:g}"
            )
        rows.setdefault(name, []).append(_Row(ref.shape, found, budget, passed))
        if not passed and judge.elementwise:
            failures.append(failure)
    return failures


@dataclass(frozen=True)
class Judging:
    """How a model's values are judged against PyTorch's.

    Args:
        tolerance: the elementwise tolerance (`verify.compare.compare`), which judges when
            `max_error_ratio` is None or float64 did not run.
        max_error_ratio: the error budget's limit (`verify.compare.error_budget`).
        elementwise: whether a breach fails the model (fp32: yes; quantized variants are
            gated by task agreement alone, their figures recorded).
        reason: why the tolerance judges although a budget was possible (the record says it).
    """

    tolerance: Tolerance
    max_error_ratio: float | None = None
    elementwise: bool = True
    reason: str | None = None

    @property
    def by_budget(self) -> bool:
        return self.max_error_ratio is not None

    def passes(self, found: TensorComparison, budget: ErrorBudget | None) -> bool:
        """Whether a value passes: by the budget when it judges and float64 ran (`budget`),
        else by the tolerance (`found`)."""
        if self.by_budget and budget is not None:
            return budget.ratio <= self.max_error_ratio  # type: ignore[operator]
        return found.within

    @classmethod
    def recorded(cls, validation: ValidationRecord | None) -> Judging:
        """How `validation` judged the values, read back from the record (the fp32 tolerance
        for a record without outputs), so that the divergence search uses the same yardstick."""
        outputs = list(validation.outputs.values()) if validation is not None else []
        if validation is None or not outputs:
            return cls(DEFAULT_TOLERANCES[Variant.FP32])
        limit = next((o.max_error_ratio for o in outputs if o.max_error_ratio is not None), None)
        return cls(
            Tolerance(outputs[0].atol, outputs[0].rtol),
            max_error_ratio=limit,
            elementwise=validation.elementwise_gate,
        )

    def record(self, references: list[Reference]) -> YardstickRecord:
        if self.by_budget and all(r.exact is not None for r in references):
            return YardstickRecord(mode=Yardstick.BUDGET.value)
        return YardstickRecord(mode=Yardstick.TOLERANCE.value, reason=self.reason)


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
    judging: Judging = Judging(DEFAULT_TOLERANCES[Variant.FP32]),
    min_agreement: float = DEFAULT_MIN_TASK_AGREEMENT,
    evaluation: Evaluation | None = None,
    generation: GenerationProof | None = None,
    next_token: NextTokenGate | None = None,
) -> ValidationRecord:
    """Compare `model_path` in ONNX Runtime with the PyTorch `references`.

    Args:
        model_path: the ONNX file to check.
        references: PyTorch outputs from `compute_references`.
        task: decides the agreement metric.
        judging: how the values are judged (the error budget or the tolerance).
        min_agreement: the task-level gate.
        evaluation: a labelled set whose task metric must stay near PyTorch's, scored in
            the same session.
        generation: PyTorch's greedy generations, which the model's must equal token for
            token (a text-generation model), generated in the same session.
        next_token: a language model variant's gate on real text, run in the same session.
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
        failures += _compare_outputs(ref, actual, judging, per_output)
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
    generated = generation.judge(session) if generation is not None and not refused else None
    if generated is not None and not generated.passed:
        failures.append(generation_failure(generated))
    on_text = next_token.judge(session) if next_token is not None and not refused else None
    if on_text is not None:
        failures += next_token_failures(on_text)
    record = ValidationRecord(
        passed=not failures,
        shapes=[list(r.shape) for r in references],
        input_shapes=[r.input_shapes() for r in references],
        graph_inputs=inputs,
        runtime_errors=runtime_errors,
        outputs={name: _output_record(rows, judging) for name, rows in per_output.items()},
        yardstick=judging.record(references),
        task_agreement=TaskAgreementRecord(
            metric=metric.value, value=value, minimum=min_agreement, passed=value >= min_agreement
        ),
        task_metric=task_metric,
        generation=generated,
        next_token=on_text,
        elementwise_gate=judging.elementwise,
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


def _output_record(rows: list[_Row], judging: Judging) -> OutputComparisonRecord:
    worst = max(rows, key=lambda r: r.found.max_abs_diff)
    budgets = [
        ErrorBudgetRecord(shape=list(r.shape), **dataclasses.asdict(r.budget))
        for r in rows
        if r.budget is not None
    ]
    by_budget = judging.by_budget and len(budgets) == len(rows)
    return OutputComparisonRecord(
        max_abs_diff=worst.found.max_abs_diff,
        max_rel_diff=max(r.found.max_rel_diff for r in rows),
        atol=judging.tolerance.atol,
        rtol=judging.tolerance.rtol,
        passed=all(r.passed for r in rows),
        worst_shape=list(worst.shape),
        budget=budgets,
        max_error_ratio=judging.max_error_ratio if by_budget and judging.elementwise else None,
    )
