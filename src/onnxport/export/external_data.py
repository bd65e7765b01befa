"""External data: weights in `<model file>.data` beside the model, and back inline.

Protobuf cannot hold more than 2 GiB, so larger weights must go to `<file>.data`; smaller
ones may (`output.external_data: always`: ONNX Runtime then maps them instead of copying).
The exporters write external data in their own ways; these helpers gather it into one file,
or stream it back inline without holding a tensor in memory.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np
import onnx
import onnx_ir as ir
from onnx.external_data_helper import ExternalDataInfo, uses_external_data

from onnxport.errors import ConfigError, ExportError
from onnxport.request.config import ExternalData

if TYPE_CHECKING:
    import torch

# ONNX protobuf files cannot exceed 2 GiB; larger weights must go to `<model file>.data`.
EXTERNAL_DATA_THRESHOLD_BYTES = 2 * 1024**3 - 64 * 1024**2


def weights_bytes(module: torch.nn.Module) -> int:
    tensors = list(module.parameters()) + list(module.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


def wants_external_data(weights_bytes: int, setting: ExternalData) -> bool:
    """Whether the weights go to `<file>.data`, by `output.external_data` and their size."""
    if weights_bytes > EXTERNAL_DATA_THRESHOLD_BYTES:
        if setting is ExternalData.NEVER:
            raise ConfigError(
                f"the model's {weights_bytes / 1024**3:.1f} GiB of weights cannot go into one "
                "ONNX file (protobuf's limit is 2 GiB)",
                hint="set output.external_data: auto",
            )
        return True
    return setting is ExternalData.ALWAYS


EXTERNAL_THRESHOLD_BYTES = 1024
"""Initializers at least this large go to `<model file>.data`; smaller ones stay inline."""
_COPY_CHUNK = 16 * 1024 * 1024


def _write_tensor(out: BinaryIO, tensor: ir.TensorProtocol) -> int:
    """Write `tensor`'s bytes as ONNX stores them (little endian) to `out`; returns how many.

    An array that is not contiguous (constant folding leaves `Transpose(weight)` as a
    transposed view) is written in blocks of rows: numpy writes such an array to a file
    element by element (DistilBERT-base: 1.9 s instead of 0.5 s), and copying it whole would
    hold a second copy of the weights.
    """
    if tensor.dtype.bitwidth < 8 or sys.byteorder != "little":
        data = tensor.tobytes()  # packed 4-bit types, or bytes to swap: ir knows how
        out.write(data)
        return len(data)
    array = tensor.numpy()
    if array.ndim == 0 or array.flags.c_contiguous:
        out.write(np.ascontiguousarray(array).reshape(-1).view(np.uint8).data)
        return array.nbytes
    rows = max(1, _COPY_CHUNK // max(1, array[0].nbytes))
    for start in range(0, array.shape[0], rows):
        block = np.ascontiguousarray(array[start : start + rows])
        out.write(block.reshape(-1).view(np.uint8).data)
    return array.nbytes


def save_external(model: ir.Model, path: Path) -> None:
    """Save `model` to `path`, each initializer of `EXTERNAL_THRESHOLD_BYTES` or more in
    `<path>.data`, written one by one from memory. The model's initializers then refer to
    that file."""
    path = Path(path)
    data = path.with_name(path.name + ".data")
    offset = 0
    with data.open("wb") as out:
        for value in model.graph.initializers.values():
            tensor = value.const_value
            if tensor is None or tensor.dtype == ir.DataType.STRING:
                continue
            if tensor.nbytes < EXTERNAL_THRESHOLD_BYTES:
                continue
            length = _write_tensor(out, tensor)
            value.const_value = ir.ExternalTensor(
                data.name,
                offset,
                length,
                tensor.dtype,
                shape=tensor.shape,
                name=str(value.name),
                base_dir=path.parent,
            )
            offset += length
    ir.save(model, path)


def gather_external_data(path: Path, before: set[Path]) -> Path:
    """The one `<model file>.data` beside `path`: kept when the exporter wrote exactly that,
    else gathered from the files it wrote (the TorchScript exporter writes one per tensor)."""
    data = path.with_name(path.name + ".data")
    if set(path.parent.iterdir()) - before - {path} == {data}:
        return data
    model = onnx.load(str(path), load_external_data=True)
    for stray in set(path.parent.iterdir()) - before - {path}:
        stray.unlink()
    data_name = path.name + ".data"
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=data_name,
        size_threshold=EXTERNAL_THRESHOLD_BYTES,
    )
    return path.with_name(data_name)


_GRAPH = onnx.ModelProto.DESCRIPTOR.fields_by_name["graph"].number
_INITIALIZER = onnx.GraphProto.DESCRIPTOR.fields_by_name["initializer"].number
_RAW_DATA = onnx.TensorProto.DESCRIPTOR.fields_by_name["raw_data"].number


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _length_delimited(field: int, length: int) -> bytes:
    return _varint(field << 3 | 2) + _varint(length)


def inline_external_data(path: Path) -> None:
    """Make `path` self-contained again, streaming each tensor from its data file.

    Protobuf merges repeated occurrences of a message field, so the model without its
    external initializers, followed by one `graph { initializer { ... raw_data } }` record
    per tensor, parses as the whole model. Each record is written in wire format around
    bytes copied in chunks from the data file, so memory never holds a tensor (building the
    records with the protobuf API copies each tensor three times: +440 MiB on DistilBERT).
    """
    model = onnx.load(str(path), load_external_data=False)
    external = [t for t in model.graph.initializer if uses_external_data(t)]
    if not external:
        return
    kept = [t for t in model.graph.initializer if not uses_external_data(t)]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    data_files = set()
    merged = path.with_name(f".{path.name}.inline")
    with merged.open("wb") as out:
        out.write(model.SerializeToString())
        for tensor in external:
            info = ExternalDataInfo(tensor)
            data_file = path.parent / info.location
            data_files.add(data_file)
            offset = info.offset or 0
            length = info.length or data_file.stat().st_size - offset
            del tensor.external_data[:]
            tensor.data_location = onnx.TensorProto.DEFAULT
            head = tensor.SerializeToString() + _length_delimited(_RAW_DATA, length)
            record = _length_delimited(_INITIALIZER, len(head) + length)
            out.write(_length_delimited(_GRAPH, len(record) + len(head) + length))
            out.write(record + head)
            with data_file.open("rb") as data:
                data.seek(offset)
                remaining = length
                while remaining:
                    chunk = data.read(min(_COPY_CHUNK, remaining))
                    if not chunk:
                        raise ExportError(f"{data_file} ends before tensor {tensor.name}")
                    out.write(chunk)
                    remaining -= len(chunk)
    os.replace(merged, path)
    for data_file in data_files:
        data_file.unlink()
