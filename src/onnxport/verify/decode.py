"""Generate tokens with a text-generation graph on ONNX Runtime: numpy only, no torch and no
transformers model code. The one decode loop: the generation proof runs it
(`verify.generation`), and so do `predict`, `serve` and the variant search's decode timing.

A prompt batch is left-padded and run once (the prefill, from an empty past); then each step
feeds the one token chosen per row, the mask one position longer, and the cache the step
before returned (`present.*` fed back as `past_key_values.*`). Positions are numbered as
transformers' `generate()` numbers them (`onnxport.sources.generative.position_ids`), so that
greedy tokens are the same as PyTorch's. A row that has produced an end token is finished: it
is fed the pad token from then on, as `generate()` does, and its tokens end there.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnxruntime as ort

from onnxport.tasks import PAST_PREFIX, PRESENT_PREFIX

StepScores = Callable[[int, np.ndarray], None]
"""Called after each step with its index and the logits of the next token [batch, vocab]."""

_NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


@dataclass(frozen=True)
class CacheLayout:
    """A text-generation graph's inputs: which past tensors it takes and their shapes."""

    past: tuple[str, ...]
    """`past_key_values.{i}.key/value`, in the graph's order."""
    presents: tuple[str, ...]
    """The outputs fed back as `past`, in the same order."""
    shapes: tuple[tuple[int, int], ...]
    """Per past input: (kv_heads, head_dim)."""
    dtype: type
    takes_positions: bool


def cache_layout(session: ort.InferenceSession) -> CacheLayout:
    """How `session`'s graph takes its cache (raises ValueError for a graph without one)."""
    inputs = session.get_inputs()
    past = [i for i in inputs if i.name.startswith(PAST_PREFIX)]
    if not past:
        raise ValueError("the model takes no past key/values: it was not exported for generation")
    shapes = []
    for value in past:
        heads, dim = value.shape[1], value.shape[3]
        if not isinstance(heads, int) or not isinstance(dim, int):
            raise ValueError(f"{value.name} has no fixed heads and head size: {value.shape}")
        shapes.append((heads, dim))
    presents = tuple(PRESENT_PREFIX + v.name.removeprefix(PAST_PREFIX) for v in past)
    return CacheLayout(
        past=tuple(v.name for v in past),
        presents=presents,
        shapes=tuple(shapes),
        dtype=_NUMPY_TYPES.get(past[0].type, np.float32),
        takes_positions=any(i.name == "position_ids" for i in inputs),
    )


def empty_past(layout: CacheLayout, batch: int) -> dict[str, np.ndarray]:
    """The past of a first step, as the graph takes it: no cached position."""
    return {
        name: np.zeros((batch, heads, 0, dim), dtype=layout.dtype)
        for name, (heads, dim) in zip(layout.past, layout.shapes)
    }


@dataclass(frozen=True)
class Sampling:
    """How the next token is chosen: greedy (`do_sample` False) or sampled from the
    softmax at `temperature`, within the smallest set of probability `top_p`."""

    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None


def _positions(mask: np.ndarray, new: int) -> np.ndarray:
    positions = np.cumsum(mask, axis=-1) - 1
    positions = np.where(mask == 0, 1, positions)
    return positions[:, -new:].astype(np.int64)


def _choose(logits: np.ndarray, sampling: Sampling, rng: np.random.Generator) -> np.ndarray:
    if not sampling.do_sample:
        return logits.argmax(axis=-1)
    scaled = logits.astype(np.float64) / max(sampling.temperature, 1e-6)
    scaled -= scaled.max(axis=-1, keepdims=True)
    probabilities = np.exp(scaled)
    probabilities /= probabilities.sum(axis=-1, keepdims=True)
    chosen = np.empty(len(logits), dtype=np.int64)
    for row, p in enumerate(probabilities):
        order = np.argsort(-p)
        cumulative = np.cumsum(p[order])
        keep = order[: int(np.searchsorted(cumulative, sampling.top_p)) + 1]
        chosen[row] = rng.choice(keep, p=p[keep] / p[keep].sum())
    return chosen


@dataclass
class Generated:
    """Each prompt's new tokens (ending with the end token when one was produced)."""

    tokens: list[list[int]]
    finished: list[bool] = field(default_factory=list)
    """Whether each row ended on an end token (else it ran out of `max_new_tokens`)."""


def _left_padded(
    prompts: Sequence[Sequence[int]], pad_id: int, room: int
) -> tuple[np.ndarray, np.ndarray]:
    """The prompts' ids, left-padded, and a mask with `room` columns of ones after them
    (the steps to come: slices of it are fed, so that no step concatenates)."""
    longest = max(len(p) for p in prompts)
    ids = np.full((len(prompts), longest), pad_id, dtype=np.int64)
    mask = np.ones((len(prompts), longest + room), dtype=np.int64)
    for row, prompt in enumerate(prompts):
        ids[row, longest - len(prompt) :] = prompt
        mask[row, : longest - len(prompt)] = 0
    return ids, mask


def generate_ids(
    session: ort.InferenceSession,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    end_ids: Sequence[int],
    pad_id: int,
    sampling: Sampling = Sampling(),
    layout: CacheLayout | None = None,
    on_step: StepScores | None = None,
    finished: Callable[[Sequence[int]], bool] | None = None,
) -> Generated:
    """New token ids for each prompt (token ids), `max_new_tokens` at most. A row ends on
    one of `end_ids`, or when `finished` says its tokens are done (a stop string in their
    text).

    The cache stays in ONNX Runtime between steps: each step's `present.*` outputs are
    bound, as ONNX Runtime allocated them, as the next step's `past_key_values.*` inputs
    (I/O binding), so no step copies the cache into or out of numpy.
    """
    layout = layout or cache_layout(session)
    rng = np.random.default_rng(sampling.seed)
    batch = len(prompts)
    ids, full_mask = _left_padded(prompts, pad_id, max_new_tokens)
    length = ids.shape[1]
    binding = session.io_binding()
    # A bound numpy array is read in place: `held` keeps each alive until the run that reads it.
    held = empty_past(layout, batch)
    ends = set(end_ids)
    tokens: list[list[int]] = [[] for _ in prompts]
    done = np.zeros(batch, dtype=bool)
    for step in range(max_new_tokens):
        held["input_ids"] = ids
        held["attention_mask"] = np.ascontiguousarray(full_mask[:, :length])
        if layout.takes_positions:
            held["position_ids"] = _positions(held["attention_mask"], ids.shape[1])
        for name, value in held.items():
            binding.bind_cpu_input(name, value)
        binding.clear_binding_outputs()
        binding.bind_output("logits")
        for name in layout.presents:
            binding.bind_output(name)
        session.run_with_iobinding(binding)
        held.clear()
        outputs = binding.get_outputs()
        logits = outputs[0].numpy()[:, -1, :]
        if on_step is not None:
            on_step(step, logits)
        chosen = np.where(done, pad_id, _choose(logits, sampling, rng))
        for row in np.flatnonzero(~done):
            tokens[row].append(int(chosen[row]))
            done[row] = int(chosen[row]) in ends or bool(finished and finished(tokens[row]))
        if done.all():
            break
        for name, present in zip(layout.past, list(outputs)[1:]):
            binding.bind_ortvalue_input(name, present)
        ids = chosen[:, None].astype(np.int64)
        length += 1
    return Generated(tokens, [bool(d) for d in done])
