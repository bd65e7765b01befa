"""`OnnxPredictor`: texts in, predictions out, with one published variant of a directory.

The tokenizer of the directory encodes, sessions of the one session factory run, and
`predictions` turns the outputs into entities, labels or vectors. Safe to share between
threads: everything set up at construction is only read afterwards.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from tokenizers import Encoding, Tokenizer

from onnxport.artifact.manifest import Manifest
from onnxport.artifact.reader import PublishedDirectory
from onnxport.artifact.records.source import Pooling
from onnxport.errors import PredictError, TextTooLongError, one_line
from onnxport.names import Variant
from onnxport.predict.generator import OnnxGenerator
from onnxport.predict.pooling import sentence_vector
from onnxport.predict.predictions import (
    AggregationStrategy,
    EntityPrediction,
    GeneratedText,
    ImagePrediction,
    LabelPrediction,
    Prediction,
    TokenScores,
    VectorPrediction,
    aggregate,
    continues_word,
    label_scores,
    softmax,
)
from onnxport.predict.tokens import load_tokenizer, model_max_length, token_setting
from onnxport.tasks import Task
from onnxport.verify.runtime import RUNTIME_ERRORS, create_session, session_options

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 32
SUPPORTED_TASKS = (
    Task.TOKEN_CLASSIFICATION,
    Task.SEQUENCE_CLASSIFICATION,
    Task.FEATURE_EXTRACTION,
)
"""The tasks `predict` answers text for (and the text models of `onnxport.serving`)."""
IMAGE_TASKS = (Task.IMAGE_CLASSIFICATION,)
"""The tasks `predict_images` answers."""
GENERATIVE_TASKS = (Task.TEXT_GENERATION,)
"""The tasks `generate` answers (`OnnxGenerator`)."""
_TASKS = (*SUPPORTED_TASKS, *IMAGE_TASKS, *GENERATIVE_TASKS)
# Model input name -> the `tokenizers.Encoding` attribute that holds it.
_ENCODING_FIELDS = {
    "input_ids": "ids",
    "attention_mask": "attention_mask",
    "token_type_ids": "type_ids",
}
_INTEGER_TYPES = {"tensor(int64)": np.int64, "tensor(int32)": np.int32}


class LongText(str, Enum):
    TRUNCATE = "truncate"
    """Read the first `max_length` tokens; the result says `truncated` and a warning is logged."""
    ERROR = "error"
    """Raise `TextTooLongError`."""


def _choice(kind: type[Enum], value: Any, argument: str) -> Any:
    try:
        return kind(value)
    except ValueError as e:
        choices = ", ".join(str(c.value) for c in kind)
        raise PredictError(f"{argument} {value!r} is not one of: {choices}") from e


def _task(directory: Path, manifest: Manifest) -> Task:
    try:
        task = Task(manifest.source.task)
    except ValueError:
        task = None
    if task not in _TASKS:
        raise PredictError(
            f"{directory} holds a {manifest.source.task} model; predict answers "
            f"{', '.join(t.value for t in _TASKS)}"
        )
    return task  # type: ignore[return-value]


def length_buckets(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """The indices of `lengths` sorted by length (ties in order), cut into runs of at most
    `batch_size`: each run is padded to its own longest, so that texts of similar length run
    together and a long text does not make a batch of short ones pad to its length."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    return [order[first : first + batch_size] for first in range(0, len(order), batch_size)]


