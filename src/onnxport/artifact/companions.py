"""The checkpoint's companion files (tokenizer, configs) as published beside the model, so
that standard loaders of both transformers generations open the output directory."""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

TOKENIZER_CONFIG = "tokenizer_config.json"
# transformers 5 saves a tokenizer that has no model-specific class as "TokenizersBackend", a
# name transformers 4 (what Optimum pins) refuses; both generations read
# "PreTrainedTokenizerFast" (5 as an alias of TokenizersBackend).
PORTABLE_TOKENIZER_CLASSES = {"TokenizersBackend": "PreTrainedTokenizerFast"}


def portable_tokenizer_config(data: dict[str, Any]) -> dict[str, Any]:
    """`tokenizer_config.json` as both transformers generations read it: every key kept, a
    tokenizer class only one of them knows renamed to the one both know."""
    name = data.get("tokenizer_class")
    if isinstance(name, str) and name in PORTABLE_TOKENIZER_CLASSES:
        return {**data, "tokenizer_class": PORTABLE_TOKENIZER_CLASSES[name]}
    return data


def publish_companions(files: Mapping[str, Path], directory: Path) -> None:
    """Copy the companion files (published name -> file) into `directory`, the tokenizer
    configuration made portable (`portable_tokenizer_config`); a file that is not a JSON
    object is copied as it is. A name may be a path (`1_Pooling/config.json`)."""
    for name, file in files.items():
        target = directory / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if name == TOKENIZER_CONFIG:
            try:
                data = json.loads(file.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                data = None
            if isinstance(data, dict) and portable_tokenizer_config(data) != data:
                text = json.dumps(portable_tokenizer_config(data), indent=2, ensure_ascii=False)
                target.write_text(text + "\n", encoding="utf-8")
                continue
        shutil.copy2(file, target)
