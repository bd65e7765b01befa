"""The task registry: every task loads with a real transformers class and has a tiny model."""

from __future__ import annotations

import pytest
import transformers

from models import MODELS
from onnxport.tasks import (
    TASKS,
    AgreementMetric,
    Modality,
    Task,
    task_from_architecture,
    task_names,
)


def test_every_task_is_registered() -> None:
    assert set(TASKS) == set(Task)


@pytest.mark.parametrize("task", list(Task), ids=lambda t: t.value)
def test_auto_class_exists_in_transformers(task: Task) -> None:
    auto = getattr(transformers, TASKS[task].auto_class)
    assert hasattr(auto, "from_pretrained")


def test_every_task_has_a_tiny_model_under_test() -> None:
    """Like optimum's test_all_models_tested: a new task needs a model in tests/models.py."""
    # causal-lm, which no architecture implies, is converted by name in test_generation.
    untested = set(Task) - {model.task for model in MODELS.values()} - {Task.CAUSAL_LM}
    assert not untested, f"add a tiny model to tests/models.py for {sorted(untested)}"


@pytest.mark.parametrize("name", list(MODELS))
def test_tiny_model_architectures_map_to_their_task(name: str) -> None:
    model = MODELS[name]
    assert task_from_architecture(model.architecture) is model.task


@pytest.mark.parametrize(
    ("architecture", "task"),
    [
        ("DistilBertForTokenClassification", Task.TOKEN_CLASSIFICATION),
        ("XLMRobertaForSequenceClassification", Task.SEQUENCE_CLASSIFICATION),
        ("DebertaV2ForQuestionAnswering", Task.QUESTION_ANSWERING),
        ("BertForMaskedLM", Task.MASKED_LM),
        ("BertModel", Task.FEATURE_EXTRACTION),
        ("T5EncoderModel", Task.FEATURE_EXTRACTION),
        ("ViTForImageClassification", Task.IMAGE_CLASSIFICATION),
        ("DeiTForImageClassificationWithTeacher", Task.IMAGE_CLASSIFICATION),
        ("LlamaForCausalLM", Task.TEXT_GENERATION),
        ("GPT2LMHeadModel", Task.TEXT_GENERATION),
    ],
)
def test_task_from_architecture(architecture: str, task: Task) -> None:
    assert task_from_architecture(architecture) is task


@pytest.mark.parametrize(
    "architecture", ["", "BertForPreTraining", "T5ForConditionalGeneration", "Wav2Vec2ForCTC"]
)
def test_unknown_architecture_has_no_task(architecture: str) -> None:
    assert task_from_architecture(architecture) is None


def test_metrics_and_modalities() -> None:
    assert TASKS[Task.FEATURE_EXTRACTION].metric is AgreementMetric.COSINE
    assert TASKS[Task.IMAGE_CLASSIFICATION].modality is Modality.VISION
    classifiers = [t for t in Task if t is not Task.FEATURE_EXTRACTION]
    assert all(TASKS[t].metric is AgreementMetric.ARGMAX for t in classifiers)
    assert TASKS[Task.TOKEN_CLASSIFICATION].token_level
    assert not TASKS[Task.SEQUENCE_CLASSIFICATION].token_level


def test_task_names_lists_every_cli_spelling() -> None:
    names = task_names().split(", ")
    assert names == [t.value for t in Task]
    assert Task("token-classification") is Task.TOKEN_CLASSIFICATION
