"""What a converted model answers, and the post-processing of transformers' pipelines.

The result types of `onnxport.predict`, and the numpy steps that turn model outputs into them
exactly as transformers' token-classification ("simple" aggregation) and text-classification
pipelines do, so that a served ONNX model answers what the PyTorch pipeline answered.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Entity:
    """An entity span, with the keys of transformers' pipeline (aggregation "simple")."""

    entity_group: str
    score: float
    word: str
    """The span of the original text (`text[start:end]`), not the detokenized tokens."""
    start: int
    end: int


@dataclass(frozen=True)
class EntityPrediction:
    text: str
    entities: tuple[Entity, ...]
    truncated: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "truncated": self.truncated,
            "entities": [vars(e).copy() for e in self.entities],
        }


@dataclass(frozen=True)
class LabelPrediction:
    text: str
    label: str
    score: float
    truncated: bool = False

    def to_dict(self) -> dict[str, Any]:
        return vars(self).copy()


@dataclass(frozen=True)
class VectorPrediction:
    text: str
    vector: np.ndarray
    truncated: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "truncated": self.truncated, "vector": self.vector.tolist()}


@dataclass(frozen=True)
class ImagePrediction:
    """The label of the `index`-th image of a batch (counted from 1)."""

    index: int
    label: str
    score: float

    def to_dict(self) -> dict[str, Any]:
        return vars(self).copy()


Prediction = EntityPrediction | LabelPrediction | VectorPrediction


@dataclass(frozen=True)
class ScoredToken:
    """A token's best label and its probability, with the token's span in the text."""

    label: str
    score: float
    start: int
    end: int


def _bio(label: str) -> tuple[str, str]:
    """("B" or "I", entity type); a label without a B-/I- prefix continues like an I-."""
    if label.startswith(("B-", "I-")):
        return label[0], label[2:]
    return "I", label


def group_entities(text: str, tokens: Sequence[ScoredToken]) -> tuple[Entity, ...]:
    """Group adjacent tokens into entities as transformers' aggregation "simple" does.

    A token joins the previous group when its type is the same and it is not a B- token; a
    group's label is its first token's without the prefix, its score the mean of its tokens'
    scores, its span from its first token's start to its last token's end. "O" groups are
    dropped after grouping, as the pipeline's `ignore_labels` does.
    """
    groups: list[list[ScoredToken]] = []
    for token in tokens:
        bi, tag = _bio(token.label)
        if groups and bi != "B" and tag == _bio(groups[-1][-1].label)[1]:
            groups[-1].append(token)
        else:
            groups.append([token])
    entities = []
    for group in groups:
        name = group[0].label.split("-", 1)[-1]
        if name == "O":
            continue
        start, end = group[0].start, group[-1].end
        score = float(np.nanmean([t.score for t in group]))
        entities.append(Entity(name, score, text[start:end], start, end))
    return tuple(entities)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def label_scores(logits: np.ndarray, problem_type: str | None = None) -> np.ndarray:
    """Scores as the text-classification pipeline's default: raw for regression, sigmoid for
    one label or multi-label models, softmax otherwise."""
    if problem_type == "regression":
        return logits
    if problem_type == "multi_label_classification" or logits.shape[-1] == 1:
        return 1.0 / (1.0 + np.exp(-logits))
    return softmax(logits)
