"""What predict reads of a directory's tokenizer files, shared by `OnnxPredictor` and
`OnnxGenerator`: the `tokenizers` tokenizer of tokenizer.json, the special tokens of
tokenizer_config.json, and the most tokens the model reads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from onnxport.errors import PredictError, one_line

# transformers saves a huge sentinel as model_max_length when a tokenizer has no limit.
_NO_LIMIT = 10**20
# Models that number positions from pad_token_id + 1 (RoBERTa's scheme): their
# max_position_embeddings holds pad_token_id + 1 more positions than the longest input.
_PADDING_OFFSET_MODELS = frozenset(
    {"roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "data2vec-text", "mpnet"}
)


def token_setting(tokenizer_config: dict[str, Any], key: str) -> str | None:
    """A special token from tokenizer_config.json: a string, or an AddedToken dict."""
    value = tokenizer_config.get(key)
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def model_max_length(config: dict[str, Any], tokenizer_config: dict[str, Any]) -> int | None:
    """The most tokens the model reads: the smaller of its position table (config.json) and
    the tokenizer's `model_max_length` (tokenizer_config.json); None when neither says."""
    limits = []
    positions = config.get("max_position_embeddings", config.get("n_positions"))
    if isinstance(positions, int) and positions > 0:
        if config.get("model_type") in _PADDING_OFFSET_MODELS:
            positions -= int(config.get("pad_token_id") or 0) + 1
        limits.append(positions)
    declared = tokenizer_config.get("model_max_length")
    if isinstance(declared, (int, float)) and 0 < declared < _NO_LIMIT:
        limits.append(int(declared))
    return min(limits) if limits else None


def load_tokenizer(directory: Path) -> Tokenizer:
    """The tokenizer of `directory`'s tokenizer.json, without padding or truncation."""
    path = directory / "tokenizer.json"
    if not path.is_file():
        raise PredictError(
            f"{directory} holds no tokenizer.json, which predict needs",
            hint="convert a checkpoint saved with its (fast) tokenizer",
        )
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises plain Exceptions for a bad file
        raise PredictError(f"cannot load {path}: {one_line(e, 200)}") from e
    # Callers pad (and cut) per batch; a saved padding or truncation setting would fight it.
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer
