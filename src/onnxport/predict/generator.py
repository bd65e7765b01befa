"""`OnnxGenerator`: prompts in, generated text out, with a text-generation directory.

What transformers' tokenizer and `generate()` do around the model, without torch or
transformers: the prompt rendered by the checkpoint's chat template (`predict.chat`) and
tokenized by the `tokenizers` package, the loop of `verify.decode` run on ONNX Runtime,
the new tokens decoded and cut at a stop string. The end tokens are those of
generation_config.json (as `generate()` reads them), else config.json's, else the
tokenizer's EOS; the pad token is the tokenizer's, else the first end token.

`OnnxPredictor` opens a text-generation directory with one of these and answers `generate`
with it: one object for every task, while the generation's settings live here, apart from
the text tasks' truncation, pooling and aggregation.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from onnxport.artifact.reader import PublishedDirectory
from onnxport.errors import PredictError
from onnxport.names import Variant
from onnxport.predict.chat import SPECIAL_TOKENS, chat_template, render_chat
from onnxport.predict.predictions import FinishReason, GeneratedText
from onnxport.predict.tokens import load_tokenizer, model_max_length, token_setting
from onnxport.verify.decode import Sampling, cache_layout, generate_ids
from onnxport.verify.runtime import create_session, session_options

logger = logging.getLogger(__name__)

DEFAULT_MAX_NEW_TOKENS = 64
DEFAULT_GENERATION_BATCH = 8
"""The most prompts generated together (left-padded to the longest of them)."""


def _end_ids(published: PublishedDirectory, config: dict[str, Any], eos: int | None) -> list[int]:
    generation = published.json_file("generation_config.json", required=False)
    for source in (generation, config):
        value = source.get("eos_token_id")
        if isinstance(value, int) and not isinstance(value, bool):
            return [value]
        if isinstance(value, list) and value and all(isinstance(v, int) for v in value):
            return list(value)
    return [eos] if eos is not None else []


def _count(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise PredictError(f"{name} must be a whole number, not {value!r}")
    return value


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise PredictError(f"{name} must be a number, not {value!r}")
    return float(value)


def _stop_strings(stop: str | Sequence[str] | None) -> tuple[str, ...]:
    strings = (stop,) if isinstance(stop, str) else tuple(stop or ())
    if any(not isinstance(s, str) or not s for s in strings):
        raise PredictError(f"stop must hold non-empty strings, not {list(strings)!r}")
    return strings


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """`text` before the first of the `stop` strings in it, and whether one was found."""
    found = [i for i in (text.find(s) for s in stop) if i >= 0]
    return (text[: min(found)], True) if found else (text, False)


class Prompting:
    """How a text-generation directory's prompts become token ids, without its model: its
    tokenizer, chat template, special tokens, end tokens and pad token."""

    def __init__(self, published: PublishedDirectory) -> None:
        directory = published.path
        config = published.json_file("config.json")
        tokenizer_config = published.json_file("tokenizer_config.json", required=False)
        self.tokenizer: Tokenizer = load_tokenizer(directory)
        self.context = model_max_length(config, tokenizer_config)
        """The most tokens the model reads: prompt and new tokens together."""
        self.special_tokens = {
            name: token
            for name in SPECIAL_TOKENS
            if (token := token_setting(tokenizer_config, name)) is not None
        }
        self.chat_template = chat_template(directory, tokenizer_config)
        eos = self.special_tokens.get("eos_token")
        self.end_ids = _end_ids(published, config, self.tokenizer.token_to_id(eos) if eos else None)
        pad = self.special_tokens.get("pad_token")
        pad_id = self.tokenizer.token_to_id(pad) if pad else None
        if pad_id is None and not self.end_ids:
            raise PredictError(
                f"{directory} names no end token (generation_config.json, config.json "
                "and tokenizer_config.json have no eos_token_id or eos_token)",
                hint="set eos_token_id in the checkpoint's generation_config.json",
            )
        self.pad_id: int = pad_id if pad_id is not None else self.end_ids[0]

    def ids(self, prompt: str, *, raw: bool = False) -> list[int]:
        """The tokens the model reads for `prompt`: the chat template's rendering of it as the
        user's message, tokenized without adding special tokens again (the template writes
        its own); `raw`, or without a template, the prompt as transformers' tokenizer encodes
        it (its special tokens added)."""
        if raw or self.chat_template is None:
            return self.tokenizer.encode(prompt).ids
        text = render_chat(self.chat_template, prompt, self.special_tokens)
        return self.tokenizer.encode(text, add_special_tokens=False).ids


class OnnxGenerator:
    """Text generation with a published text-generation variant (`OnnxGenerator.open`).

    Safe to share between threads: nothing changes after `__init__`.

    Args:
        published: the opened output directory.
        variant: which published model to run: fp32, int8, ...
        threads: ONNX Runtime intra-op threads; None: `ONNXPORT_THREADS`, else all cores.
        batch_size: the most prompts generated together.
    """

    def __init__(
        self,
        published: PublishedDirectory,
        variant: str = Variant.FP32,
        *,
        threads: int | None = None,
        batch_size: int = DEFAULT_GENERATION_BATCH,
    ) -> None:
        self.directory = published.path
        self.prompting = Prompting(published)
        self.context = self.prompting.context
        """The most tokens the model reads: prompt and new tokens together."""
        self.chat_template = self.prompting.chat_template
        self.end_ids = self.prompting.end_ids
        self.pad_id = self.prompting.pad_id
        self.batch_size = batch_size
        model_path = published.model_file(variant)
        self._session = create_session(model_path, session_options(threads=threads, spinning=False))
        try:
            self._layout = cache_layout(self._session)
        except ValueError as e:
            raise PredictError(f"{model_path.name} cannot generate: {e}") from e
        logger.info(
            "generator ready: %s %s, context %s, end tokens %s",
            self.directory,
            variant,
            self.context,
            self.end_ids,
        )

    @classmethod
    def open(
        cls, directory: Path | str, variant: str = Variant.FP32, *, threads: int | None = None
    ) -> OnnxGenerator:
        return cls(PublishedDirectory.open(Path(directory)), variant, threads=threads)

    def prompt_ids(self, prompt: str, *, raw: bool = False) -> list[int]:
        """The tokens the model reads for `prompt` (`Prompting.ids`)."""
        return self.prompting.ids(prompt, raw=raw)

    def generate(
        self,
        prompts: str | Sequence[str],
        *,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        stop: str | Sequence[str] | None = None,
        raw: bool = False,
        seed: int | None = None,
    ) -> list[GeneratedText]:
        """What the model writes after each prompt, in order (a string gives a list of one).

        Args:
            prompts: the user's messages.
            max_new_tokens: the most tokens written per prompt.
            do_sample: sample the next token (else the likeliest, as `generate()` greedy).
            temperature: with `do_sample`, the softmax's temperature (above 0).
            top_p: with `do_sample`, sample within the smallest set of this probability.
            stop: strings that end the text: it is cut before the first one.
            raw: read the prompt as it is, not through the chat template.
            seed: with `do_sample`, the random generator's seed (None: a fresh one).
        """
        batch = self._prompts(prompts)
        stops = _stop_strings(stop)
        sampling = self._sampling(do_sample, temperature, top_p, seed)
        limit = self._max_new_tokens(max_new_tokens)
        encoded = [self.prompt_ids(p, raw=raw) for p in batch]
        for index, ids in enumerate(encoded, 1):
            self._check_fits(index, len(ids), limit)

        def stopped(tokens: Sequence[int]) -> bool:
            return cut_at_stop(
                self.prompting.tokenizer.decode(tokens, skip_special_tokens=True), stops
            )[1]

        results = []
        for first in range(0, len(encoded), self.batch_size):
            generated = generate_ids(
                self._session,
                encoded[first : first + self.batch_size],
                max_new_tokens=limit,
                end_ids=self.end_ids,
                pad_id=self.pad_id,
                sampling=sampling,
                layout=self._layout,
                finished=stopped if stops else None,
            )
            for row, tokens in enumerate(generated.tokens):
                text = self.prompting.tokenizer.decode(tokens, skip_special_tokens=True)
                text, stopped = cut_at_stop(text, stops)
                ended = stopped or generated.finished[row]
                reason = FinishReason.STOP if ended else FinishReason.LENGTH
                results.append(GeneratedText(batch[first + row], text, tuple(tokens), reason))
        return results

    def _prompts(self, prompts: str | Sequence[str]) -> list[str]:
        batch = [prompts] if isinstance(prompts, str) else list(prompts)
        if not batch:
            raise PredictError("generate was given no prompts: give at least one")
        for index, prompt in enumerate(batch, 1):
            if not isinstance(prompt, str):
                raise PredictError(f"prompt {index} is a {type(prompt).__name__}, not a string")
            if not prompt.strip():
                raise PredictError(f"prompt {index} is empty: give the model something to answer")
        return batch

    def _sampling(
        self, do_sample: bool, temperature: Any, top_p: Any, seed: int | None
    ) -> Sampling:
        temperature = _number(temperature, "temperature")
        top_p = _number(top_p, "top_p")
        if do_sample and temperature <= 0:
            raise PredictError(
                f"temperature must be above 0 to sample, not {temperature:g}",
                hint="for the likeliest tokens, do not sample (do_sample=False)",
            )
        if not 0 < top_p <= 1:
            raise PredictError(f"top_p must be above 0 and at most 1, not {top_p:g}")
        return Sampling(bool(do_sample), temperature, top_p, seed)

    def _max_new_tokens(self, value: Any) -> int:
        count = _count(value, "max_new_tokens")
        if count < 1:
            raise PredictError(f"max_new_tokens must be at least 1, not {count}")
        if self.context is not None and count > self.context:
            raise PredictError(
                f"max_new_tokens {count} is more than the {self.context} tokens this model "
                "reads in all (max_position_embeddings of config.json)"
            )
        return count

    def _check_fits(self, index: int, prompt_tokens: int, max_new_tokens: int) -> None:
        if self.context is None or prompt_tokens + max_new_tokens <= self.context:
            return
        room = self.context - prompt_tokens
        fix = (
            f"lower max_new_tokens to {room}, or shorten the prompt"
            if room > 0
            else f"shorten the prompt below {self.context} tokens"
        )
        raise PredictError(
            f"prompt {index} is {prompt_tokens} tokens (after the chat template); with "
            f"max_new_tokens {max_new_tokens} that is more than the {self.context} tokens "
            "this model reads",
            hint=fix,
        )
