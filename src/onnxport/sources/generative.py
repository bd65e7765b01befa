"""Decoder LMs exported for generation: one graph that takes the KV cache and returns it.

The graph's names are the ones Optimum and onnxruntime-genai use, so their loaders open it:
- inputs `input_ids` [batch, sequence], `attention_mask` [batch, past + sequence],
  `position_ids` [batch, sequence] (where the model takes them), and per layer
  `past_key_values.{i}.key` / `.value` [batch, kv_heads, past, head_dim];
- outputs `logits` [batch, sequence, vocab] and per layer `present.{i}.key` / `.value`
  [batch, kv_heads, past + sequence, head_dim].
The first step takes an empty past (`past` = 0). No transformers `Cache` crosses the graph
boundary: `CausalLMWithPast` takes and returns plain tensors and builds the cache inside.

A validation shape (batch, size) of a generative source is one step of generation: `size`
tokens are fed. A step of more than one token is a prefill from an empty past; a step of one
token is a decode step after `DECODE_PAST_TOKENS` cached ones. Batches of more than one row
are left-padded, as generation pads them.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from onnxport.errors import SourceError, one_line
from onnxport.samples import sample_texts
from onnxport.tasks import PAST_KEY, PAST_VALUE, PRESENT_KEY, PRESENT_VALUE

STEP_INPUTS = ("input_ids", "attention_mask", "position_ids")

DECODE_PAST_TOKENS = 12
"""The cached tokens before a one-token validation step."""
GENERATION_SHAPES = ((1, 9), (2, 23), (1, 1), (3, 1))
"""Prefill of two prompt lengths (the second left-padded), then decode steps with a past."""
TRACE_STEP = (2, 5, 3)
"""(batch, new tokens, past tokens) the export traces: none of them 0 or 1, and all
different, so that torch.export keeps every length dynamic."""


def past_names(layers: int) -> list[str]:
    return [n.format(i) for i in range(layers) for n in (PAST_KEY, PAST_VALUE)]


def present_names(layers: int) -> list[str]:
    return [n.format(i) for i in range(layers) for n in (PRESENT_KEY, PRESENT_VALUE)]


def position_ids(attention_mask: torch.Tensor, new: int) -> torch.Tensor:
    """The positions of the last `new` tokens, as transformers' `generate()` numbers them:
    real tokens count from 0, padding is given position 1."""
    positions = attention_mask.long().cumsum(-1) - 1
    positions = positions.masked_fill(attention_mask == 0, 1)
    return positions[:, -new:]


def _cache_argument(model: torch.nn.Module) -> str:
    parameters = inspect.signature(model.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


class CausalLMWithPast(torch.nn.Module):
    """A `*ForCausalLM` with a flat signature: the past as tensors in, logits and the
    present as tensors out (`present_names` order)."""

    def __init__(self, model: torch.nn.Module, layers: int, takes_positions: bool) -> None:
        super().__init__()
        self.model = model
        self.layers = layers
        self.takes_positions = takes_positions
        self.cache_argument = _cache_argument(model)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **named: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        from transformers.cache_utils import DynamicCache

        cache = DynamicCache()
        for i in range(self.layers):
            cache.update(named[PAST_KEY.format(i)], named[PAST_VALUE.format(i)], i)
        arguments: dict[str, Any] = {self.cache_argument: cache}
        if self.takes_positions:
            arguments["position_ids"] = named["position_ids"]
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            use_cache=True,
            return_dict=True,
            **arguments,
        )
        present: list[torch.Tensor] = []
        for layer in cache.layers:
            present += [layer.keys, layer.values]
        return (outputs.logits, *present)


@dataclass(frozen=True)
class CacheShape:
    """Each layer's cached key/value: [batch, kv_heads, past, head_dim]."""

    layers: int
    kv_heads: tuple[int, ...]
    head_dims: tuple[int, ...]


