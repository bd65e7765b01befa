"""What a converted model answers, and the post-processing of transformers' pipelines.

The result types of `onnxport.predict`, and the numpy steps that turn model outputs into them
exactly as transformers' token-classification (its four aggregation strategies) and
text-classification pipelines do, so that a served ONNX model answers what the PyTorch
pipeline answered.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Entity:
    """An entity span, with the keys of transformers' pipeline (any aggregation but "none")."""

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


class AggregationStrategy(str, Enum):
    """How token classification turns the labels of tokens into entities: transformers'
    `aggregation_strategy`. The word strategies give every piece of a word the same label,
    so that an entity never holds part of a word."""

    SIMPLE = "simple"
    """Each token keeps its own best label: a word the model labels piece by piece comes back
    in fragments ("kn" of "knows")."""
    FIRST = "first"
    """A word takes its first token's best label (how a tagger trained on first-sub-token
    labels, like the demo's, is read)."""
    AVERAGE = "average"
    """A word takes the best label of its tokens' mean probabilities."""
    MAX = "max"
    """A word takes the best label of its most confident token."""


@dataclass(frozen=True)
class TokenScores:
    """A token's probabilities over the labels, its span in the text, and whether it
    continues the word before it (`continues_word`)."""

    scores: np.ndarray
    start: int
    end: int
    continues: bool


@dataclass(frozen=True)
class ScoredToken:
    """A token's (or a word's) best label and its probability, with its span in the text."""

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
    """Group adjacent labelled tokens (or words) into entities as transformers' pipeline does.

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


def continues_word(
    text: str, token: str, start: int, end: int, *, word_aware: bool, unknown: bool
) -> bool:
    """Whether a token continues the word before it, by the pipeline's rule: with a tokenizer
    that marks sub-words (`word_aware`: its model has a continuing-sub-word prefix, "##"), when
    the token's string differs in length from its span; otherwise, when no space touches the
    span's start. An unknown token (`[UNK]`) always starts a word."""
    if unknown:
        return False
    if word_aware:
        return len(token) != end - start
    return start > 0 and " " not in text[start - 1 : start + 1]


def _words(tokens: Sequence[TokenScores]) -> list[list[TokenScores]]:
    words: list[list[TokenScores]] = []
    for token in tokens:
        if words and token.continues:
            words[-1].append(token)
        else:
            words.append([token])
    return words


def _best(
    tokens: Sequence[TokenScores], label: Callable[[int], str], strategy: AggregationStrategy
) -> ScoredToken:
    """The label of one token ("simple") or of one word's tokens, by `strategy`."""
    if strategy is AggregationStrategy.AVERAGE:
        scores = np.nanmean(np.stack([t.scores for t in tokens]), axis=0)
    elif strategy is AggregationStrategy.MAX:
        scores = max(tokens, key=lambda t: t.scores.max()).scores  # the first of equals
    else:
        scores = tokens[0].scores
    best = int(scores.argmax())
    return ScoredToken(label(best), float(scores[best]), tokens[0].start, tokens[-1].end)


def aggregate(
    text: str,
    tokens: Sequence[TokenScores],
    label: Callable[[int], str],
    strategy: AggregationStrategy,
) -> tuple[Entity, ...]:
    """The entities of `text` from its tokens' probabilities (special tokens left out), as
    the token-classification pipeline finds them with `aggregation_strategy=strategy`:
    tokens ("simple") or words labelled, then grouped (`group_entities`). `label` names a
    label index."""
    units = [[t] for t in tokens] if strategy is AggregationStrategy.SIMPLE else _words(tokens)
    return group_entities(text, [_best(unit, label, strategy) for unit in units])


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


class FinishReason(str, Enum):
    """Why a generated text ends (the words of OpenAI's and MLflow's chat answers)."""

    STOP = "stop"
    """The model produced an end token, or the text reached a stop string."""
    LENGTH = "length"
    """`max_new_tokens` ran out first."""


@dataclass(frozen=True)
class GeneratedText:
    """What a text-generation model wrote after a prompt."""

    prompt: str
    text: str
    """The new text, decoded without special tokens, cut before the first stop string."""
    token_ids: tuple[int, ...]
    """The new tokens as the model produced them (its end token included when it produced
    one): a stop string cuts the text, not these."""
    finish_reason: FinishReason

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "text": self.text,
            "token_ids": list(self.token_ids),
            "finish_reason": self.finish_reason.value,
        }
