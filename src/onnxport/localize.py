"""Say where the numbers part ways: the first diverging operation of a failed model.

Against PyTorch: the ONNX model runs once in ONNX Runtime with its intermediate values
exposed as outputs, and the PyTorch model runs under an FX interpreter over the program
the dynamo exporter traces (`torch.onnx`'s own verification interpreter pairs values the
same way, but runs one ONNX Runtime session per value; one run with every value exposed
is what keeps a BERT-base model within a minute). ONNX values are paired with FX nodes by
the `pkg.torch.onnx.fx_node` metadata the exporter writes on every node, and the module
path comes from its `pkg.torch.onnx.name_scopes`.

Against the fp32 ONNX model (for a quantized or fp16 variant): values that keep their
names in both graphs are compared, and the node whose output error grows the most over
its inputs' error is named, with the config line that leaves it in float.

Both run on a single input (batch 1), so memory stays bounded by one forward pass.
"""

from __future__ import annotations

import ast
import logging
import time
import uuid
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
import onnxruntime as ort

if TYPE_CHECKING:
    from onnxport.sources import Source

logger = logging.getLogger(__name__)

FOLLOWING = 5


@dataclass(frozen=True)
class NodeDivergence:
    value: str
    node: str
    op_type: str
    module: str | None
    max_abs_diff: float
    max_rel_diff: float
    input_max_abs_diff: float
    """The largest error among its compared inputs: small means this node introduced it."""


@dataclass(frozen=True)
class Localization:
    against: str  # "pytorch" or "fp32-onnx"
    shape: tuple[int, ...]
    compared: int
    first: NodeDivergence | None
    following: tuple[NodeDivergence, ...] = ()
    atol: float = 0.0
    rtol: float = 0.0
    suggestion: str | None = None
    note: str | None = None
    seconds: float = 0.0
    exclude: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        """One line for the error message of a failed conversion."""
        if self.first is None:
            return (
                f"no single diverging node found ({self.note or 'compared ' + str(self.compared)})"
            )
        f = self.first
        where = f"{f.op_type}, {f.module}" if f.module else f.op_type
        if self.against == "fp32-onnx":
            line = (
                f"the variant loses the most at node {f.node} ({where}): relative error "
                f"{f.max_rel_diff:.2g} against the fp32 model, from inputs at "
                f"{f.input_max_abs_diff:.2g}"
            )
            return line + (f"; try {self.suggestion}" if self.suggestion else "")
        line = (
            f"first divergence at node {f.node} ({where}): max abs {f.max_abs_diff:.2g} "
            f"vs tolerance {self.atol:g}"
        )
        return line + (f"; {self.suggestion}" if self.suggestion else "")


# ------------------------------------------------------------------- ONNX intermediates


@dataclass(frozen=True)
class _Producer:
    node: str
    op_type: str
    inputs: tuple[str, ...]
    fx_node: str | None
    module: str | None


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
    text = meta.get("pkg.torch.onnx.fx_node", "")
    return text[1:].split(" ", 1)[0] if text.startswith("%") else None


def _scope_from_name(name: str) -> str | None:
    """TorchScript-exported nodes carry their module in their name: `/model/enc/lin/MatMul`."""
    if not name.startswith("/"):
        return None
    parts = name.strip("/").split("/")[:-1]
    if parts and parts[0] == "model":
        parts = parts[1:]
    return ".".join(parts) or None


def _producers(model: onnx.ModelProto) -> dict[str, _Producer]:
    producers = {}
    for node in model.graph.node:
        meta = _meta(node)
        fx = _fx_name(meta)
        module = _module_path(meta.get("pkg.torch.onnx.name_scopes"), fx)
        module = module or _scope_from_name(node.name)
        for output in node.output:
            if output:
                producers[output] = _Producer(
                    node.name, node.op_type, tuple(node.input), fx, module
                )
    return producers


def _graph(model_path: Path) -> onnx.ModelProto:
    """The model's graph without its weights in memory: initializers stay where they are
    (external data) or are dropped after loading (embedded), since only structure is read."""
    model = onnx.load(str(model_path), load_external_data=False)
    for tensor in model.graph.initializer:
        tensor.ClearField("raw_data")
    return model


