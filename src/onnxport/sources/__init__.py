"""Loaders: one per kind of input, each yielding the same `Source`."""

from __future__ import annotations

from pathlib import Path

from onnxport.config import SourceConfig
from onnxport.errors import SourceError
from onnxport.sources.base import InputFactory, Source
from onnxport.sources.huggingface import is_huggingface_checkpoint, load_huggingface

__all__ = ["InputFactory", "Source", "load_source"]


def load_source(path: Path, settings: SourceConfig | None = None) -> Source:
    """Load whatever `path` holds as a `Source`, or raise a `SourceError` that says why not."""
    settings = settings or SourceConfig()
    path = Path(path)
    try:
        exists = path.exists()
    except OSError as e:  # a symlink loop, a path too long
        raise SourceError(f"cannot read the source path {path}: {e.strerror or e}") from e
    if not exists:
        raise SourceError(f"source not found: {path}", hint="check the path")
    if path.is_dir():
        if not is_huggingface_checkpoint(path) and (path / "checkpoint").is_dir():
            raise SourceError(
                f"{path} looks like a training output, not a checkpoint",
                hint=f"pass {path / 'checkpoint'}",
            )
        return load_huggingface(
            path,
            task=settings.task,
            allow_pickle=settings.allow_pickle,
            trust_remote_code=settings.trust_remote_code,
        )
    raise SourceError(
        f"{path} is a file; onnxport converts Hugging Face checkpoint directories",
        hint="pass the directory that holds config.json and model.safetensors",
    )
