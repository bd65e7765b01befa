"""The one accuracy gate, for the fp32 model and every variant alike.

A model made by the export and its passes is validated against PyTorch on every reference
shape (and, with a labelled set, scored on it in the same session). It passes, and the gate
returns its finished record; or it fails, and the gate says where it diverges (`divergence_search`)
and either raises, publishing nothing, or (`on_failure: skip`: a variant with
`quantize.on_failure: skip`, a candidate of a search) returns it as not published. The gate
judges files; it does not remove them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from onnxport.artifact.files import data_file_of
from onnxport.artifact.records.divergence import DivergenceRecord
from onnxport.artifact.records.export import PassRecord
from onnxport.artifact.records.outputs import OutputRecord
from onnxport.artifact.records.validation import ValidationRecord
from onnxport.errors import ValidationError
from onnxport.names import Variant
from onnxport.tasks import Task
from onnxport.verify.evaluation import Evaluation
from onnxport.verify.generation import GenerationProof
from onnxport.verify.next_token import NextTokenGate
from onnxport.verify.validate import Judging, Reference, validate_model

logger = logging.getLogger(__name__)

DivergenceSearch = Callable[[Path, ValidationRecord], DivergenceRecord | None]
"""Where a failed model diverges from its reference (`verify.divergence`); None when it
cannot be said."""


@dataclass(frozen=True)
class Rules:
    """What a model must do to pass, and what happens when it does not.

    Args:
        judging: how the values are judged against PyTorch's: the error budget against
            float64 or the tolerance, gating (fp32) or only recorded (quantized variants,
            which the task-level figures judge).
        min_agreement: the task-level agreement a model must reach.
        evaluation: a labelled set whose metric must stay near PyTorch's.
        generation: PyTorch's greedy generations, which the model's must equal.
        next_token: a language model variant's figures on real text against the fp32
            model's (`verify.next_token`).
        on_failure: `fail` raises; `skip` returns the model as not published.
        remedies: what the user can try, in the order to try them.
        origin: how the graph was made (`shapes.export_origin`), said when it fails.
    """

    judging: Judging
    min_agreement: float
    evaluation: Evaluation | None = None
    generation: GenerationProof | None = None
    next_token: NextTokenGate | None = None
    on_failure: Literal["fail", "skip"] = "fail"
    remedies: tuple[str, ...] = ()
    origin: str | None = None


@dataclass(frozen=True)
class Candidate:
    """A model the passes made, waiting for the gate's verdict."""

    variant: Variant
    path: Path
    passes: tuple[PassRecord, ...] = ()


def judge(
    candidate: Candidate,
    references: Sequence[Reference],
    *,
    task: Task,
    rules: Rules,
    divergence_search: DivergenceSearch | None = None,
    skip_log_level: int = logging.WARNING,
) -> OutputRecord:
    """The candidate's record once judged: published when it passes; otherwise the gate
    raises `ValidationError` (nothing is published), or with `on_failure: skip` returns it
    unpublished with where it diverges, logged at `skip_log_level`: its file is then the
    caller's to remove."""
    validation = validate_model(
        candidate.path,
        list(references),
        task=task,
        judging=rules.judging,
        min_agreement=rules.min_agreement,
        evaluation=rules.evaluation,
        generation=rules.generation,
        next_token=rules.next_token,
    )
    if validation.passed:
        return OutputRecord(
            file=candidate.path.name,
            variant=candidate.variant,
            data_file=data_file_of(candidate.path),
            passes=list(candidate.passes),
            validation=validation,
        )
    # Where the graph gives no answer there is no value to trace back to a node.
    search = divergence_search if not validation.runtime_errors else None
    refused = OutputRecord(
        file=candidate.path.name,
        variant=candidate.variant,
        published=False,
        passes=list(candidate.passes),
        validation=validation,
        divergence=search(candidate.path, validation) if search is not None else None,
    )
    error = refusal(refused, rules)
    if rules.on_failure == "skip":
        logger.log(skip_log_level, "%s; it is not published", error.message)
        return refused
    raise error


def refusal(output: OutputRecord, rules: Rules, *, where: str | None = None) -> ValidationError:
    """The gate's error for a model it refused (`output`, judged by `rules`): what the model
    does not do, its first failures, where it diverges, how its graph was made, and what to
    try; nothing was published. `where`: what else was tried (`at any optimization level`)."""
    validation = output.validation
    assert validation is not None, "the gate validates every model it refuses"
    after = f" after {', '.join(p.name for p in output.passes)}" if output.passes else ""
    what = (
        "does not accept every validation input"
        if validation.runtime_errors
        else "does not compute what PyTorch computes"
    )
    divergence = output.divergence
    message = (
        f"the {output.variant} ONNX model{after} {what}"
        + (f" {where}" if where else "")
        + ": "
        + "; ".join(validation.failures[:3])
        + (f"; {divergence.summary()}" if divergence is not None else "")
        + (f"; {rules.origin}" if rules.origin else "")
    )
    tries = [t for t in (divergence and divergence.suggestion, *rules.remedies) if t]
    return ValidationError(
        message,
        hint="nothing was published" + ("; try " + ", or ".join(tries) if tries else ""),
        details="\n".join(validation.runtime_errors) or None,
    )