def _cache_shape(wrapper: CausalLMWithPast, vocab_size: int) -> CacheShape:
    """Run the model once on two tokens and read the cache it fills."""
    from transformers.cache_utils import DynamicCache

    cache = DynamicCache()
    ids = torch.full((1, 2), min(5, max(vocab_size - 1, 0)), dtype=torch.int64)
    arguments: dict[str, Any] = {wrapper.cache_argument: cache}
    try:
        with torch.no_grad():
            wrapper.model(input_ids=ids, use_cache=True, **arguments)
    except Exception as e:  # model code raises anything on inputs it cannot take
        raise SourceError(
            f"{type(wrapper.model).__name__} fails on a two-token prompt with a KV cache: "
            f"{type(e).__name__}: {one_line(e)}",
            hint="convert the logits alone with source.task causal-lm",
        ) from e
    layers = [layer for layer in cache.layers if getattr(layer, "keys", None) is not None]
    if not layers:
        raise SourceError(
            f"{type(wrapper.model).__name__} fills no KV cache",
            hint="convert the logits alone with source.task causal-lm",
        )
    return CacheShape(
        len(layers),
        tuple(int(layer.keys.shape[1]) for layer in layers),
        tuple(int(layer.keys.shape[-1]) for layer in layers),
    )


def pad_with_eos(tokenizer: Any) -> None:
    """Give a tokenizer without a pad token its EOS token as one (decoder tokenizers usually
    have none), and pad on the left, as generation does."""
    if tokenizer is None:
        return
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"


