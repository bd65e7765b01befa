"""The tasks onnxport converts, and what each implies: model class, inputs, agreement metric."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum


class Task(str, Enum):
    TOKEN_CLASSIFICATION = "token-classification"
    SEQUENCE_CLASSIFICATION = "sequence-classification"
    QUESTION_ANSWERING = "question-answering"
    MASKED_LM = "masked-lm"
    FEATURE_EXTRACTION = "feature-extraction"
    IMAGE_CLASSIFICATION = "image-classification"
    CAUSAL_LM = "causal-lm"
    """The logits alone, without the KV cache (`TEXT_GENERATION` is the default)."""
    TEXT_GENERATION = "text-generation"
    """A decoder LM with its KV cache in and out (`onnxport.sources.generative`)."""


# A text-generation graph's cache names, as Optimum and onnxruntime-genai name them
# (`onnxport.sources.generative`).
PAST_KEY = "past_key_values.{}.key"
PAST_VALUE = "past_key_values.{}.value"
PRESENT_KEY = "present.{}.key"
PRESENT_VALUE = "present.{}.value"
PAST_PREFIX = "past_key_values."
PRESENT_PREFIX = "present."


def generation_step(shapes: Mapping[str, Sequence[int]]) -> tuple[list[int], int] | None:
    """For the input shapes of a text-generation step: the shape of its new tokens and how
    many were cached before them; None for other inputs."""
    past = [shape for name, shape in shapes.items() if name.startswith(PAST_PREFIX)]
    if not past or "input_ids" not in shapes:
        return None
    return list(shapes["input_ids"]), int(past[0][2]) if len(past[0]) > 2 else 0


class Modality(str, Enum):
    TEXT = "text"
    VISION = "vision"
    TENSOR = "tensor"  # plain PyTorch sources described by an input spec


class AgreementMetric(str, Enum):
    ARGMAX = "argmax_agreement"
    COSINE = "cosine_similarity"


@dataclass(frozen=True)
class TaskInfo:
    """What a task implies for loading and validation."""

    auto_class: str
    """The `transformers` Auto class that loads a checkpoint for this task."""
    modality: Modality
    metric: AgreementMetric
    token_level: bool
    """Whether the agreement is measured per token (masked by the attention mask)."""


TASKS: dict[Task, TaskInfo] = {
    Task.TOKEN_CLASSIFICATION: TaskInfo(
        "AutoModelForTokenClassification", Modality.TEXT, AgreementMetric.ARGMAX, True
    ),
    Task.SEQUENCE_CLASSIFICATION: TaskInfo(
        "AutoModelForSequenceClassification", Modality.TEXT, AgreementMetric.ARGMAX, False
    ),
    Task.QUESTION_ANSWERING: TaskInfo(
        "AutoModelForQuestionAnswering", Modality.TEXT, AgreementMetric.ARGMAX, False
    ),
    Task.MASKED_LM: TaskInfo("AutoModelForMaskedLM", Modality.TEXT, AgreementMetric.ARGMAX, True),
    Task.FEATURE_EXTRACTION: TaskInfo("AutoModel", Modality.TEXT, AgreementMetric.COSINE, True),
    Task.IMAGE_CLASSIFICATION: TaskInfo(
        "AutoModelForImageClassification", Modality.VISION, AgreementMetric.ARGMAX, False
    ),
    Task.CAUSAL_LM: TaskInfo("AutoModelForCausalLM", Modality.TEXT, AgreementMetric.ARGMAX, True),
    Task.TEXT_GENERATION: TaskInfo(
        "AutoModelForCausalLM", Modality.TEXT, AgreementMetric.ARGMAX, True
    ),
}

# Architecture class-name suffixes, longest first, and the task each one means.
_ARCHITECTURE_SUFFIXES: tuple[tuple[str, Task], ...] = (
    ("ForTokenClassification", Task.TOKEN_CLASSIFICATION),
    ("ForSequenceClassification", Task.SEQUENCE_CLASSIFICATION),
    ("ForQuestionAnswering", Task.QUESTION_ANSWERING),
    ("ForMaskedLM", Task.MASKED_LM),
    ("ForImageClassificationWithTeacher", Task.IMAGE_CLASSIFICATION),
    ("ForImageClassification", Task.IMAGE_CLASSIFICATION),
    ("ForCausalLM", Task.TEXT_GENERATION),
    ("LMHeadModel", Task.TEXT_GENERATION),
    ("EncoderModel", Task.FEATURE_EXTRACTION),
    ("Model", Task.FEATURE_EXTRACTION),
)


def task_from_architecture(architecture: str) -> Task | None:
    """The task an architecture class name implies (`DistilBertForTokenClassification`)."""
    for suffix, task in _ARCHITECTURE_SUFFIXES:
        if architecture.endswith(suffix):
            return task
    return None


def task_names() -> str:
    return ", ".join(t.value for t in Task)
