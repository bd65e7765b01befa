"""Load a `torch.export` program saved with `torch.export.save` (a `.pt2` archive).

What `torch.export.load` reads, and why onnxport checks the archive first: the graph is
JSON (no pickle), and plain tensors (weights, buffers, constants) are raw bytes described
by JSON. Three things in an archive do go through pickle: tensor subclasses and custom
objects (`torch.load(weights_only=False)`, `pickle.loads`), the legacy (torch ≤ 2.7)
layout, and the example inputs, which `torch.load` reads with `weights_only=True` but
retries unrestricted when that fails. So onnxport opens the zip itself and refuses any
pickled member, even with `allow_pickle` (which allows `torch.load(weights_only=True)`
only), and reads the example inputs with `weights_only=True` first, so the unrestricted
retry can never happen.

Inputs: from an input spec when given; otherwise from the program itself (its argument
names, dtypes and shapes; a symbolic size at position 0 is the batch, other symbolic sizes
take the validation `size`).
"""

from __future__ import annotations

import io
import json
import logging
import zipfile
from pathlib import Path
from typing import Any

import torch

from onnxport.artifact.records.source import SourceKind
from onnxport.errors import SourceError, one_line
from onnxport.request.sections import SourceConfig
from onnxport.sources.base import Source
from onnxport.sources.plain import (
    BATCH_DIM,
    DTYPES,
    InputSpec,
    parse_input_spec,
    plain_source,
    read_input_spec,
)

logger = logging.getLogger(__name__)

ARCHIVE_FORMAT = "archive_format"
LEGACY_PROGRAM = "serialized_exported_program.json"
_PAYLOAD_CONFIGS = ("_weights_config.json", "_constants_config.json")
_PICKLED_PREFIXES = ("custom_obj_", "opaque_obj_")
_DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}


def _members(archive: zipfile.ZipFile) -> dict[str, str]:
    """Archive paths without the root folder `torch.export.save` puts them under."""
    return {name.split("/", 1)[1]: name for name in archive.namelist() if "/" in name}


def is_torch_export_archive(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        names = set(archive.namelist())
        return LEGACY_PROGRAM in names or ARCHIVE_FORMAT in _members(archive)


def _pickled_members(path: Path) -> list[str]:
    """The members of a `.pt2` archive that `torch.export.load` would unpickle unrestricted."""
    with zipfile.ZipFile(path) as archive:
        if LEGACY_PROGRAM in archive.namelist():
            return ["the whole archive (legacy torch.export format, weights pickled)"]
        members = _members(archive)
        pickled = []
        for short, full in members.items():
            if short.endswith(_PAYLOAD_CONFIGS):
                config = json.loads(archive.read(full)).get("config", {})
                for fqn, meta in config.items():
                    path_name = str(meta.get("path_name", ""))
                    if meta.get("use_pickle") or path_name.startswith(_PICKLED_PREFIXES):
                        pickled.append(f"{short}: {fqn}")
            elif short.startswith("data/weights/") and short.endswith(".pt"):
                pickled.append(short)  # legacy weights file inside the new layout
            elif short.startswith("data/sample_inputs/"):
                try:
                    torch.load(io.BytesIO(archive.read(full)), weights_only=True)
                except Exception:  # anything the restricted unpickler refuses
                    pickled.append(f"{short} (example inputs that are not plain tensors)")
        return pickled


def _spec_from_program(program: Any, path: Path) -> InputSpec:
    """The input spec a program implies: names, dtypes, and shapes with named dimensions."""
    placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    names: dict[str, str] = {}
    inputs = []
    for name in program.graph_signature.user_inputs:
        value = placeholders[name].meta.get("val") if name in placeholders else None
        if not isinstance(value, torch.Tensor) or value.dtype not in _DTYPE_NAMES:
            what = value.dtype if isinstance(value, torch.Tensor) else type(value).__name__
            raise SourceError(
                f"{path}: the program's input {name!r} is not a tensor onnxport can feed "
                f"({what}; it feeds {', '.join(DTYPES)})",
                hint="export the program with such tensor inputs only",
            )
        shape: list[int | str] = []
        for axis, dim in enumerate(value.shape):
            if isinstance(dim, int):
                shape.append(dim)
                continue
            symbol = str(dim)
            if symbol not in names:
                others = sum(1 for n in names.values() if n != BATCH_DIM)
                names[symbol] = (
                    BATCH_DIM if axis == 0 else "size" if not others else f"size_{others + 1}"
                )
            shape.append(names[symbol])
        inputs.append({"name": name, "dtype": _DTYPE_NAMES[value.dtype], "shape": shape})
    return parse_input_spec({"inputs": inputs}, origin=f"derived from {path}")


def _architecture(program: Any, path: Path) -> str:
    """The class the program was exported from, as its nodes record it."""
    for node in program.graph.nodes:
        stack = node.meta.get("nn_module_stack") or {}
        for module_path, class_name in stack.values():
            if module_path == "":
                return str(class_name).rsplit(".", 1)[-1]
    return path.stem


def load_torch_export(path: Path, settings: SourceConfig) -> Source:
    """Load a `.pt2` program as a `Source`."""
    path = Path(path)
    try:
        pickled = _pickled_members(path)
    except (zipfile.BadZipFile, json.JSONDecodeError, KeyError, OSError) as e:
        raise SourceError(f"{path} is not a readable torch.export archive: {e}") from e
    if pickled:
        # torch.export.load reads these with an unrestricted unpickler (torch.load falls back
        # to weights_only=False), so source.allow_pickle, which allows only weights_only=True,
        # cannot make them safe: they are refused either way.
        raise SourceError(
            f"{path} holds pickled data ({pickled[0]}"
            f"{f' and {len(pickled) - 1} more' if len(pickled) > 1 else ''}), which can run "
            "code when loaded; torch.export.load would unpickle it unrestricted, so onnxport "
            "loads pickle-free archives only, even with source.allow_pickle: true",
            hint="export again with plain tensors (no tensor subclasses or custom objects)",
        )
    try:
        program = torch.export.load(str(path))
    except Exception as e:  # the deserializer raises many types for a damaged archive
        message = one_line(e)
        raise SourceError(
            f"torch.export.load cannot read {path}: {type(e).__name__}: {message}",
            hint=f"save it again with torch.export.save under torch {torch.__version__}",
        ) from e
    derived = _spec_from_program(program, path)
    spec = read_input_spec(settings.input_spec) if settings.input_spec else derived
    if len(spec.inputs) != len(derived.inputs):
        raise SourceError(
            f"the input spec names {len(spec.inputs)} inputs but the program in {path} takes "
            f"{len(derived.inputs)} ({', '.join(derived.input_names)})",
            hint="list the program's inputs in order, or leave source.input_spec out",
        )
    return plain_source(
        program.module(),
        spec,
        path=path,
        kind=SourceKind.TORCH_EXPORT,
        architecture=_architecture(program, path),
        task=settings.task,
        weight_files=(path,),
    )
