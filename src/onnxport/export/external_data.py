"""External data: weights in `<model file>.data` beside the model, or inline after the graph.

Protobuf cannot hold more than 2 GiB, so larger weights must go to `<file>.data`; smaller
ones may (`output.external_data: always`: ONNX Runtime then maps them instead of copying).
The dynamo export's weights are written once, from memory, where they go (`save_model`); the
TorchScript exporter writes external data its own way, gathered here into one file.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np
import onnx
import onnx_ir as ir
from onnx.external_data_helper import uses_external_data

from onnxport.errors import ConfigError, ExportError
from onnxport.request.export_config import ExternalData

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


def save_model(model: ir.Model, path: Path, *, external: bool) -> None:
    """Save `model` to `path` in one write, each initializer of `EXTERNAL_THRESHOLD_BYTES` or
    more written from memory, one by one: into `<path>.data` (`external`), to which the
    model's initializers then refer, or else after the graph, a record of its own each
    (`_write_inline`). The graph is checked first, without the weights (`_check_graph`).
    """
    path = Path(path)
    data = path.with_name(path.name + ".data")
    weights = []
    for value in model.graph.initializers.values():
        tensor = value.const_value
        if tensor is None or tensor.dtype == ir.DataType.STRING:
            continue
        if tensor.nbytes >= EXTERNAL_THRESHOLD_BYTES:
            weights.append((value, tensor))
    # Each weight stands for itself in the graph as a reference to where it will be.
    offset = 0
    for value, tensor in weights:
        value.const_value = ir.ExternalTensor(
            data.name,
            offset,
            tensor.nbytes,
            tensor.dtype,
            shape=tensor.shape,
            name=str(value.name),
            base_dir=path.parent,
        )
        offset += tensor.nbytes
    proto = ir.serde.serialize_model(model)
    _check_graph(proto)
    if external:
        with data.open("wb") as out:
            for value, tensor in weights:
                if _write_tensor(out, tensor) != tensor.nbytes:  # the offsets assumed it
                    raise ExportError(f"tensor {value.name} is not {tensor.nbytes} bytes long")
        with path.open("wb") as out:
            out.write(proto.SerializeToString())
        return
    by_name = {str(value.name): tensor for value, tensor in weights}
    records = []
    for initializer in proto.graph.initializer:
        if initializer.name in by_name:
            record = onnx.TensorProto()
            record.CopyFrom(initializer)
            del record.external_data[:]
            record.data_location = onnx.TensorProto.DEFAULT
            records.append(record)
    kept = [t for t in proto.graph.initializer if t.name not in by_name]
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(kept)
    with path.open("wb") as out:
        out.write(proto.SerializeToString())
        for record in records:
            _write_inline(out, record, by_name[record.name])
    for value, tensor in weights:
        value.const_value = tensor


def _check_graph(proto: onnx.ModelProto) -> None:
    """ONNX's checker on `proto` whose weights are external (and may not be written yet):
    they are checked as graph inputs of their type and shape, so the weights are not read."""
    checked = onnx.ModelProto()
    checked.CopyFrom(proto)
    graph = checked.graph
    weights = [t for t in graph.initializer if uses_external_data(t)]
    kept = [t for t in graph.initializer if not uses_external_data(t)]
    graph.input.extend(
        onnx.helper.make_tensor_value_info(t.name, t.data_type, t.dims) for t in weights
    )
    del graph.initializer[:]
    graph.initializer.extend(kept)
    onnx.checker.check_model(checked, full_check=False)


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


def _write_inline(out: BinaryIO, record: onnx.TensorProto, tensor: ir.TensorProtocol) -> None:
    """Write `record` (a tensor's name, type and shape) with `tensor`'s bytes as one
    `graph { initializer { ... raw_data } }` record. Protobuf merges repeated occurrences of
    a message field, so a model followed by such records parses as the model with those
    initializers, and memory never holds a second copy of the tensor (building the records
    with the protobuf API copies each tensor three times: +440 MiB on DistilBERT)."""
    length = tensor.nbytes
    head = record.SerializeToString() + _length_delimited(_RAW_DATA, length)
    wrapped = _length_delimited(_INITIALIZER, len(head) + length)
    out.write(_length_delimited(_GRAPH, len(wrapped) + len(head) + length))
    out.write(wrapped + head)
    if _write_tensor(out, tensor) != length:
        raise ExportError(f"tensor {record.name} is not {length} bytes long")
