"""The labelled evaluation set (`validation.eval_file`): reading, refusing, scoring."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from onnxport.errors import ConfigError
from onnxport.tasks import Task
from onnxport.verify.evaluation import load_eval_set

LABELS = {"O": 0, "B-NAME": 1, "I-NAME": 2}
NAMES = ("input_ids", "attention_mask")


@pytest.fixture(scope="module")
def tokenizer(checkpoint):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(checkpoint("distilbert-token"), local_files_only=True)


def _jsonl(path: Path, *items) -> Path:
    path.write_text(
        "\n".join(i if isinstance(i, str) else json.dumps(i) for i in items) + "\n",
        encoding="utf-8",
    )
    return path


GOOD = {"words": ["Jane", "Doe", "writes", "Python"], "labels": ["B-NAME", "I-NAME", "O", "O"]}


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ("{not json", "line 2: not JSON"),
        ([1, 2], "line 2: not a JSON object"),
        ({"words": ["a", "b"], "labels": ["O"]}, "line 2: 2 words but 1 labels"),
        ({"words": ["a"], "labels": ["B-SKILL"]}, "line 2: unknown label(s) B-SKILL"),
        ({"text": "a"}, "line 2: needs non-empty 'words' and 'labels' lists"),
    ],
)
def test_a_bad_line_is_named(tokenizer, tmp_path, line, says) -> None:
    path = _jsonl(tmp_path / "eval.jsonl", GOOD, line)
    with pytest.raises(ConfigError) as info:
        load_eval_set(path, Task.TOKEN_CLASSIFICATION, tokenizer, LABELS, NAMES)
    assert f"validation.eval_file {path}:{says.split(':')[0].split()[-1]}" in str(info.value)
    assert says.split(": ", 1)[1] in str(info.value)
    assert info.value.exit_code == 2


def test_other_tasks_and_missing_files_are_refused(tokenizer, tmp_path) -> None:
    path = _jsonl(tmp_path / "eval.jsonl", GOOD)
    with pytest.raises(ConfigError, match="for token or sequence classification"):
        load_eval_set(path, Task.FEATURE_EXTRACTION, tokenizer, LABELS, NAMES)
    with pytest.raises(ConfigError, match="cannot be read") as unreadable:
        load_eval_set(tmp_path / "nope.jsonl", Task.TOKEN_CLASSIFICATION, tokenizer, LABELS, NAMES)
    # What to check is the file, not the format of lines nobody read.
    assert "JSON" not in (unreadable.value.hint or "")
    with pytest.raises(ConfigError, match="holds no examples"):
        load_eval_set(_jsonl(tmp_path / "e.jsonl", ""), Task.TOKEN_CLASSIFICATION, tokenizer,
                      LABELS, NAMES)  # fmt: skip


def test_entity_f1_counts_exact_spans_at_first_sub_tokens(tokenizer, tmp_path) -> None:
    other = {"words": ["Contoso", "hired", "Bob"], "labels": ["O", "O", "B-NAME"]}
    eval_set = load_eval_set(
        _jsonl(tmp_path / "eval.jsonl", GOOD, other),
        Task.TOKEN_CLASSIFICATION, tokenizer, LABELS, NAMES,
    )  # fmt: skip
    assert eval_set.metric == "entity_f1" and eval_set.examples == 2

    def answer(gold_rows):
        def run(batch):
            logits = np.zeros((*batch["input_ids"].shape, 3), dtype=np.float32)
            for row, word_ids in enumerate(eval_set.word_ids):
                for col, word in enumerate(word_ids):
                    if word is not None:
                        logits[row, col, LABELS[gold_rows[row][word]]] = 1.0
            return logits

        return run

    assert eval_set.score(answer([GOOD["labels"], other["labels"]])) == 1.0
    # Bob missed, and "Jane Doe" cut short: 0 of 2 gold spans found, 1 wrong span predicted.
    assert eval_set.score(answer([["B-NAME", "O", "O", "O"], ["O"] * 3])) == 0.0
    # One of the two spans right: precision 1, recall 0.5.
    assert eval_set.score(answer([GOOD["labels"], ["O"] * 3])) == pytest.approx(2 / 3)


def test_accuracy_for_sequence_classification(tokenizer, tmp_path) -> None:
    labels = {"NEGATIVE": 0, "POSITIVE": 1}
    eval_set = load_eval_set(
        _jsonl(tmp_path / "eval.jsonl", {"text": "good", "label": "POSITIVE"},
               {"text": "bad", "label": "NEGATIVE"}, {"text": "fine", "label": "POSITIVE"}),
        Task.SEQUENCE_CLASSIFICATION, tokenizer, labels, NAMES,
    )  # fmt: skip
    always_positive = lambda batch: np.tile([0.0, 1.0], (len(batch["input_ids"]), 1))  # noqa: E731
    assert eval_set.metric == "accuracy"
    assert eval_set.score(always_positive) == pytest.approx(2 / 3)