def run_with_intermediates(
    model_path: Path, names: list[str], inputs: dict[str, np.ndarray]
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
    copy = model_path.with_name(f".{model_path.stem}.debug-{uuid.uuid4().hex[:8]}.onnx")
    data = copy.with_name(copy.name + ".data")
    try:
        onnx.save_model(model, str(copy), save_as_external_data=True, location=data.name)
        del model
        options = ort.SessionOptions()
        # Keep the graph as written: fusions would remove the values we want to see.
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        session = ort.InferenceSession(str(copy), options, providers=["CPUExecutionProvider"])
        wanted = {i.name for i in session.get_inputs()}
        outputs = [o.name for o in session.get_outputs()]
        values = session.run(outputs, {k: v for k, v in inputs.items() if k in wanted})
        del session
    finally:
        copy.unlink(missing_ok=True)
        data.unlink(missing_ok=True)
    return {
        k: v
        for k, v in zip(outputs, values)
        if k in set(names) and np.issubdtype(np.asarray(v).dtype, np.floating)
    }


def _errors(actual: np.ndarray, expected: np.ndarray) -> tuple[float, float]:
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    if actual.shape != expected.shape:
        return float("inf"), float("inf")
    if actual.size == 0:
        return 0.0, 0.0
    diff = np.abs(actual - expected)
    diff = np.where(np.isnan(diff), np.inf, diff)
    scale = max(float(np.abs(expected).max()), 1e-12)
    return float(diff.max()), float(diff.max() / scale)


def _within(max_abs: float, expected: np.ndarray, atol: float, rtol: float) -> bool:
    return max_abs <= atol + rtol * float(np.abs(np.asarray(expected, np.float64)).max())


# ------------------------------------------------------------------- against PyTorch


def _fx_errors(
    source, inputs: dict[str, np.ndarray], opset: int, onnx_values: dict, atol: float, rtol: float
) -> tuple[list[str], dict[str, tuple[float, float, bool]]]:
    """Run the program the dynamo exporter traces under an FX interpreter and compare each
    paired value as it is computed; each ONNX value is dropped once compared, so memory
    holds one forward pass, not two."""
    import torch

    from onnxport.export import captured_stdout, dynamo_program

    args = tuple(torch.from_numpy(inputs[name]) for name in source.input_names)
    with warnings.catch_warnings(), captured_stdout():
        warnings.simplefilter("ignore")
        module = dynamo_program(source, args, opset=opset, optimize=False).exported_program.module()
    order: list[str] = []
    errors: dict[str, tuple[float, float, bool]] = {}

    class Comparer(torch.fx.Interpreter):
        def run_node(self, n):
            result = super().run_node(n)
            actual = onnx_values.pop(n.name, None)
            if actual is not None and isinstance(result, torch.Tensor):
                expected = result.detach().float().numpy()
                max_abs, max_rel = _errors(actual, expected)
                errors[n.name] = (max_abs, max_rel, _within(max_abs, expected, atol, rtol))
                order.append(n.name)
            return result

    with torch.inference_mode():
        Comparer(module).run(*args)
    return order, errors


def localize_against_pytorch(
    load_source: Callable[[], Source],
    model_path: Path,
    inputs: dict[str, np.ndarray],
    *,
    opset: int,
    atol: float,
    rtol: float,
) -> Localization:
    """The first ONNX node (in topological order) whose output leaves the tolerance while
    the values feeding it were within it, comparing with the PyTorch model's values.

    `load_source` is called only after the ONNX side has run and released its session, so
    that the ONNX and PyTorch weights are never in memory together.
    """
    started = time.perf_counter()
    shape = tuple(next(iter(inputs.values())).shape)
    producers = _producers(_graph(model_path))
    # A value named after its FX node is that node's result in both graphs.
    paired = [name for name, p in producers.items() if p.fx_node == name]
    if not paired:
        return Localization(
            "pytorch",
            shape,
            0,
            None,
            atol=atol,
            rtol=rtol,
            note="the model carries no torch.onnx node metadata (exported with TorchScript?); "
            "localization needs the dynamo exporter",
            seconds=time.perf_counter() - started,
        )
    onnx_values = run_with_intermediates(model_path, paired, inputs)
    order, errors = _fx_errors(load_source(), inputs, opset, onnx_values, atol, rtol)
    return _first_divergence("pytorch", shape, order, errors, producers, atol, rtol, started)


def _first_divergence(
    against, shape, order, errors, producers, atol, rtol, started
) -> Localization:
    diverging: list[NodeDivergence] = []
    for name in order:
        max_abs, max_rel, ok = errors[name]
        if ok:
            continue
        producer = producers[name]
        upstream = _upstream_errors(name, producers, errors)
        diverging.append(
            NodeDivergence(
                value=name,
                node=producer.node,
                op_type=producer.op_type,
                module=producer.module,
                max_abs_diff=max_abs,
                max_rel_diff=max_rel,
                input_max_abs_diff=max((e[0] for e in upstream), default=0.0),
            )
        )
    # The first whose inputs were all within tolerance introduced the error.
    origin = next(
        (d for d in diverging if all(e[2] for e in _upstream_errors(d.value, producers, errors))),
        diverging[0] if diverging else None,
    )
    following = tuple(d for d in diverging if d is not origin)[:FOLLOWING]
    result = Localization(
        against,
        shape,
        len(errors),
        origin,
        following,
        atol,
        rtol,
        seconds=time.perf_counter() - started,
    )
    logger.info("localization (%s): %s", against, result.summary())
    return result


def _upstream_errors(name: str, producers: dict[str, _Producer], errors: dict) -> list:
    """Errors of the nearest compared values upstream of `name` (through unpaired values)."""
    found, seen = [], set()
    stack = list(producers[name].inputs) if name in producers else []
    while stack:
        value = stack.pop()
        if value in seen or not value:
            continue
        seen.add(value)
        if value in errors:
            found.append(errors[value])
        elif value in producers:
            stack.extend(producers[value].inputs)
    return found


# -------------------------------------------------------------- against the fp32 ONNX


def _relative_l2(actual: np.ndarray, expected: np.ndarray) -> float:
    """||a - b|| / ||b||: how much of a value is lost, insensitive to single outliers."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    if actual.shape != expected.shape:
        return float("inf")
    norm = float(np.linalg.norm(expected))
    return float(np.linalg.norm(actual - expected)) / max(norm, 1e-12)


def _changed_nodes(fp32: onnx.ModelProto, variant: onnx.ModelProto) -> set[str]:
    """fp32 nodes that the variant replaced (quantized or converted): the candidates."""
    kept = {(n.name, n.op_type) for n in variant.graph.node}
    return {n.name for n in fp32.graph.node if (n.name, n.op_type) not in kept}


def localize_variant(
    fp32_path: Path, variant_path: Path, inputs: dict[str, np.ndarray]
) -> Localization:
    """The node of the variant whose output error (relative to the fp32 model's value)
    grows the most over its inputs' error: the one to leave in float."""
    started = time.perf_counter()
    shape = tuple(next(iter(inputs.values())).shape)
    fp32 = _graph(fp32_path)
    variant = _graph(variant_path)
    fp32_producers = _producers(fp32)
    variant_producers = _producers(variant)
    names = [n for n in fp32_producers if n in variant_producers]
    expected = run_with_intermediates(fp32_path, names, inputs)
    actual = run_with_intermediates(variant_path, [n for n in names if n in expected], inputs)
    order = [o for n in fp32.graph.node for o in n.output if o in expected and o in actual]
    errors = {name: _errors(actual[name], expected[name]) for name in order}
    relative = {name: _relative_l2(actual[name], expected[name]) for name in order}
    changed = _changed_nodes(fp32, variant)
    growth = []
    for name in order:
        if fp32_producers[name].node not in changed:
            continue
        upstream = _upstream_errors(
            name, fp32_producers, {k: (relative[k], 0.0, True) for k in relative}
        )
        before = max((e[0] for e in upstream), default=0.0)
        growth.append((relative[name] - before, name, before))
    ranked = [
        NodeDivergence(
            value=name,
            node=fp32_producers[name].node,
            op_type=fp32_producers[name].op_type,
            module=fp32_producers[name].module,
            max_abs_diff=errors[name][0],
            max_rel_diff=relative[name],
            input_max_abs_diff=before,
        )
        for delta, name, before in growth  # topological order
        if delta > 0
    ]
    # Errors compound downstream, so the largest growth can sit after the culprit: name the
    # first node (in order) whose own growth is within half of the largest.
    largest = max((d.max_rel_diff - d.input_max_abs_diff for d in ranked), default=0.0)
    first = next(
        (d for d in ranked if d.max_rel_diff - d.input_max_abs_diff >= max(largest / 2, 1e-3)),
        None,
    )
    ranked.sort(key=lambda d: d.max_rel_diff - d.input_max_abs_diff, reverse=True)
    ranked = [d for d in ranked if d is not first]
    exclude = (first.node,) if first else ()
    suggestion = f"quantize.nodes_to_exclude: [{first.node}]" if first else None
    result = Localization(
        "fp32-onnx",
        shape,
        len(order),
        first,
        tuple(ranked[:FOLLOWING]),
        suggestion=suggestion,
        exclude=exclude,
        seconds=time.perf_counter() - started,
    )
    logger.info("localization (variant): %s", result.summary())
    return result


# ------------------------------------------------------------ after a failed validation


def failing_input(references, validation) -> dict[str, np.ndarray]:
    """Batch 1 of the reference input where the first failing output erred most."""
    failing = [c for c in validation.outputs.values() if not c.passed]
    shape = failing[0].worst_shape if failing else references[-1].shape
    reference = next((r for r in references if r.shape == shape), references[-1])
    return {k: v[:1] for k, v in reference.inputs.items()}


def localize_fp32_failure(
    source_path: Path, settings, model_path: Path, references, validation, *, opset: int
) -> Localization | None:
    """Localize a failed fp32 validation; None (and a logged reason) when it cannot run.

    The source is loaded again: the pipeline frees the PyTorch model before validation,
    and a failure can afford the reload.
    """
    from onnxport.sources import load_source

    tolerance = next(iter(validation.outputs.values()), None)
    try:
        return localize_against_pytorch(
            lambda: load_source(source_path, settings),
            model_path,
            failing_input(references, validation),
            opset=opset,
            atol=tolerance.atol if tolerance else 1e-4,
            rtol=tolerance.rtol if tolerance else 1e-3,
        )
    except Exception as e:  # a diagnostic must never hide the validation error itself
        logger.warning("could not localize the divergence: %s: %s", type(e).__name__, e)
        return None
