"""The pipelines' post-processing in numpy: entity grouping and label scores.

`test_predict.py` compares whole predictions with transformers; these pin the rules.
"""

from __future__ import annotations

import numpy as np
import pytest

from onnxport.predict.predictions import ScoredToken, group_entities, label_scores


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


def test_label_scores_follow_the_text_classification_pipeline() -> None:
    logits = np.array([1.0, 3.0, 0.0], dtype=np.float32)
    softmax = np.exp(logits) / np.exp(logits).sum()
    assert label_scores(logits) == pytest.approx(softmax)
    assert label_scores(logits, "multi_label_classification") == pytest.approx(
        1 / (1 + np.exp(-logits))
    )
    assert label_scores(logits, "regression") is logits
    assert label_scores(np.array([0.0])) == pytest.approx([0.5])
