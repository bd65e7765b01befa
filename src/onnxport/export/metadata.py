"""The exporters' debug metadata, and what of it a published model keeps.

The dynamo exporter annotates every node (`metadata_props`): `pkg.torch.onnx.stack_trace`
holds the Python stack that made it, with the converting machine's absolute file paths;
`pkg.torch.onnx.fx_node`, `name_scopes`, `class_hierarchy` and `namespace` name the FX node
and the modules it came from. The TorchScript exporter, when verbose, writes source
locations into node doc strings. Whatever holds a file path or a stack trace is removed,
wherever it sits (model, graph, subgraph, function, node, value, tensor); the rest stays: the
divergence search pairs ONNX values with FX nodes through `fx_node` and names modules from
`name_scopes` (`verify.divergence.graph`), which hold neither.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import onnx
import onnx_ir as ir
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

logger = logging.getLogger(__name__)

# A Python traceback line (`File "x.py", line 3`), or a source location as TorchScript writes
# it (`x.py(835): forward`, `x.py:89:0`).
_TRACE = re.compile(r'File "[^"\n]*", line \d+|\.pyx?(?:\(\d+\)|:\d+)')
# An absolute path of at least one directory (`/home/me/`, `C:\Users\`, `~/src/`, `file:///`),
# starting where a word cannot go on: the `/` that joins the names of a namespace
# (`ExportAdapter/model.encoder: ...`) is not one.
_PATH = re.compile(
    r"""(?:^|(?<=[\s"'(\[=,]))(?:~|[A-Za-z]:|file:)?[\\/]{1,3}[^\s\\/"'()\[\],:]+[\\/]"""
)


def holds_machine_trace(text: str) -> bool:
    """Whether `text` holds a file path or a stack trace of the machine that wrote it."""
    return bool(_TRACE.search(text) or _PATH.search(text))


def strip_machine_traces(message: Message) -> int:
    """Remove, in place, every doc string and metadata value that holds a file path or a
    stack trace from `message` (a model, or any part of one) and every message inside it;
    returns how many were removed."""
    removed = 0
    fields = message.DESCRIPTOR.fields_by_name
    if "doc_string" in fields and holds_machine_trace(message.doc_string):
        message.ClearField("doc_string")
        removed += 1
    if "metadata_props" in fields:
        props = [(p.key, p.value) for p in message.metadata_props]
        kept = [(k, v) for k, v in props if not holds_machine_trace(v)]
        if len(kept) < len(props):
            removed += len(props) - len(kept)
            del message.metadata_props[:]
            for key, value in kept:
                message.metadata_props.add(key=key, value=value)
    for field, value in message.ListFields():
        if field.type != FieldDescriptor.TYPE_MESSAGE:
            continue  # tensor bytes and numbers: nothing to read
        for item in value if field.is_repeated else (value,):
            removed += strip_machine_traces(item)
    return removed


def _strip_entries(item: ir.Node | ir.Value | ir.Graph | ir.Function | ir.Model) -> int:
    removed = 0
    if item.doc_string and holds_machine_trace(item.doc_string):
        item.doc_string = None
        removed += 1
    props = item.metadata_props
    for key in [k for k, v in props.items() if holds_machine_trace(v)]:
        del props[key]
        removed += 1
    return removed


def strip_model_traces(model: ir.Model) -> int:
    """`strip_machine_traces` for a model in memory (onnx_ir), before it is first saved:
    the model, its graphs and functions, their nodes and values; returns how many entries
    were removed."""
    removed = _strip_entries(model)
    for graph in (model.graph, *model.functions.values()):
        removed += _strip_entries(graph)
        values = [*graph.inputs, *graph.outputs]
        if isinstance(graph, ir.Graph):
            values += graph.initializers.values()
        removed += sum(_strip_entries(value) for value in values)
        for node in ir.traversal.RecursiveGraphIterator(graph):
            removed += _strip_entries(node)
            removed += sum(_strip_entries(value) for value in node.outputs)
            for attribute in node.attributes.values():
                if attribute.type is ir.AttributeType.GRAPH:
                    removed += _strip_entries(attribute.as_graph())
                elif attribute.type is ir.AttributeType.GRAPHS:
                    removed += sum(_strip_entries(g) for g in attribute.as_graphs())
    return removed


def strip_debug_metadata(path: Path) -> int:
    """Strip the model file at `path` (`strip_machine_traces`), rewriting it only if anything
    was removed; returns how many entries were.

    Weights are not loaded from external data: its references are saved back unchanged. Call
    this while the exporter's weights are still external, so that a large model's graph is
    read without its weights.
    """
    path = Path(path)
    model = onnx.load(str(path), load_external_data=False)
    removed = strip_machine_traces(model)
    if removed:
        rewritten = path.with_name(f".{path.name}.stripped")
        onnx.save_model(model, str(rewritten))
        os.replace(rewritten, path)
        logger.info("removed %d debug entries holding file paths from %s", removed, path.name)
    return removed
