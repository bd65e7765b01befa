"""The generation proof: greedy tokens of the ONNX model, token by token against PyTorch's.

PyTorch's side is computed while the model is loaded (`references.pytorch_generation`):
transformers' `generate()`, greedy, for a few prompts (through the chat template when the
checkpoint has one), with the margin of its choice at each step. Each ONNX model then
generates from the same prompt ids with onnxport's own loop (`verify.decode`), the one
`predict` and `serve` run, so the proof covers the cache as it is used: every step feeds
the present of the step before. On a difference the record says where it begins, the two
tokens, and the margins there, so that a near-tie is told apart from a bug.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from onnxport.artifact.records.validation import GenerationProofRecord, GreedyDivergenceRecord
from onnxport.verify.decode import generate_ids

PROOF_PROMPTS = (
    "Write one sentence about a software engineer's résumé.",
    "List three skills a data scientist needs.",
    "What is the capital of France?",
)
"""The proof's prompts, each as the user's message of a chat."""


@dataclass(frozen=True)
class GreedyReference:
    """PyTorch's greedy generation from one prompt."""

    prompt_ids: tuple[int, ...]
    tokens: tuple[int, ...]
    """The new tokens, ending with an end token when one was produced."""
    margins: tuple[float, ...]
    """Per new token: PyTorch's logit of it minus its second best."""


@dataclass(frozen=True)
class GenerationProof:
    """PyTorch's greedy generations, and how to check an ONNX model against them."""

    references: tuple[GreedyReference, ...]
    new_tokens: int
    end_ids: tuple[int, ...]
    pad_id: int
    chat_template: bool

    def judge(self, session: ort.InferenceSession) -> GenerationProofRecord:
        divergences = []
        for index, reference in enumerate(self.references):
            steps: list[np.ndarray] = []

            def keep(_: int, logits: np.ndarray, steps: list[np.ndarray] = steps) -> None:
                steps.append(logits[0].copy())

            generated = generate_ids(
                session,
                [list(reference.prompt_ids)],
                max_new_tokens=self.new_tokens,
                end_ids=self.end_ids,
                pad_id=self.pad_id,
                on_step=keep,
            )
            divergence = _first_divergence(index, reference, generated.tokens[0], steps)
            if divergence is not None:
                divergences.append(divergence)
        return GenerationProofRecord(
            prompts=len(self.references),
            new_tokens=self.new_tokens,
            identical=len(self.references) - len(divergences),
            chat_template=self.chat_template,
            passed=not divergences,
            divergences=divergences,
        )


def _first_divergence(
    index: int, reference: GreedyReference, tokens: Sequence[int], logits: list[np.ndarray]
) -> GreedyDivergenceRecord | None:
    expected = list(reference.tokens)
    if list(tokens) == expected:
        return None
    step = next(
        (i for i, (a, b) in enumerate(zip(expected, tokens)) if a != b),
        min(len(expected), len(tokens)),
    )
    # One ran on where the other stopped: the one that stopped chose an end token there.
    pytorch_token = expected[step] if step < len(expected) else -1
    onnx_token = tokens[step] if step < len(tokens) else -1
    onnx_margin = float("nan")
    if step < len(logits) and pytorch_token >= 0 and onnx_token >= 0:
        onnx_margin = float(logits[step][onnx_token] - logits[step][pytorch_token])
    return GreedyDivergenceRecord(
        prompt=index,
        step=step,
        pytorch_token=pytorch_token,
        onnx_token=onnx_token,
        pytorch_margin=reference.margins[step] if step < len(reference.margins) else float("nan"),
        onnx_margin=onnx_margin,
    )


def generation_failure(record: GenerationProofRecord) -> str:
    """One line for an error message: which prompts differ, where, and the margins."""
    first = record.divergences[0]
    return (
        f"greedy generation differs from PyTorch's on {len(record.divergences)} of "
        f"{record.prompts} prompts: prompt {first.prompt} from new token {first.step} "
        f"(PyTorch {first.pytorch_token}, ONNX {first.onnx_token}; PyTorch's margin over its "
        f"second choice {first.pytorch_margin:.3g}, ONNX's margin for its own "
        f"{first.onnx_margin:.3g})"
    )
