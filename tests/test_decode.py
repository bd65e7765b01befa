"""`verify.decode.generate_ids`: greedy tokens are transformers' `generate()` tokens."""

from __future__ import annotations

import pytest
import torch

from onnxport.verify.decode import generate_ids
from onnxport.verify.runtime import create_session

NEW_TOKENS = 8
PROMPTS = ([5, 9, 13, 21, 7, 30], [11, 3])
"""Two lengths: the shorter row is left-padded, as generation pads it."""


def _pytorch_greedy(directory, prompts, *, end_id: int | None, pad_id: int) -> list[list[int]]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(directory, attn_implementation="eager").eval()
    model.generation_config.eos_token_id = end_id
    longest = max(len(p) for p in prompts)
    ids = torch.tensor([[pad_id] * (longest - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (longest - len(p)) + [1] * len(p) for p in prompts])
    with torch.inference_mode():
        out = model.generate(
            ids,
            attention_mask=mask,
            max_new_tokens=NEW_TOKENS,
            do_sample=False,
            pad_token_id=pad_id,
        )
    rows = []
    for row in out[:, longest:].tolist():
        if end_id is not None and end_id in row:
            row = row[: row.index(end_id) + 1]
        rows.append(row)
    return rows


@pytest.fixture(scope="module")
def generation(converted, checkpoint):
    result = converted("gpt2-generation")
    session = create_session(result.directory / "model_fp32.onnx")
    return session, checkpoint("gpt2-generation")


def test_greedy_tokens_are_pytorchs_with_left_padding(generation) -> None:
    session, directory = generation
    ours = generate_ids(session, PROMPTS, max_new_tokens=NEW_TOKENS, end_ids=(), pad_id=0)
    assert ours.tokens == _pytorch_greedy(directory, list(PROMPTS), end_id=None, pad_id=0)
    assert ours.finished == [False, False]


def test_a_row_that_ends_is_padded_and_the_other_goes_on(generation) -> None:
    session, directory = generation
    free = _pytorch_greedy(directory, list(PROMPTS), end_id=None, pad_id=0)

    # An end token the first row produces before the second row does (if it ever does).
    def first(row: list[int], token: int) -> int:
        return row.index(token) if token in row else NEW_TOKENS

    ending = [i for i, t in enumerate(free[0]) if first(free[0], t) == i < first(free[1], t) - 1]
    if not ending:
        pytest.skip("the tiny model repeats itself: no token ends the first row first")
    end_at, end_id = ending[0], free[0][ending[0]]
    ours = generate_ids(session, PROMPTS, max_new_tokens=NEW_TOKENS, end_ids=[end_id], pad_id=0)
    assert ours.tokens == _pytorch_greedy(directory, list(PROMPTS), end_id=end_id, pad_id=0)
    assert ours.finished == [True, False]
    assert len(ours.tokens[0]) == end_at + 1


def test_on_step_sees_each_steps_logits(generation) -> None:
    session, _ = generation
    seen: list[tuple[int, tuple[int, ...]]] = []
    generate_ids(
        session,
        PROMPTS,
        max_new_tokens=3,
        end_ids=(),
        pad_id=0,
        on_step=lambda step, logits: seen.append((step, logits.shape)),
    )
    vocab = session.get_outputs()[0].shape[-1]
    assert [s for s, _ in seen] == [0, 1, 2]
    assert all(shape[0] == 2 for _, shape in seen)
    assert isinstance(vocab, (int, str))
