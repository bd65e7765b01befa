"""A model is one or two files: `<name>.onnx`, and `<name>.onnx.data` when its weights are
external. Moving or removing a model moves or removes both, keeping the data file's name
(the model file refers to it by that name)."""

from __future__ import annotations

import shutil
from pathlib import Path


def data_file_of(model: Path) -> str | None:
    """The name of the model's external data file, if it has one beside it."""
    data = model.with_name(model.name + ".data")
    return data.name if data.is_file() else None


def move_model(source: Path, target: Path) -> None:
    """Move a model and its external data; the data file's name is kept, so it still resolves."""
    shutil.move(str(source), str(target))
    data = source.with_name(source.name + ".data")
    if data.is_file():
        shutil.move(str(data), str(target.with_name(data.name)))


def remove_model(path: Path) -> None:
    """Remove a model file and its external data, if any."""
    for candidate in (path, path.with_name(path.name + ".data")):
        candidate.unlink(missing_ok=True)


def copy_model(source: Path, target: Path) -> None:
    """Copy a model file and its external data, if any, keeping the data file's name."""
    shutil.copyfile(source, target)
    data = source.with_name(source.name + ".data")
    if data.is_file():
        shutil.copyfile(data, target.with_name(data.name))
