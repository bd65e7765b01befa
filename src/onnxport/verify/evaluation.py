"""The accuracy gate on labelled data: `validation.eval_file`.

Agreement with PyTorch says whether a model answers as PyTorch does; a labelled evaluation set
says what a difference costs on the task. With `validation.eval_file`, every published model
must keep PyTorch's score on that set within `validation.max_metric_drop` (default 0.01):

- token classification: exact-match entity F1 over word-level BIO labels, one JSON object per
  line: `{"words": ["Jane", "Doe", ...], "labels": ["B-NAME", "I-NAME", ...]}`; a word's label
  is predicted at its first sub-token;
- sequence classification: accuracy, one `{"text": "...", "label": "POSITIVE"}` per line.

Labels are the names of the checkpoint's `config.json` (`id2label`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from onnxport.artifact.records.validation import TaskMetricRecord
from onnxport.errors import ConfigError
from onnxport.tasks import Task
from onnxport.verify.runtime import run_session

ENTITY_F1 = "entity_f1"
ACCURACY = "accuracy"
_METRICS = {Task.TOKEN_CLASSIFICATION: ENTITY_F1, Task.SEQUENCE_CLASSIFICATION: ACCURACY}
_BATCH = 32

# Logits for named int64 inputs (one batch); PyTorch's or an ONNX Runtime session's.
Runner = Callable[[dict[str, np.ndarray]], np.ndarray]


def spans(labels: list[str]) -> set[tuple[int, int, str]]:
    """(start, end, kind) entity spans of a BIO label sequence."""
    found = set()
    start = kind = None
    for i, label in enumerate([*labels, "O"]):
        if label.startswith("I-") and kind == label[2:]:
            continue
        if kind is not None:
            found.add((start, i, kind))
            start = kind = None
        if label.startswith(("B-", "I-")):
            start, kind = i, label[2:]
    return found


def entity_f1(gold: list[list[str]], predicted: list[list[str]]) -> float:
    """Exact-match entity F1 over word-level BIO labels."""
    tp = fp = fn = 0
    for g, p in zip(gold, predicted):
        gs, ps = spans(g), spans(p)
        tp += len(gs & ps)
        fp += len(ps - gs)
        fn += len(gs - ps)
    if tp == 0:
        return 0.0
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    return 2 * precision * recall / (precision + recall)


def word_labels(
    word_ids: list[int | None] | tuple[int | None, ...],
    best: Any,
    id2label: dict[int, str],
    words: int,
) -> list[str]:
    """Word-level labels from one row's token predictions: each word takes the label
    predicted at its first sub-token (`word_ids` from a fast tokenizer; None: special)."""
    labels = ["O"] * words
    previous = None
    for col, word in enumerate(word_ids):
        if word is not None and word != previous:
            labels[word] = id2label[int(best[col])]
        previous = word
    return labels


@dataclass(frozen=True)
class EvalSet:
    path: Path
    metric: str
    batches: tuple[dict[str, np.ndarray], ...]
    word_ids: tuple[tuple[int | None, ...], ...]
    """Token classification: each row's token -> word index (None for special tokens)."""
    gold: tuple[Any, ...]
    """Per example: its word labels (token classification) or its label id."""
    id2label: dict[int, str]

    @property
    def examples(self) -> int:
        return len(self.gold)

    def score(self, run: Runner) -> float:
        # Batches are padded to their own longest example: keep each row's argmax apart.
        best = [row for batch in self.batches for row in np.asarray(run(batch)).argmax(-1)]
        if self.metric == ACCURACY:
            return float(np.mean(np.asarray(best) == np.asarray(self.gold)))
        predicted = [
            word_labels(word_ids, best[row], self.id2label, len(self.gold[row]))
            for row, word_ids in enumerate(self.word_ids)
        ]
        return entity_f1([list(g) for g in self.gold], predicted)


def _refuse(path: Path, line: int | None, problem: str) -> ConfigError:
    where = f"{path}:{line}" if line else str(path)
    return ConfigError(
        f"validation.eval_file {where}: {problem}",
        hint='one JSON object per line: {"words": [...], "labels": [...]} for token '
        'classification, {"text": ..., "label": ...} for sequence classification',
    )


