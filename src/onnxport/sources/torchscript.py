"""Load a TorchScript module saved with `torch.jit.save` (a `.pt` archive).

`torch.jit.load` does not use Python's pickle: the archive's data is read by TorchScript's
own unpickler, which builds only TorchScript types, and its code is TorchScript, which calls
torch operators, never Python. It is still the model's program, read from the file: as
PyTorch's security policy advises, treat a TorchScript file from an unknown origin like any
other model code. A `.pt` that is not a TorchScript archive (a `torch.save` pickle) is a
state dict for `onnxport.sources.state_dict`.

TorchScript records no input shapes, so an input spec is required.
"""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path

import torch

from onnxport.artifact.records.source import SourceKind
from onnxport.errors import SourceError, one_line
from onnxport.request.sections import SourceConfig
from onnxport.sources.base import Source
from onnxport.sources.plain import plain_source, read_input_spec

logger = logging.getLogger(__name__)


def is_torchscript_archive(path: Path) -> bool:
    """A zip whose root folder holds `code/` and `constants.pkl`, as `torch.jit.save` writes."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        members = {name.split("/", 1)[1] for name in archive.namelist() if "/" in name}
    return "constants.pkl" in members and any(m.startswith("code/") for m in members)


def _argument_names(module: torch.jit.ScriptModule) -> list[str]:
    try:
        return [a.name for a in module.forward.schema.arguments][1:]
    except (AttributeError, RuntimeError):
        return []


def load_torchscript(path: Path, settings: SourceConfig) -> Source:
    """Load a TorchScript `.pt` as a `Source`; `settings.input_spec` describes its inputs."""
    path = Path(path)
    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except (RuntimeError, ValueError, OSError) as e:
        message = one_line(e)
        raise SourceError(f"torch.jit.load cannot read {path}: {message}") from e
    module.eval()
    if settings.input_spec is None:
        arguments = ", ".join(_argument_names(module)) or "unknown"
        raise SourceError(
            f"{path} is a TorchScript module, which does not record its input shapes "
            f"(its forward takes: {arguments})",
            hint="set source.input_spec to a file listing each input's name, dtype and shape",
        )
    spec = read_input_spec(settings.input_spec)
    return plain_source(
        module,
        spec,
        path=path,
        kind=SourceKind.TORCHSCRIPT,
        architecture=str(getattr(module, "original_name", None) or path.stem),
        task=settings.task,
        weight_files=(path,),
    )
