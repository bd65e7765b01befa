"""The files of a Hugging Face checkpoint directory: which hold the weights (safetensors, or
pickles only when allowed), whether they are whole, whether config.json fits them, and which
are published beside the ONNX model so that standard loaders open the output directory."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from onnxport.errors import SourceError

SAFETENSORS_FILES = ("model.safetensors", "model.safetensors.index.json")
PICKLE_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json")
# Files published beside the ONNX model so that standard loaders open the output directory.
COMPANION_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    # transformers 5 saves a chat template here, not in tokenizer_config.json.
    "chat_template.jinja",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
    "tokenizer.model",
    "preprocessor_config.json",
    "image_processor_config.json",
)


def is_huggingface_checkpoint(path: Path) -> bool:
    return (path / "config.json").is_file()


def read_config_json(path: Path) -> dict[str, Any]:
    config_file = path / "config.json"
    if not config_file.is_file():
        raise SourceError(
            f"{path} has no config.json, so it is not a Hugging Face checkpoint",
            hint="point at the checkpoint directory written by save_pretrained()",
        )
    try:
        data = json.loads(config_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SourceError(f"{config_file} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise SourceError(f"{config_file} must hold a JSON object, not {type(data).__name__}")
    return data


def weight_files(path: Path, *, allow_pickle: bool) -> tuple[list[Path], bool]:
    """The weight files to load, and whether they are safetensors."""
    safetensors = sorted(path.glob("*.safetensors"))
    if safetensors or (path / SAFETENSORS_FILES[1]).is_file():
        if not safetensors:
            raise SourceError(f"{path}: the safetensors index names shards that are missing")
        return safetensors, True
    pickles = [path / name for name in PICKLE_FILES if (path / name).is_file()]
    pickles += sorted(path.glob("pytorch_model-*.bin"))
    if pickles:
        if not allow_pickle:
            raise SourceError(
                f"{path} holds pickle-based weights ({pickles[0].name}), which can run code "
                "when loaded; onnxport loads safetensors only by default",
                hint="re-save the checkpoint with safe_serialization=True, "
                "or set source.allow_pickle: true if you trust its origin",
            )
        return pickles, False
    raise SourceError(
        f"{path} has no weights (model.safetensors)",
        hint="check that training finished and saved the model",
    )


def check_safetensors(file: Path) -> list[str]:
    """Fail early on a truncated or corrupt safetensors file, naming it; its tensor names."""
    size = file.stat().st_size
    try:
        with file.open("rb") as f:
            (header_len,) = struct.unpack("<Q", f.read(8))
            if header_len <= 0 or 8 + header_len > size:
                raise ValueError("header length beyond end of file")
            header = json.loads(f.read(header_len))
        ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
    # A header that is JSON but not a safetensors header (a list, entries without offsets).
    except (struct.error, ValueError, UnicodeDecodeError, AttributeError, KeyError, TypeError) as e:
        raise SourceError(
            f"{file} is not a valid safetensors file ({e}); it may be truncated",
            hint="copy the checkpoint again from the training output",
        ) from e
    expected = 8 + header_len + (max(ends) if ends else 0)
    if expected != size:
        raise SourceError(
            f"{file} is truncated or padded: {size} bytes, its header describes {expected}",
            hint="copy the checkpoint again from the training output",
        )
    return [k for k in header if k != "__metadata__"]


# config.json keys that count layers; a model is built with that many before its weights load.
LAYER_KEYS = (
    "num_hidden_layers",
    "n_layer",
    "n_layers",
    "num_layers",
    "encoder_layers",
    "decoder_layers",
)
# Layers shared (ALBERT) or built without weights leave fewer numbered layers in the weights
# than the config counts: only a count far beyond them is refused.
MAX_LAYERS_WITHOUT_WEIGHTS = 1024


def check_layer_counts(path: Path, raw: dict[str, Any], tensor_names: list[str]) -> None:
    """Refuse a config.json that counts far more layers than the weights hold: building them
    would take minutes and all the memory before the weights could be found not to fit."""
    indices: dict[str, int] = {}
    for name in tensor_names:
        parts = name.split(".")
        for i, part in enumerate(parts):
            if part.isdigit():
                prefix = ".".join(parts[:i])
                indices[prefix] = max(indices.get(prefix, 0), int(part) + 1)
    held = max(indices.values(), default=0)
    for key in LAYER_KEYS:
        value = raw.get(key)
        if isinstance(value, int) and value > max(MAX_LAYERS_WITHOUT_WEIGHTS, 4 * held):
            raise SourceError(
                f"{path}/config.json says {key} = {value}, but the weights hold "
                f"{held} numbered layers",
                hint="check that config.json belongs to these weights",
            )