def load_eval_set(
    path: Path, task: Task, tokenizer: Any, label2id: dict[str, int], input_names: tuple[str, ...]
) -> EvalSet:
    """Read and tokenize the labelled set; every problem is a `ConfigError` naming the line."""
    path = Path(path)
    if task not in _METRICS:
        raise ConfigError(
            f"validation.eval_file is for token or sequence classification, not {task.value}",
            hint="leave validation.eval_file out",
        )
    if tokenizer is None:
        raise ConfigError(
            "validation.eval_file needs the checkpoint's tokenizer, and it has none",
            hint="save the tokenizer beside the model (tokenizer.save_pretrained)",
        )
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        # Its contents were never seen: the hint is about the file, not its format.
        raise ConfigError(
            f"validation.eval_file {path} cannot be read ({e})",
            hint="name a readable UTF-8 file in validation.eval_file",
        ) from e
    token = task is Task.TOKEN_CLASSIFICATION
    texts: list[Any] = []
    gold: list[Any] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            raise _refuse(path, number, f"not JSON ({e.msg})") from e
        if not isinstance(item, dict):
            raise _refuse(path, number, "not a JSON object")
        if token:
            words, labels = item.get("words"), item.get("labels")
            if not (isinstance(words, list) and isinstance(labels, list) and words):
                raise _refuse(path, number, "needs non-empty 'words' and 'labels' lists")
            if len(words) != len(labels):
                raise _refuse(path, number, f"{len(words)} words but {len(labels)} labels")
            unknown = sorted({str(x) for x in labels} - set(label2id))
            if unknown:
                raise _refuse(path, number, f"unknown label(s) {', '.join(unknown)}")
            texts.append([str(w) for w in words])
            gold.append(tuple(labels))
        else:
            text, label = item.get("text"), item.get("label")
            if not isinstance(text, str) or label is None:
                raise _refuse(path, number, "needs a 'text' string and a 'label'")
            if str(label) not in label2id:
                raise _refuse(path, number, f"unknown label {label}")
            texts.append(text)
            gold.append(label2id[str(label)])
    if not gold:
        raise _refuse(path, None, "holds no examples")
    batches, word_ids = [], []
    for start in range(0, len(texts), _BATCH):
        chunk = texts[start : start + _BATCH]
        encoded = tokenizer(
            chunk,
            is_split_into_words=token,
            padding=True,
            truncation=True,
            max_length=min(int(getattr(tokenizer, "model_max_length", 512) or 512), 512),
        )
        missing = [n for n in input_names if n not in encoded]
        if missing:
            raise _refuse(path, None, f"the tokenizer gives no {', '.join(missing)}")
        batches.append({n: np.asarray(encoded[n], dtype=np.int64) for n in input_names})
        if token:
            word_ids += [tuple(encoded.word_ids(i)) for i in range(len(chunk))]
    id2label = {i: label for label, i in label2id.items()}
    return EvalSet(path, _METRICS[task], tuple(batches), tuple(word_ids), tuple(gold), id2label)


@dataclass(frozen=True)
class Evaluation:
    """The labelled set and PyTorch's score on it: the bar every ONNX model must reach."""

    eval_set: EvalSet
    pytorch: float
    max_drop: float

    def judge(self, session: ort.InferenceSession) -> TaskMetricRecord:
        """The score of the model `session` runs, and whether it keeps PyTorch's within
        `max_drop` (the session validation opened: one session per model, not two)."""
        first_output = session.get_outputs()[0].name
        value = self.eval_set.score(lambda batch: run_session(session, batch)[first_output])
        return TaskMetricRecord(
            metric=self.eval_set.metric,
            value=round(value, 6),
            pytorch=round(self.pytorch, 6),
            max_drop=self.max_drop,
            passed=value >= self.pytorch - self.max_drop - 1e-12,
            examples=self.eval_set.examples,
        )


def metric_failure(record: TaskMetricRecord) -> str:
    """One line for an error message: the score, PyTorch's, and the budget."""
    return (
        f"{record.metric} {record.value:.4f} on {record.examples} labelled examples is "
        f"more than {record.max_drop:g} below PyTorch's {record.pytorch:.4f}"
    )