class GenerationInputs:
    """One step of generation as named inputs: tokenized sample text (random ids without a
    tokenizer), the matching mask and positions, and as the past the keys and values the
    model itself caches for the text before the step (the step continues a real prefill).

    A past of random keys and values would be out of the model's distribution: attention
    over it takes large, arbitrary logits, where float32 rounding of the softmax weighs most
    and varies most from input to input, so that PyTorch's own error (the budget's unit)
    became a noisy yardstick (SmolLM2-135M, a left-padded decode step: PyTorch's RMS error
    1.0e-3 for one checkpoint, 3.0e-4 for the same weights + 1e-4 noise, ONNX's 1.3e-3 and
    2.0e-3)."""

    def __init__(
        self,
        names: list[str],
        cache: CacheShape,
        vocab_size: int,
        tokenizer: Any | None,
        module: CausalLMWithPast,
    ) -> None:
        self.names = names
        self.cache = cache
        self.vocab_size = vocab_size
        self.tokenizer = tokenizer
        self.module = module

    def __call__(self, batch: int, size: int, seed: int) -> dict[str, torch.Tensor]:
        past = 0 if size > 1 else DECODE_PAST_TOKENS
        return self.step(batch, size, past, seed)

    def step(self, batch: int, new: int, past: int, seed: int) -> dict[str, torch.Tensor]:
        """`new` tokens fed after `past` cached ones; the last row of a batch is shorter,
        padded on the left."""
        generator = torch.Generator().manual_seed(seed)
        total = past + new
        ids = self._ids(batch, total, seed, generator)
        mask = torch.ones((batch, total), dtype=torch.int64)
        if batch > 1:
            mask[-1, : total // 2] = 0
        named = {
            "input_ids": ids[:, past:],
            "attention_mask": mask,
            "position_ids": position_ids(mask, new),
            **self._cached(ids[:, :past], mask[:, :past]),
        }
        return {name: named[name] for name in self.names}

    def _cached(self, ids: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """The past after a prefill of `ids` from an empty one: the model's own cache."""
        batch, past = ids.shape
        empty = {
            name: torch.zeros((batch, heads, 0, dim))
            for name, heads, dim in zip(
                past_names(self.cache.layers),
                (h for h in self.cache.kv_heads for _ in range(2)),
                (d for d in self.cache.head_dims for _ in range(2)),
            )
        }
        if past == 0:
            return empty
        steps = {"position_ids": position_ids(mask, past)} if self.module.takes_positions else {}
        with torch.no_grad():
            present = self.module(ids, mask, **steps, **empty)[1:]
        return {name: value.detach() for name, value in zip(past_names(self.cache.layers), present)}

    def _ids(self, batch: int, total: int, seed: int, generator: torch.Generator) -> torch.Tensor:
        if self.tokenizer is not None:
            texts = sample_texts(batch, min_lines=total // 12 + 1, offset=seed)
            encoded = self.tokenizer(
                texts,
                truncation=True,
                max_length=total,
                padding="max_length",
                return_tensors="pt",
            )["input_ids"]
            if encoded.shape[1] == total:
                return encoded.to(torch.int64)
        low = min(5, max(self.vocab_size - 1, 0))
        return torch.randint(
            low, max(self.vocab_size, low + 1), (batch, total), generator=generator
        )

    def padding(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Per output, where it holds padding (True): the logits of padded tokens, the cached
        keys and values of padded positions. No step reads them (the mask hides them), and
        what a model computes there is arbitrary: PyTorch in float64 answers NaN where every
        key of a padded token is masked, float32 a uniform average."""
        pad = np.asarray(inputs["attention_mask"]) == 0
        new = np.asarray(inputs["input_ids"]).shape[1]
        padded = {"logits": pad[:, -new:, None]}
        for name in present_names(self.cache.layers):
            padded[name] = pad[:, None, :, None]
        return padded

    def run_unpadded(
        self, run: Callable[..., tuple[torch.Tensor, ...]], inputs: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, ...]:
        """`run` (positional inputs in `names` order) on each row without its left padding,
        the answers padded back with zeros: the same values at every real position. For
        float64, where model code breaks on padding: it takes the softmax in float32, into
        which float64's most negative mask value casts as -inf, so that a padded token,
        whose every key is masked, answers NaN and passes it on through its keys."""
        mask = inputs["attention_mask"]
        new = inputs["input_ids"].shape[1]
        total = mask.shape[1]
        past = total - new
        rows = []
        for r in range(mask.shape[0]):
            pad = int((mask[r].cumsum(0) == 0).sum())
            pad = min(pad, total - 1)  # at least one token fed
            cut_new = max(0, pad - past)
            row = {}
            for name, value in inputs.items():
                value = value[r : r + 1]
                if name == "attention_mask":
                    row[name] = value[:, pad:]
                elif name in STEP_INPUTS:
                    row[name] = value[:, cut_new:]
                else:
                    row[name] = value[:, :, min(pad, past) :]
            rows.append((pad, cut_new, run(*(row[n] for n in self.names))))
        answers = []
        for i in range(len(rows[0][2])):
            full = []
            for pad, cut_new, answer in rows:
                value = answer[i]
                shape = list(value.shape)
                axis = 1 if i == 0 else 2  # logits: tokens; present: positions
                shape[axis] = cut_new if i == 0 else pad
                full.append(torch.cat([value.new_zeros(shape), value], dim=axis))
            answers.append(torch.cat(full, dim=0))
        return tuple(answers)

    def trace_inputs(self, seed: int = 0) -> dict[str, torch.Tensor]:
        batch, new, past = TRACE_STEP
        return self.step(batch, new, past, seed)


@dataclass(frozen=True)
class GenerativeModel:
    """What a loader needs to make a generative `Source` of a `*ForCausalLM`."""

    module: CausalLMWithPast
    inputs: GenerationInputs
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    dynamic_axes: dict[str, dict[int, str]]


def with_past(model: torch.nn.Module, config: Any, tokenizer: Any | None) -> GenerativeModel:
    """`model` (a `*ForCausalLM`, loaded with `use_cache`) wrapped for a graph with the KV
    cache, and how to feed it."""
    takes_positions = "position_ids" in inspect.signature(model.forward).parameters
    vocab_size = int(getattr(config, "vocab_size", 0) or 0)
    probe = CausalLMWithPast(model, 0, takes_positions)
    cache = _cache_shape(probe, vocab_size)
    module = CausalLMWithPast(model, cache.layers, takes_positions).eval()
    steps = [n for n in STEP_INPUTS if n != "position_ids" or takes_positions]
    names = (*steps, *past_names(cache.layers))
    axes: dict[str, dict[int, str]] = {
        "input_ids": {0: "batch", 1: "sequence"},
        "attention_mask": {0: "batch", 1: "total_sequence"},
        "position_ids": {0: "batch", 1: "sequence"},
    }
    for name in past_names(cache.layers):
        axes[name] = {0: "batch", 2: "past_sequence"}
    pad_with_eos(tokenizer)
    return GenerativeModel(
        module=module,
        inputs=GenerationInputs(list(names), cache, vocab_size, tokenizer, module),
        input_names=names,
        output_names=("logits", *present_names(cache.layers)),
        dynamic_axes={name: axes[name] for name in names},
    )