class OnnxPredictor:
    """Predictions from an onnxport output directory, with ONNX Runtime only.

    One predictor may serve several threads at once: nothing in it changes after `__init__`
    (the tokenizer's settings, the feed's layout and the session are fixed there), and ONNX
    Runtime's `run` and the tokenizer's `encode_batch` may be called concurrently.

    Args:
        directory: the output of `onnxport convert` (manifest.json, model, tokenizer files).
        variant: which published model to run: fp32, int8, fp16, ...
        max_length: the most tokens read per text; None: the model's maximum.
        threads: ONNX Runtime intra-op threads; None: `ONNXPORT_THREADS`, else all cores
            (a server running several workers gives each a share of the cores).
        on_long_text: a text longer than `max_length` is truncated (and the result says so)
            or refused with `TextTooLongError`.
        pooling: how feature extraction turns token vectors into one vector; None: as the
            checkpoint's sentence-transformers modules pool (`modules.json`), else the mean.
            Vectors are normalized when those modules say so, whatever the pooling.
        aggregation_strategy: how token classification turns token labels into entities
            (transformers' pipeline's `aggregation_strategy`): "first" labels each word by its
            first token, "simple" each token on its own.
        batch_size: the most texts run together (`length_buckets`).
    """

    def __init__(
        self,
        directory: Path | str,
        variant: str = Variant.FP32,
        *,
        max_length: int | None = None,
        threads: int | None = None,
        on_long_text: LongText | str = LongText.TRUNCATE,
        pooling: Pooling | str | None = None,
        aggregation_strategy: AggregationStrategy | str = AggregationStrategy.FIRST,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> None:
        self.directory = Path(directory)
        self.variant = variant
        self.on_long_text: LongText = _choice(LongText, on_long_text, "on_long_text")
        chosen = _choice(Pooling, pooling, "pooling") if pooling is not None else None
        self.aggregation_strategy: AggregationStrategy = _choice(
            AggregationStrategy, aggregation_strategy, "aggregation_strategy"
        )
        if batch_size < 1:
            raise PredictError(f"batch_size must be at least 1, not {batch_size}")
        self.batch_size = batch_size
        published = PublishedDirectory.open(self.directory)
        model_path = published.model_file(variant)
        self.task = _task(self.directory, published.manifest)
        self._generator: OnnxGenerator | None = None
        if self.task is Task.TEXT_GENERATION:
            # A decoder LM reads prompts through its chat template and writes text: the
            # generator holds all it needs; the settings below are the other tasks'.
            self._generator = OnnxGenerator(published, variant, threads=threads)
            self.max_length = self._generator.context
            return
        config = published.json_file("config.json")
        self._config = config
        self.labels = {int(k): str(v) for k, v in (config.get("id2label") or {}).items()}
        source = published.manifest.source
        self._why_fixed = source.why_fixed() if source.fixed_resolution else None
        self._sentence = source.sentence_embedding
        self.pooling = chosen or (self._sentence.pooling if self._sentence else Pooling.MEAN)
        self.normalize = bool(self._sentence and self._sentence.normalize)
        self._tokenizer: Tokenizer | None = None
        self.max_length: int | None = None
        self._feed: tuple[tuple[str, str, Any, int], ...] = ()
        if self.task is not Task.IMAGE_CLASSIFICATION:
            self._prepare_text(
                config, published.json_file("tokenizer_config.json", required=False), max_length
            )
        self._session = self._load_session(model_path, threads)
        if self.task is not Task.IMAGE_CLASSIFICATION:
            # What each run feeds and fetches, fixed once (read by every thread, never changed).
            self._feed = tuple(
                (
                    arg.name,
                    _ENCODING_FIELDS[arg.name],
                    _INTEGER_TYPES.get(arg.type, np.int64),
                    self._pad_id if arg.name == "input_ids" else 0,
                )
                for arg in self._session.get_inputs()
            )
        names = [o.name for o in self._session.get_outputs()]
        wanted = "last_hidden_state" if self.task is Task.FEATURE_EXTRACTION else "logits"
        self._output = wanted if wanted in names else names[0]
        logger.info(
            "predictor ready: %s %s (%s), max length %s",
            self.directory,
            variant,
            self.task.value,
            self.max_length,
        )

    def _prepare_text(
        self, config: dict[str, Any], tokenizer_config: dict[str, Any], max_length: int | None
    ) -> None:
        """The tokenizer, its truncation and padding, for a model that reads text."""
        tokenizer = self._tokenizer = load_tokenizer(self.directory)
        self.max_length = self._choose_max_length(max_length, config, tokenizer_config)
        if self.max_length is not None:
            tokenizer.enable_truncation(
                self.max_length,
                direction=str(tokenizer_config.get("truncation_side") or "right"),
            )
        pad_token = token_setting(tokenizer_config, "pad_token")
        pad_id = tokenizer.token_to_id(pad_token) if pad_token else None
        self._pad_id = pad_id if pad_id is not None else int(config.get("pad_token_id") or 0)
        unk_token = token_setting(tokenizer_config, "unk_token")
        self._unk_id = tokenizer.token_to_id(unk_token) if unk_token else None
        # WordPiece (and BPE with a "##"-like prefix) marks the pieces after a word's first.
        self._word_aware = bool(getattr(tokenizer.model, "continuing_subword_prefix", None))
        if self.task is Task.TOKEN_CLASSIFICATION and not self._word_aware:
            logger.info(
                "the tokenizer does not mark sub-words: a token continues a word when no space "
                "touches its start (as transformers' pipeline guesses)"
            )

    def _choose_max_length(
        self, requested: int | None, config: dict[str, Any], tokenizer_config: dict[str, Any]
    ) -> int | None:
        limit = model_max_length(config, tokenizer_config)
        if requested is None:
            # SentenceTransformer.encode reads at most its max_seq_length, often below the
            # model's maximum (all-MiniLM-L6-v2: 256 of 512): longer texts give other vectors.
            shorter = self._sentence.max_seq_length if self._sentence else None
            return min(shorter, limit or shorter) if shorter else limit
        specials = self._tokenizer.num_special_tokens_to_add(False)
        if requested <= specials:
            raise PredictError(
                f"max_length {requested} leaves no room for text beside {specials} special tokens"
            )
        if limit is not None and requested > limit:
            raise PredictError(
                f"max_length {requested} is more than the {limit} tokens this model reads"
            )
        return requested

    def _load_session(self, model_path: Path, threads: int | None) -> ort.InferenceSession:
        # Idle intra-op threads sleep rather than spin: a server runs several requests at once,
        # and spinning threads would take the cores from the others and from the tokenizer.
        session = create_session(model_path, session_options(threads=threads, spinning=False))
        known = {"pixel_values"} if self.task is Task.IMAGE_CLASSIFICATION else _ENCODING_FIELDS
        unknown = [i.name for i in session.get_inputs() if i.name not in known]
        if unknown:
            raise PredictError(
                f"{model_path.name} takes inputs predict cannot fill from text: {unknown}"
            )
        return session

    def predict(self, texts: str | Sequence[str]) -> list[Prediction]:
        """One prediction per text, in order (a single string gives a list of one)."""
        if self._generator is not None:
            raise PredictError(
                f"{self.directory} holds a text-generation model, which writes text",
                hint="give it prompts: generate(prompts)",
            )
        if self._tokenizer is None:
            raise PredictError(
                f"{self.directory} holds an image classification model, which reads no text",
                hint="give it images: predict_images(pixel_values)",
            )
        batch = [texts] if isinstance(texts, str) else list(texts)
        bad = [type(t).__name__ for t in batch if not isinstance(t, str)]
        if bad:
            raise PredictError(f"predict takes strings, not {', '.join(sorted(set(bad)))}")
        encodings = self._tokenizer.encode_batch(batch)
        for index, (text, encoding) in enumerate(zip(batch, encodings)):
            if encoding.overflowing:
                self._long_text(index, text, encoding)
        results: list[Prediction | None] = [None] * len(batch)
        for rows in length_buckets([len(e.ids) for e in encodings], self.batch_size):
            output = self._run([encodings[i] for i in rows])
            for row, index in enumerate(rows):
                results[index] = self._answer(batch[index], encodings[index], output[row])
        return [r for r in results if r is not None]

    def _long_text(self, index: int, text: str, encoding: Encoding) -> None:
        spans = [
            span
            for span, special in zip(encoding.offsets, encoding.special_tokens_mask)
            if not special
        ]
        start, end = (spans[0][0], spans[-1][1]) if spans else (0, 0)
        if self.on_long_text is LongText.ERROR:
            raise TextTooLongError(
                f"text {index + 1} ({len(text)} characters) has more than the "
                f"{self.max_length} tokens the model reads",
                hint="split it, or let predict truncate it (on_long_text='truncate') to "
                f"characters {start}-{end}",
            )
        logger.warning(
            "text %d has more than %d tokens: truncated, only characters %d-%d of %d were read",
            index + 1,
            self.max_length,
            start,
            end,
            len(text),
        )

    def _run(self, encodings: list[Encoding]) -> np.ndarray:
        """The model's main output for a batch, padded on the right to its longest text
        (encoder models number positions from the left, so right padding changes nothing)."""
        length = max(len(e.ids) for e in encodings)
        feed = {}
        for name, field, dtype, fill in self._feed:
            values = np.full((len(encodings), length), fill, dtype=dtype)
            for row, encoding in enumerate(encodings):
                row_values = getattr(encoding, field)
                values[row, : len(row_values)] = row_values
            feed[name] = values
        return self._session.run([self._output], feed)[0].astype(np.float32)

    def _answer(self, text: str, encoding: Encoding, output: np.ndarray) -> Prediction:
        truncated = bool(encoding.overflowing)
        size = len(encoding.ids)
        if self.task is Task.TOKEN_CLASSIFICATION:
            entities = aggregate(
                text,
                self._token_scores(text, encoding, output),
                self._label,
                self.aggregation_strategy,
            )
            return EntityPrediction(text, entities, truncated)
        if self.task is Task.SEQUENCE_CLASSIFICATION:
            scores = label_scores(output, self._config.get("problem_type"))
            best = int(scores.argmax())
            return LabelPrediction(text, self._label(best), float(scores[best]), truncated)
        # The encoding is unpadded: its tokens are exactly those under the attention mask.
        hidden = output[:size]
        vector = sentence_vector(hidden, self.pooling, normalize=self.normalize)
        return VectorPrediction(text, vector, truncated)

    def _token_scores(self, text: str, encoding: Encoding, output: np.ndarray) -> list[TokenScores]:
        """The probabilities of each token of the text (special tokens left out)."""
        scores = softmax(output[: len(encoding.ids)])
        tokens = []
        for i, (start, end) in enumerate(encoding.offsets):
            if encoding.special_tokens_mask[i]:
                continue
            continues = continues_word(
                text,
                encoding.tokens[i],
                start,
                end,
                word_aware=self._word_aware,
                unknown=encoding.ids[i] == self._unk_id,
            )
            tokens.append(TokenScores(scores[i], start, end, continues))
        return tokens

    def generate(self, prompts: str | Sequence[str], **settings: Any) -> list[GeneratedText]:
        """What a text-generation model writes after each prompt: `OnnxGenerator.generate`,
        whose keyword arguments `settings` are (max_new_tokens, do_sample, temperature, top_p,
        stop, raw, seed)."""
        if self._generator is None:
            raise PredictError(
                f"{self.directory} holds a {self.task.value} model, which does not generate",
                hint="convert a *ForCausalLM checkpoint for text-generation",
            )
        return self._generator.generate(prompts, **settings)

    def predict_images(self, pixel_values: np.ndarray) -> list[ImagePrediction]:
        """The label of each image of `pixel_values` (batch x channels x height x width, or
        one image without the batch axis), prepared as the model's image processor does."""
        if self.task is not Task.IMAGE_CLASSIFICATION:
            raise PredictError(
                f"{self.directory} holds a {self.task.value} model, which reads text",
                hint="give it texts: predict(texts)",
            )
        try:
            pixels = np.asarray(pixel_values, dtype=np.float32)
        except ValueError as e:  # images of different sizes in one list
            raise PredictError(
                f"cannot read the images as one array: {one_line(e)}",
                hint="give images of one size (batch x channels x height x width)",
            ) from e
        if pixels.ndim == 3:
            pixels = pixels[None]
        self._check_image_shape(pixels.shape)
        predictions = []
        for first in range(0, len(pixels), self.batch_size):
            batch = pixels[first : first + self.batch_size]
            try:
                output = self._session.run([self._output], {"pixel_values": batch})[0]
            except RUNTIME_ERRORS as e:  # a size the declared shape admits, the graph not
                raise PredictError(
                    f"the model cannot run on images of {batch.shape[2]}x{batch.shape[3]}: "
                    f"{one_line(e)}",
                    hint="resize the images to a size the model was validated at "
                    "(manifest.json, outputs[].validation.input_shapes)",
                ) from e
            for row, logits in enumerate(output, first + 1):
                scores = label_scores(logits, self._config.get("problem_type"))
                best = int(scores.argmax())
                predictions.append(ImagePrediction(row, self._label(best), float(scores[best])))
        return predictions

    def _check_image_shape(self, shape: tuple[int, ...]) -> None:
        """Refuse images the graph does not take, saying what it takes: a size the graph
        declares is fixed at export (for ViT-like models, the model's one resolution)."""
        declared = self._session.get_inputs()[0].shape
        if len(shape) != 4:
            raise PredictError(
                f"pixel_values must be images x channels x height x width, not {list(shape)}"
            )
        if isinstance(declared[1], int) and shape[1] != declared[1]:
            raise PredictError(f"the model takes {declared[1]}-channel images, not {shape[1]}")
        fixed = [d if isinstance(d, int) else None for d in declared[2:]]
        if any(f is not None and f != got for f, got in zip(fixed, shape[2:])):
            size = "x".join(str(f) for f in fixed)
            why = (
                f"its fixed resolution: {self._why_fixed}"
                if self._why_fixed
                else "its size was fixed at export"
            )
            raise PredictError(
                f"the model takes {size} images only ({why}), not {shape[2]}x{shape[3]}",
                hint=f"resize the images to {size} (height x width) first",
            )

    def _label(self, index: int) -> str:
        return self.labels.get(index, f"LABEL_{index}")
