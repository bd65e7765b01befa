"""The pipelines' post-processing in numpy: entity grouping and label scores.

`test_predict.py` compares whole predictions with transformers; these pin the rules.
"""

from __future__ import annotations

import numpy as np
import pytest

from onnxport.predict.predictions import (
    AggregationStrategy,
    ScoredToken,
    TokenScores,
    aggregate,
    continues_word,
    group_entities,
    label_scores,
)


def test_grouping_follows_the_simple_strategy() -> None:
    text = "Ann Lee met Bo at Acme Corp"
    tokens = [
        ScoredToken("B-PER", 0.9, 0, 3),
        ScoredToken("I-PER", 0.7, 4, 7),
        ScoredToken("O", 0.99, 8, 11),
        ScoredToken("B-PER", 0.8, 12, 14),
        ScoredToken("O", 0.9, 15, 17),
        ScoredToken("I-ORG", 0.6, 18, 22),  # an I- without a B- starts an entity
        ScoredToken("B-ORG", 0.5, 23, 27),  # a B- after the same type starts another
    ]
    entities = group_entities(text, tokens)
    assert [(e.entity_group, e.word, e.start, e.end) for e in entities] == [
        ("PER", "Ann Lee", 0, 7),
        ("PER", "Bo", 12, 14),
        ("ORG", "Acme", 18, 22),
        ("ORG", "Corp", 23, 27),
    ]
    assert entities[0].score == pytest.approx(0.8)
    # Labels without a B-/I- scheme group by equality, like the pipeline's.
    plain = [
        ScoredToken("LABEL_1", 0.5, 0, 3),
        ScoredToken("LABEL_1", 0.7, 4, 7),
        ScoredToken("LABEL_2", 1, 8, 11),
    ]
    assert [(e.entity_group, e.word) for e in group_entities(text, plain)] == [
        ("LABEL_1", "Ann Lee"),
        ("LABEL_2", "met"),
    ]


LABELS = ("O", "B-PER", "I-PER")


def _token(start: int, end: int, scores: list[float], subword: bool = False) -> TokenScores:
    return TokenScores(np.array(scores), start, end, subword)


def test_word_strategies_give_each_word_one_label() -> None:
    """ "Jo ##an ##na met": the model labels the word's pieces differently. "simple" leaves
    fragments; the other strategies label the word whole, each by its own rule."""
    text = "Joanna met"
    tokens = [
        _token(0, 2, [0.1, 0.6, 0.3]),  # "Jo": B-PER
        _token(2, 4, [0.7, 0.0, 0.3], subword=True),  # "##an": O
        _token(4, 6, [0.2, 0.0, 0.8], subword=True),  # "##na": I-PER, the most confident
        _token(7, 10, [0.9, 0.05, 0.05]),  # "met": O
    ]

    def found(strategy: str) -> list[tuple[str, str, float]]:
        entities = aggregate(text, tokens, LABELS.__getitem__, AggregationStrategy(strategy))
        return [(e.entity_group, e.word, round(e.score, 4)) for e in entities]

    assert found("simple") == [("PER", "Jo", 0.6), ("PER", "na", 0.8)]
    assert found("first") == [("PER", "Joanna", 0.6)]
    assert found("average") == [("PER", "Joanna", 0.4667)]  # mean: O 0.33, I-PER 0.47
    assert found("max") == [("PER", "Joanna", 0.8)]


def test_a_token_continues_a_word_by_the_pipelines_rule() -> None:
    text = "Ann-Lee knows"
    # A tokenizer with a sub-word prefix ("##"): a token longer than its span continues.
    assert continues_word(text, "##nows", 9, 13, word_aware=True, unknown=False)
    assert not continues_word(text, "kn", 8, 10, word_aware=True, unknown=False)
    assert not continues_word(text, "-", 3, 4, word_aware=True, unknown=False)
    assert not continues_word(text, "[UNK]", 9, 13, word_aware=True, unknown=True)
    # Without one (byte-level BPE): a token continues unless a space touches its start.
    assert continues_word(text, "-", 3, 4, word_aware=False, unknown=False)
    assert continues_word(text, "ows", 10, 13, word_aware=False, unknown=False)
    assert not continues_word(text, "Ġknows", 8, 13, word_aware=False, unknown=False)
    assert not continues_word(text, "Ann", 0, 3, word_aware=False, unknown=False)


def test_label_scores_follow_the_text_classification_pipeline() -> None:
    logits = np.array([1.0, 3.0, 0.0], dtype=np.float32)
    softmax = np.exp(logits) / np.exp(logits).sum()
    assert label_scores(logits) == pytest.approx(softmax)
    assert label_scores(logits, "multi_label_classification") == pytest.approx(
        1 / (1 + np.exp(-logits))
    )
    assert label_scores(logits, "regression") is logits
    assert label_scores(np.array([0.0])) == pytest.approx([0.5])
