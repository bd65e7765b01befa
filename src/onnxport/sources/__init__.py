"""Loaders: one per kind of input, each yielding the same `Source`.

`load_source` picks the loader from what the path is: a directory with config.json is a
Hugging Face checkpoint; a `.pt2` archive a `torch.export` program; a TorchScript archive a
TorchScript module; a weights file (safetensors, or a pickle with `allow_pickle`) a state
dict, which needs the code that builds its model (`factory`) and an `input_spec`.
"""

from __future__ import annotations

from pathlib import Path

from onnxport.errors import SourceError
from onnxport.request.sections import SourceConfig
from onnxport.sources.base import InputFactory, Source
from onnxport.sources.checkpoint_files import is_huggingface_checkpoint
from onnxport.sources.huggingface import load_huggingface
from onnxport.sources.state_dict import load_state_dict_source, weights_format
from onnxport.sources.torch_export import is_torch_export_archive, load_torch_export
from onnxport.sources.torchscript import is_torchscript_archive, load_torchscript

__all__ = ["InputFactory", "Source", "load_source"]


def _load_file(path: Path, settings: SourceConfig) -> Source:
    programs = (
        ("torch.export program", is_torch_export_archive, load_torch_export),
        ("TorchScript module", is_torchscript_archive, load_torchscript),
    )
    for what, is_kind, load in programs:
        if is_kind(path):
            if settings.factory is not None:
                raise SourceError(
                    f"{path} is a {what}, which holds its model's code: source.factory is "
                    "for weights files",
                    hint="leave source.factory out",
                )
            return load(path, settings)
    if settings.factory is not None or weights_format(path) is not None:
        return load_state_dict_source(path, settings)
    raise SourceError(
        f"{path} is a file onnxport does not know how to load",
        hint="pass a Hugging Face checkpoint directory (config.json and model.safetensors), "
        "a torch.export program (.pt2), a TorchScript module (.pt), or a weights file with "
        "source.factory and source.input_spec",
    )


def load_source(path: Path, settings: SourceConfig | None = None) -> Source:
    """Load whatever `path` holds as a `Source`, or raise a `SourceError` that says why not."""
    settings = settings or SourceConfig()
    path = Path(path)
    try:
        exists = path.exists()
    except OSError as e:  # a symlink loop, a path too long
        raise SourceError(f"cannot read the source path {path}: {e.strerror or e}") from e
    broken = [p for p in (path, *path.parents) if not exists and p.is_symlink() and not p.exists()]
    if broken:
        raise SourceError(
            f"the source path {path} goes through {broken[0]}, a symbolic link that leads "
            "nowhere (dangling, or a loop)",
            hint="point at the checkpoint itself",
        )
    if not exists:
        raise SourceError(f"source not found: {path}", hint="check the path")
    if not path.is_dir():
        return _load_file(path, settings)
    if settings.factory is not None:
        raise SourceError(
            f"source.factory loads a weights file, and {path} is a directory",
            hint="pass the .safetensors file itself, or leave source.factory out for a "
            "Hugging Face checkpoint directory",
        )
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
