"""A sentence-transformers checkpoint: what `SentenceTransformer.encode` does after the
transformer, read from its on-disk format, so that the predictor computes the same sentence
vectors from the ONNX model's token vectors.

`modules.json` lists the modules in order, each with its `type` and the `path` of its
directory: the Transformer at the root (the model onnxport converts), a Pooling module whose
`config.json` sets one `pooling_mode_*` key true, and optionally a Normalize module.
`sentence_bert_config.json` holds the `max_seq_length` texts are truncated to.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from onnxport.artifact.records.source import Pooling, SentenceEmbeddingRecord
from onnxport.errors import SourceError, one_line

MODULES_FILE = "modules.json"
SETTINGS_FILE = "sentence_bert_config.json"
# Published as they are, so that sentence-transformers opens the output directory as well.
_ROOT_FILES = (MODULES_FILE, SETTINGS_FILE, "config_sentence_transformers.json")
_MODULE_CONFIG = "config.json"
_POOLING_MODES = {
    "pooling_mode_mean_tokens": Pooling.MEAN,
    "pooling_mode_cls_token": Pooling.CLS,
    "pooling_mode_max_tokens": Pooling.MAX,
}
_MODULE_ORDERS = (("Transformer", "Pooling"), ("Transformer", "Pooling", "Normalize"))
_UNSUPPORTED_HINT = (
    "onnxport reproduces a Transformer, Pooling (mean, cls or max) and Normalize; "
    f"remove {MODULES_FILE} to convert the transformer alone (its token vectors)"
)


@dataclass(frozen=True)
class SentenceModules:
    """A sentence-transformers checkpoint's modules, and its files to publish."""

    record: SentenceEmbeddingRecord
    files: dict[str, Path]
    """Published name (`1_Pooling/config.json`) -> the checkpoint's file."""


def _read_json(file: Path) -> Any:
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise SourceError(
            f"cannot read {file}: {one_line(e, 200)}",
            hint="copy the sentence-transformers checkpoint again",
        ) from e


def _module_type(entry: Any, file: Path) -> tuple[str, str]:
    """An entry's class name (`Pooling` of `sentence_transformers.models.Pooling`) and path."""
    if not isinstance(entry, dict) or not isinstance(entry.get("type"), str):
        raise SourceError(
            f"{file} lists a module without a type: {entry!r}",
            hint="save the model with SentenceTransformer.save(), which writes it",
        )
    return entry["type"].rsplit(".", 1)[-1], str(entry.get("path") or "")


def _inside(path: Path, relative: str, file: Path) -> PurePosixPath:
    """`relative` as a path inside the checkpoint; a path that leaves it is refused."""
    inner = PurePosixPath(relative)
    if inner.is_absolute() or ".." in inner.parts:
        raise SourceError(
            f"{file} names the module directory {relative!r}, outside {path}",
            hint="module paths are directories inside the checkpoint (1_Pooling)",
        )
    return inner


def _pooling(path: Path, relative: PurePosixPath) -> Pooling:
    file = path / relative / _MODULE_CONFIG
    if not file.is_file():
        raise SourceError(
            f"{path}/{MODULES_FILE} names a Pooling module, and {file} is missing",
            hint="copy the sentence-transformers checkpoint again, with its module directories",
        )
    config = _read_json(file)
    modes = (
        sorted(k for k, v in config.items() if k.startswith("pooling_mode_") and v is True)
        if isinstance(config, dict)
        else []
    )
    if len(modes) != 1 or modes[0] not in _POOLING_MODES:
        raise SourceError(
            f"{file} pools with {' + '.join(modes) or 'no mode'}, which onnxport does not "
            f"compute (it computes {', '.join(_POOLING_MODES)}, one of them)",
            hint=_UNSUPPORTED_HINT,
        )
    return _POOLING_MODES[modes[0]]


def _max_seq_length(path: Path) -> int | None:
    file = path / SETTINGS_FILE
    if not file.is_file():
        return None
    settings = _read_json(file)
    value = settings.get("max_seq_length") if isinstance(settings, dict) else None
    return value if isinstance(value, int) and value > 0 else None


def read_sentence_modules(path: Path) -> SentenceModules | None:
    """The sentence-transformers modules of the checkpoint at `path`; None without
    `modules.json` (a plain transformers checkpoint)."""
    file = path / MODULES_FILE
    if not file.is_file():
        return None
    entries = _read_json(file)
    if not isinstance(entries, list):
        raise SourceError(
            f"{file} must hold a list of modules, not {type(entries).__name__}",
            hint="save the model with SentenceTransformer.save(), which writes it",
        )
    modules = [_module_type(entry, file) for entry in entries]
    names = tuple(name for name, _ in modules)
    if names not in _MODULE_ORDERS or modules[0][1] != "":
        listed = ", ".join(f"{name} ({where or 'root'})" for name, where in modules)
        raise SourceError(
            f"{file} lists {listed}: onnxport converts the Transformer at the root and "
            "cannot compute the other modules after it",
            hint=_UNSUPPORTED_HINT,
        )
    pooling_dir = _inside(path, modules[1][1], file)
    files = {name: path / name for name in _ROOT_FILES if (path / name).is_file()}
    files[str(pooling_dir / _MODULE_CONFIG)] = path / pooling_dir / _MODULE_CONFIG
    record = SentenceEmbeddingRecord(
        pooling=_pooling(path, pooling_dir),
        normalize=names[-1] == "Normalize",
        max_seq_length=_max_seq_length(path),
    )
    return SentenceModules(record, files)
