"""The ONNX side of a divergence search: who produced each value (node, op type, the
PyTorch module it came from), and one run with every intermediate value exposed."""

from __future__ import annotations

import ast
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from onnxport.artifact.records.divergence import NodeDivergenceRecord
from onnxport.verify.compare import TensorComparison
from onnxport.verify.runtime import create_session, run_session, session_options

FX_NODE = "pkg.torch.onnx.fx_node"
NAME_SCOPES = "pkg.torch.onnx.name_scopes"


@dataclass(frozen=True)
class Producer:
    node: str
    op_type: str
    inputs: tuple[str, ...]
    fx_node: str | None
    module: str | None

    def divergence(
        self, value: str, own: TensorComparison, input_max_abs_diff: float, **more: float
    ) -> NodeDivergenceRecord:
        """The record of this node's output `value`: its own error and its inputs' worst."""
        return NodeDivergenceRecord(
            value=value,
            node=self.node,
            op_type=self.op_type,
            module=self.module,
            max_abs_diff=own.max_abs_diff,
            max_rel_diff=own.max_rel_diff,
            input_max_abs_diff=input_max_abs_diff,
            **more,
        )


def _meta(node: onnx.NodeProto) -> dict[str, str]:
    return {p.key: p.value for p in node.metadata_props}


def _module_path(scopes: str | None, fx_name: str | None) -> str | None:
    if not scopes:
        return None
    try:
        parts = [p for p in ast.literal_eval(scopes) if p and p != fx_name]
    except (ValueError, SyntaxError):
        return None
    if not parts:
        return None
    path = parts[-1]
    # ExportAdapter wraps the user's model as `model`: show the user's own names.
    return path.removeprefix("model.") if path != "model" else "(model)"


def _fx_name(meta: dict[str, str]) -> str | None:
    text = meta.get(FX_NODE, "")
    return text[1:].split(" ", 1)[0] if text.startswith("%") else None


def _scope_from_name(name: str) -> str | None:
    """TorchScript-exported nodes carry their module in their name: `/model/enc/lin/MatMul`."""
    if not name.startswith("/"):
        return None
    parts = name.strip("/").split("/")[:-1]
    if parts and parts[0] == "model":
        parts = parts[1:]
    return ".".join(parts) or None


def producers(model: onnx.ModelProto) -> dict[str, Producer]:
    """Each value's producing node."""
    found = {}
    for node in model.graph.node:
        meta = _meta(node)
        fx = _fx_name(meta)
        module = _module_path(meta.get(NAME_SCOPES), fx) or _scope_from_name(node.name)
        for output in node.output:
            if output:
                found[output] = Producer(node.name, node.op_type, tuple(node.input), fx, module)
    return found


def structure(model_path: Path) -> onnx.ModelProto:
    """The model's graph without its weights in memory: initializers stay where they are
    (external data) or are dropped after loading (embedded), since only structure is read."""
    model = onnx.load(str(model_path), load_external_data=False)
    for tensor in model.graph.initializer:
        tensor.ClearField("raw_data")
    return model


def run_with_intermediates(
    model_path: Path, names: list[str], inputs: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Run `model_path` with the values `names` exposed as extra outputs, in one session;
    returns the floating-point values among them.

    The copy with extra outputs is written beside the original with its weights as external
    data, so that memory holds one copy of the weights (the session's), not three.
    """
    model = onnx.load(str(model_path), load_external_data=False)
    existing = {o.name for o in model.graph.output}
    for name in names:
        if name not in existing:
            model.graph.output.append(onnx.ValueInfoProto(name=name))
    # Beside the original, so that weights it keeps externally resolve unchanged.
    # A plain name: onnx refuses external data whose location holds '..' (a leading dot of
    # a hidden model's name would make one).
    copy = model_path.with_name(f".debug-{uuid.uuid4().hex[:8]}-{model_path.stem.lstrip('.')}.onnx")
    data = copy.with_name(copy.name + ".data")
    try:
        onnx.save_model(model, str(copy), save_as_external_data=True, location=data.name)
        del model
        # Keep the graph as written: fusions would remove the values we want to see.
        options = session_options(optimization=ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
        session = create_session(copy, options)
        values = run_session(session, inputs)
        del session
    finally:
        copy.unlink(missing_ok=True)
        data.unlink(missing_ok=True)
    wanted = set(names)
    return {
        k: v
        for k, v in values.items()
        if k in wanted and np.issubdtype(np.asarray(v).dtype, np.floating)
    }


def upstream(name: str, found: dict[str, Producer], compared: Mapping[str, object]) -> list:
    """What `compared` holds for the nearest compared values upstream of `name` (through
    values that were not compared)."""
    result, seen = [], set()
    stack = list(found[name].inputs) if name in found else []
    while stack:
        value = stack.pop()
        if value in seen or not value:
            continue
        seen.add(value)
        if value in compared:
            result.append(compared[value])
        elif value in found:
            stack.extend(found[value].inputs)
    return result
