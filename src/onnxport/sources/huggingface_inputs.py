"""The example inputs of a Hugging Face checkpoint's model, and the shapes it is traced and
validated at: tokenized text (random ids without a tokenizer), or images, at the sides
PyTorch takes."""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass, replace
from typing import Any

import torch

from onnxport.artifact.records.source import SIZED_POSITION_EMBEDDINGS
from onnxport.errors import InternalError, one_line
from onnxport.samples import sample_texts
from onnxport.sources.base import Source

logger = logging.getLogger(__name__)


TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
DEFAULT_TEXT_SHAPES = ((1, 8), (2, 37), (4, 128))
TEXT_EXAMPLE_SHAPE = (2, 13)
DEFAULT_VISION_BATCHES = (1, 2, 4)
RESOLUTION_STEP = 32
"""Other image sides are multiples of this: the total stride of most convolutional backbones."""


def _forward_parameters(model: torch.nn.Module) -> set[str]:
    return set(inspect.signature(model.forward).parameters)


def text_input_names(model: torch.nn.Module, config: Any, tokenizer: Any | None) -> list[str]:
    accepted = _forward_parameters(model)
    wanted = list(getattr(tokenizer, "model_input_names", None) or TEXT_INPUTS)
    if "input_ids" not in wanted:
        wanted.insert(0, "input_ids")
    names = [n for n in TEXT_INPUTS if n in wanted and n in accepted]
    if "token_type_ids" in names and getattr(config, "type_vocab_size", 1) in (None, 0):
        names.remove("token_type_ids")
    return names


