"""Calibration samples for static quantization: real text, as the model will see it.

Where the text comes from, first found: `quantize.calibration_file` (plain text, one sample
per line, or JSON lines with `text`, or `words` as in an evaluation file), else the texts of
`validation.eval_file`, else built-in English sentences. Each text is tokenized alone and
unpadded: padding to a fixed length would make most of what calibration sees padding. Only a
source without a tokenizer is calibrated on generated inputs, and the record says so.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from onnxport.errors import ConfigError
from onnxport.request.config import ConversionConfig
from onnxport.samples import sample_texts

if TYPE_CHECKING:  # sources import torch; the passes run without it
    from onnxport.sources.base import Source

logger = logging.getLogger(__name__)

MAX_CALIBRATION_TOKENS = 256
# Share of unknown tokens above which the built-in English text says little to a tokenizer.
UNKNOWN_SHARE_LIMIT = 0.2


@dataclass(frozen=True)
class Calibration:
    inputs: tuple[dict[str, np.ndarray], ...]
    origin: str
    """Where the samples came from, for the record."""
    warning: str | None = None

    def details(self) -> dict[str, object]:
        found: dict[str, object] = {"samples": len(self.inputs), "origin": self.origin}
        if self.warning:
            found["warning"] = self.warning
        return found


def read_texts(path: Path, *, what: str) -> list[str]:
    """The texts of a file: a line each, or a JSON object's `text` / joined `words`."""
    try:
        lines = [ln.strip() for ln in Path(path).read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read {what} {path}: {e}") from e
    texts = []
    for line in filter(None, lines):
        if line.startswith("{"):
            try:
                item = json.loads(line)
            except json.JSONDecodeError:
                item = None
            if isinstance(item, dict):
                if isinstance(item.get("text"), str):
                    line = item["text"]
                elif isinstance(item.get("words"), list):
                    line = " ".join(str(w) for w in item["words"])
        texts.append(line)
    if not texts:
        raise ConfigError(f"{what} {path} has no samples")
    return texts


def _texts(config: ConversionConfig) -> tuple[list[str], str]:
    count = config.quantize.calibration_samples
    if config.quantize.calibration_file is not None:
        file = config.quantize.calibration_file
        texts = read_texts(file, what="quantize.calibration_file")
        return texts[:count], f"quantize.calibration_file {Path(file).name}"
    if config.validation.eval_file is not None:
        texts = read_texts(Path(config.validation.eval_file), what="validation.eval_file")
        return texts[:count], f"validation.eval_file {Path(config.validation.eval_file).name}"
    # One to four résumé lines per sample: lengths like those of real inputs.
    texts = [sample_texts(1, min_lines=1 + i % 4, offset=i)[0] for i in range(count)]
    return texts, "built-in English sentences"


def _unknown_share(source: Source, texts: list[str]) -> float:
    unknown = getattr(source.tokenizer, "unk_token_id", None)
    if unknown is None:
        return 0.0
    ids = [i for text in texts for i in source.tokenizer(text)["input_ids"]]
    return sum(i == unknown for i in ids) / max(len(ids), 1)


def calibration(source: Source, config: ConversionConfig) -> Calibration:
    """The calibration samples of this conversion, one input dict each, and where from."""
    if source.encode is None:
        if config.quantize.calibration_file is not None:
            raise ConfigError(
                "quantize.calibration_file needs a tokenizer in the checkpoint",
                hint="leave calibration_file out to calibrate on generated inputs",
            )
        _, size = source.example_shape
        length = max(size, max(s for _, s in source.default_shapes))
        inputs = tuple(
            {k: v.numpy() for k, v in source.make_inputs(1, length, 1000 + i).items()}
            for i in range(config.quantize.calibration_samples)
        )
        warning = "no tokenizer: calibrated on generated inputs, not real text"
        return Calibration(inputs, "generated inputs", warning)
    texts, origin = _texts(config)
    limit = min(MAX_CALIBRATION_TOKENS, max(s for _, s in source.default_shapes))
    inputs = tuple(
        {k: v.numpy() for k, v in source.encode([text], limit, pad=False).items()} for text in texts
    )
    warning = None
    if origin.startswith("built-in") and _unknown_share(source, texts) > UNKNOWN_SHARE_LIMIT:
        warning = (
            "most of the built-in English text is unknown to this tokenizer: give "
            "quantize.calibration_file with text in the model's language"
        )
        logger.warning("calibration: %s", warning)
    return Calibration(inputs, origin, warning)


GATE_TEXTS = 16
GATE_TOKENS = 128


def gate_texts(source: Source, config: ConversionConfig) -> tuple[np.ndarray, ...]:
    """A language model's texts for its variants' gate (`verify.next_token`), token ids of
    `GATE_TOKENS` at most each: the calibration file's, the eval file's, else built-in text
    long enough (four lines) to be read past its first sentence."""
    if source.tokenizer is None:
        return ()
    if config.quantize.calibration_file or config.validation.eval_file:
        texts = _texts(config)[0][:GATE_TEXTS]
    else:
        texts = sample_texts(GATE_TEXTS, min_lines=4)
    ids = [np.asarray(source.tokenizer(t)["input_ids"][:GATE_TOKENS]) for t in texts]
    return tuple(i for i in ids if len(i) >= 2)
