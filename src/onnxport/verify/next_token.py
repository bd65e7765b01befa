"""The gate of a language model's variants: real text, teacher-forced, against the fp32 model.

Each text is one prefill (an empty past) of up to `MAX_TOKENS` tokens. At every position the
variant's next-token argmax is compared with the fp32 model's (the share where they are equal
must reach `validation.min_next_token_agreement`), and its perplexity on the text's actual
next tokens may exceed the fp32 model's by `validation.max_perplexity_increase` at most.

The reference is the fp32 ONNX model, not PyTorch: the gate has proven it computes what
PyTorch computes (within PyTorch's own float32 error), and a variant is judged after torch
has left the process (`preparation`), so its answers come at no cost in memory.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from onnxport.artifact.records.validation import NextTokenRecord
from onnxport.verify.decode import cache_layout, empty_past
from onnxport.verify.runtime import create_session

logger = logging.getLogger(__name__)

MAX_TOKENS = 128
"""Tokens per text: long enough to reach past the first sentence's easy guesses."""
TEXTS = 16


def _prefill(session: ort.InferenceSession, ids: np.ndarray) -> np.ndarray:
    """The logits [tokens, vocab] of one text run from an empty past."""
    layout = cache_layout(session)
    length = len(ids)
    feed = {
        "input_ids": ids[None, :].astype(np.int64),
        "attention_mask": np.ones((1, length), dtype=np.int64),
        **empty_past(layout, 1),
    }
    if layout.takes_positions:
        feed["position_ids"] = np.arange(length, dtype=np.int64)[None, :]
    (logits,) = session.run(["logits"], feed)
    return logits[0]


def _log_likelihoods(logits: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """The log-probability of each actual next token (float64)."""
    scores = logits[:-1].astype(np.float64)
    scores -= scores.max(axis=-1, keepdims=True)
    normalizer = np.log(np.exp(scores).sum(axis=-1))
    return scores[np.arange(len(ids) - 1), ids[1:]] - normalizer


@dataclass(frozen=True)
class _Answers:
    choices: tuple[np.ndarray, ...]
    """Per text, the next-token argmax at every position but the last."""
    perplexity: float


def _answers(session: ort.InferenceSession, texts: Sequence[np.ndarray]) -> _Answers:
    choices, likelihoods = [], []
    for ids in texts:
        logits = _prefill(session, ids)
        choices.append(logits[:-1].argmax(axis=-1))
        likelihoods.append(_log_likelihoods(logits, ids))
    return _Answers(tuple(choices), float(np.exp(-np.concatenate(likelihoods).mean())))


@dataclass(frozen=True)
class NextTokenGate:
    """The fp32 model's answers on the texts, and the limits a variant's must keep."""

    texts: tuple[np.ndarray, ...]
    reference: _Answers
    min_agreement: float
    max_increase: float

    def judge(self, session: ort.InferenceSession) -> NextTokenRecord:
        """The variant in `session` on the texts, against the fp32 model's answers."""
        found = _answers(session, self.texts)
        same = np.concatenate(
            [a == b for a, b in zip(found.choices, self.reference.choices, strict=True)]
        )
        agreement = float(same.mean())
        increase = found.perplexity / self.reference.perplexity - 1.0
        record = NextTokenRecord(
            agreement=agreement,
            min_agreement=self.min_agreement,
            perplexity=found.perplexity,
            fp32_perplexity=self.reference.perplexity,
            max_increase=self.max_increase,
            texts=len(self.texts),
            positions=int(same.size),
            passed=agreement >= self.min_agreement and increase <= self.max_increase,
        )
        logger.info(
            "next token on %d texts: agreement %.4f, perplexity %.3f (fp32 %.3f)",
            len(self.texts),
            agreement,
            found.perplexity,
            self.reference.perplexity,
        )
        return record


def next_token_gate(
    reference: Path, texts: Sequence[np.ndarray], *, min_agreement: float, max_increase: float
) -> NextTokenGate:
    """The gate for variants of the fp32 model at `reference`, on `texts` (token ids, two
    tokens at least each), its answers computed once here."""
    kept = tuple(np.asarray(t, dtype=np.int64)[:MAX_TOKENS] for t in texts if len(t) >= 2)
    if not kept:
        raise ValueError("the next-token gate needs texts of two tokens at least")
    return NextTokenGate(
        kept, _answers(create_session(reference), kept), min_agreement, max_increase
    )


def failures(record: NextTokenRecord) -> list[str]:
    """What the record fails, each naming the figure and the setting."""
    found = []
    where = f"on {record.texts} texts ({record.positions} positions, teacher-forced)"
    if record.agreement < record.min_agreement:
        found.append(
            f"next-token agreement with the fp32 model {record.agreement:.4f} {where} is "
            f"below validation.min_next_token_agreement {record.min_agreement:g}"
        )
    if record.increase > record.max_increase:
        found.append(
            f"perplexity {record.perplexity:.4g} {where} is {record.increase:.1%} above the "
            f"fp32 model's {record.fp32_perplexity:.4g}, more than "
            f"validation.max_perplexity_increase {record.max_increase:g}"
        )
    return found
