"""Load a state dict with the code that builds its model: `source.factory: module:callable`.

The weights are a safetensors file by default. A pickle (`torch.save`: `.pt`, `.pth`,
`.bin`) loads only with `allow_pickle`, and then with `torch.load(weights_only=True)`,
which rebuilds tensors and containers but no other Python object.

The factory is user code, and importing it runs that code: that is the point, and why it
happens only when the user names it. `module` is imported as `python -c "import module"`
would from the current directory (which is put on `sys.path` for the import), or from
PYTHONPATH; `callable` (a dotted path inside it) is called without arguments and must
return the `nn.Module` the weights belong to. The input spec (`source.input_spec`)
describes its inputs.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import sys
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from onnxport.artifact.records.source import SourceKind
from onnxport.errors import SourceError, one_line
from onnxport.request.sections import SourceConfig
from onnxport.sources.base import Source
from onnxport.sources.checkpoint_files import check_safetensors
from onnxport.sources.plain import plain_source, read_input_spec

logger = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
_PICKLE_PROTOCOL_MARK = 0x80


def weights_format(path: Path) -> str | None:
    """`safetensors`, `pickle` (a `torch.save` file), or None for anything else."""
    if path.suffix == ".safetensors":
        return "safetensors"
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
        return "pickle" if any(n.endswith("/data.pkl") for n in names) else None
    if path.suffix in PICKLE_SUFFIXES:
        return "pickle"
    with path.open("rb") as f:
        first = f.read(1)
    return "pickle" if first and first[0] == _PICKLE_PROTOCOL_MARK else None


def _read_weights(path: Path, *, allow_pickle: bool) -> dict[str, torch.Tensor]:
    kind = weights_format(path)
    if kind == "safetensors":
        from safetensors.torch import load_file

        check_safetensors(path)
        return load_file(str(path), device="cpu")
    if kind != "pickle":
        raise SourceError(
            f"{path} is not a weights file onnxport reads (safetensors, or a torch.save pickle)",
            hint="save the weights with safetensors.torch.save_file(model.state_dict(), ...)",
        )
    if not allow_pickle:
        raise SourceError(
            f"{path} is a pickle (torch.save), which can run code when loaded; onnxport "
            "loads safetensors only by default",
            hint="save the weights with safetensors.torch.save_file(model.state_dict(), "
            "'model.safetensors'), or set source.allow_pickle: true if you trust its origin",
        )
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # the restricted unpickler raises several types
        raise SourceError(
            f"{path} cannot be loaded as weights only (torch.load(weights_only=True)): "
            f"{_refusal(e)}",
            hint="save model.state_dict(), not the model object, or export the model with "
            "torch.export.save",
        ) from e
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise SourceError(
            f"{path} does not hold a state dict (a mapping of names to tensors)",
            hint="save model.state_dict()",
        )
    return state


_UNSUPPORTED_GLOBAL = re.compile(r"Unsupported global: GLOBAL (\S+)")


def _refusal(error: Exception) -> str:
    """Why the restricted unpickler refused, without torch's advice to retry with
    `weights_only=False`, which would run whatever code the file holds."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))
    found = _UNSUPPORTED_GLOBAL.search(text)
    if found:
        return f"it holds {found.group(1)}, which is not a tensor or a plain container"
    reason = text.split("WeightsUnpickler error:", 1)[-1]
    return one_line(reason) or type(error).__name__


@contextmanager
def _current_directory_on_path() -> Iterator[None]:
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        yield
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)


def import_factory(reference: str) -> Callable[[], Any]:
    """The callable named by `module:callable`; importing the module runs its code."""
    module_name, _, attribute = reference.partition(":")
    if not module_name or not attribute:
        raise SourceError(
            f"source.factory {reference!r} must name a module and a callable: `module:callable`",
            hint="for example source.factory: my_project.models:build_model",
        )
    try:
        with _current_directory_on_path():
            module = importlib.import_module(module_name)
    except ImportError as e:
        raise SourceError(
            f"cannot import {module_name!r} for source.factory: {e}",
            hint="run from the directory that holds it, or add its directory to PYTHONPATH",
        ) from e
    except Exception as e:  # the user's module raised while being imported
        raise SourceError(
            f"importing {module_name!r} for source.factory raised {type(e).__name__}: {e}"
        ) from e
    found: Any = module
    for part in attribute.split("."):
        if not hasattr(found, part):
            raise SourceError(
                f"{module_name!r} has no {attribute!r} for source.factory",
                hint=f"check the name after ':' in {reference!r}",
            )
        found = getattr(found, part)
    if not callable(found):
        raise SourceError(
            f"source.factory {reference!r} names a {type(found).__name__}, not a callable"
        )
    return found


def _build_module(reference: str) -> torch.nn.Module:
    factory = import_factory(reference)
    try:
        model = factory()
    except Exception as e:  # user code
        raise SourceError(f"source.factory {reference} raised {type(e).__name__}: {e}") from e
    if not isinstance(model, torch.nn.Module):
        raise SourceError(
            f"source.factory {reference} returned a {type(model).__name__}, not a torch.nn.Module"
        )
    return model


def load_state_dict_source(path: Path, settings: SourceConfig) -> Source:
    """Build the model with `settings.factory`, load the weights in `path` into it."""
    path = Path(path)
    if settings.factory is None or settings.input_spec is None:
        missing = " and ".join(
            key
            for key, value in (
                ("source.factory", settings.factory),
                ("source.input_spec", settings.input_spec),
            )
            if value is None
        )
        raise SourceError(
            f"{path} is a file of weights without the model's code: it needs {missing}",
            hint="set source.factory to module:callable (returns the nn.Module) and "
            "source.input_spec to a file of its inputs' names, dtypes and shapes",
        )
    spec = read_input_spec(settings.input_spec)
    state = _read_weights(path, allow_pickle=settings.allow_pickle)
    model = _build_module(settings.factory)
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # size mismatches
        message = one_line(e, 400)
        raise SourceError(
            f"the weights in {path} do not fit the model from source.factory {settings.factory}: "
            f"{message}",
            hint="check that the factory builds the model these weights were saved from",
        ) from e
    if result.missing_keys or result.unexpected_keys:
        names = ", ".join([*result.missing_keys, *result.unexpected_keys][:4])
        raise SourceError(
            f"the weights in {path} do not fit {type(model).__name__} from source.factory "
            f"{settings.factory}: {len(result.missing_keys)} missing and "
            f"{len(result.unexpected_keys)} unexpected tensors ({names}, ...)",
            hint="check that the factory builds the model these weights were saved from",
        )
    model.eval()
    return plain_source(
        model,
        spec,
        path=path,
        kind=SourceKind.STATE_DICT,
        architecture=type(model).__name__,
        task=settings.task,
        weight_files=(path,),
    )