class TextInputs:
    """Example inputs for text models: tokenized résumé text, or random ids without a tokenizer."""

    def __init__(self, names: list[str], config: Any, tokenizer: Any | None) -> None:
        self.names = names
        self.tokenizer = tokenizer
        self.vocab_size = int(getattr(config, "vocab_size", 0) or 0)
        self.pad_id = getattr(config, "pad_token_id", None) or 0

    def __call__(self, batch: int, length: int, seed: int) -> dict[str, torch.Tensor]:
        if self.tokenizer is not None:
            return self._tokenized(batch, length, seed)
        return self._random(batch, length, seed)

    def _tokenized(self, batch: int, length: int, seed: int) -> dict[str, torch.Tensor]:
        # Long texts fill every position; the last row is shorter, so padding is exercised.
        lines = max(1, length // 12 + 1)
        texts = sample_texts(batch, min_lines=lines, offset=seed)
        if batch > 1:
            texts[-1] = texts[-1][: max(8, len(texts[-1]) // 3)]
        return self.encode(texts, length)

    def encode(self, texts: list[str], length: int, *, pad: bool = True) -> dict[str, torch.Tensor]:
        """Tokenize `texts`, truncated to `length` tokens and padded to it (`pad`) or to the
        longest of them."""
        if self.tokenizer is None:
            raise ValueError("no tokenizer to encode text with")
        encoded = self.tokenizer(
            texts,
            padding="max_length" if pad else "longest",
            truncation=True,
            max_length=length,
            return_tensors="pt",
        )
        shape = encoded["input_ids"].shape
        return {
            name: encoded[name].to(torch.int64)
            if name in encoded
            else torch.zeros(shape, dtype=torch.int64)
            for name in self.names
        }

    def _random(self, batch: int, length: int, seed: int) -> dict[str, torch.Tensor]:
        generator = torch.Generator().manual_seed(seed)
        low = min(5, max(self.vocab_size - 1, 0))
        ids = torch.randint(
            low, max(self.vocab_size, low + 1), (batch, length), generator=generator
        )
        mask = torch.ones((batch, length), dtype=torch.int64)
        if batch > 1 and length > 2:
            mask[-1, length // 2 :] = 0
            ids[-1, length // 2 :] = self.pad_id
        out = {"input_ids": ids, "attention_mask": mask}
        out["token_type_ids"] = torch.zeros((batch, length), dtype=torch.int64)
        return {name: out[name] for name in self.names}


class VisionInputs:
    def __init__(self, channels: int, image_size: int) -> None:
        self.channels = channels
        self.image_size = image_size

    def __call__(self, batch: int, size: int, seed: int) -> dict[str, torch.Tensor]:
        generator = torch.Generator().manual_seed(seed)
        pixels = torch.randn((batch, self.channels, size, size), generator=generator)
        return {"pixel_values": pixels}


def _image_size(config: Any) -> int:
    size = getattr(config, "image_size", 224)
    if isinstance(size, (list, tuple)):
        size = size[0]
    if isinstance(size, dict):
        size = size.get("height", 224)
    return int(size)


def other_resolutions(size: int) -> tuple[int, int]:
    """Two image sides besides `size` to validate at: near 3/4 and 5/4 of it, in steps of
    `RESOLUTION_STEP` (224: 160 and 288), both above it where a smaller one would vanish."""
    step = RESOLUTION_STEP
    larger = max(step, -(-size * 5 // 4 // step) * step)
    if larger <= size:
        larger = size + step
    smaller = size * 3 // 4 // step * step
    return (smaller, larger) if step <= smaller < size else (larger, larger + step)


def _pytorch_refusal(model: torch.nn.Module, factory: VisionInputs, size: int) -> str | None:
    """Why PyTorch does not run the model on images of other sides than `size`, or None when
    it does: convolutional backbones and models that interpolate their position embeddings
    (DINOv2) do; models whose position embeddings are sized for one resolution (ViT) refuse."""
    try:
        with torch.no_grad():
            for side in other_resolutions(size):
                model(**factory(1, side, 0))
    except Exception as e:  # model code raises anything on a size it cannot take
        logger.info("the model takes %dx%d images only: %s", size, size, one_line(e, 200))
        return SIZED_POSITION_EMBEDDINGS
    return None


@dataclass(frozen=True)
class VisionSettings:
    """How a vision model is fed, traced and validated."""

    factory: VisionInputs
    dynamic_axes: dict[str, dict[int, str]]
    shapes: tuple[tuple[int, int], ...]
    example_shape: tuple[int, int]
    fixed_resolution: int | None
    fixed_resolution_reason: str | None


def _fixed_settings(factory: VisionInputs, reason: str) -> VisionSettings:
    size = factory.image_size
    return VisionSettings(
        factory,
        {"pixel_values": {0: "batch"}},
        tuple((b, size) for b in DEFAULT_VISION_BATCHES),
        (2, size),
        size,
        reason,
    )


def vision_settings(model: torch.nn.Module, config: Any) -> VisionSettings:
    """Height and width vary where PyTorch takes other sizes (validated at two of them
    besides the batch sizes); otherwise the resolution is fixed, and said why.

    A model that takes any size is traced at another side than its own: model code may
    take a shortcut at its own resolution (DINOv2 returns its position embeddings as they
    are instead of interpolating them), and the graph would keep that shortcut's sizes."""
    size = _image_size(config)
    factory = VisionInputs(int(getattr(config, "num_channels", 3)), size)
    refusal = _pytorch_refusal(model, factory, size)
    if refusal is not None:
        return _fixed_settings(factory, refusal)
    others = other_resolutions(size)
    return VisionSettings(
        factory,
        {"pixel_values": {0: "batch", 2: "height", 3: "width"}},
        (*((b, size) for b in DEFAULT_VISION_BATCHES), *((1, s) for s in others)),
        (2, others[0]),
        None,
        None,
    )


def native_side(source: Source) -> int | None:
    """The image side a vision source's config names, when the source takes other sides too
    (None: not images, or its resolution is fixed already)."""
    factory = source.make_inputs
    if source.fixed_resolution is not None or not isinstance(factory, VisionInputs):
        return None
    return factory.image_size


def with_fixed_resolution(source: Source, reason: str) -> Source:
    """`source` with its images fixed at the side its config names, for a model whose
    exported graph takes no other side although PyTorch does (`reason`: why)."""
    if native_side(source) is None:
        raise InternalError(f"{source.path} has no image side to fix")
    settings = _fixed_settings(source.make_inputs, reason)  # type: ignore[arg-type]
    return replace(
        source,
        dynamic_axes=settings.dynamic_axes,
        default_shapes=settings.shapes,
        example_shape=settings.example_shape,
        fixed_resolution=settings.fixed_resolution,
        fixed_resolution_reason=settings.fixed_resolution_reason,
    )
