"""Quantization passes: int8 dynamic, int8 static (QDQ, calibrated), and float16.

All three use `onnxruntime.quantization` / `onnxruntime.transformers`, given the model's path:
the quantizers infer shapes into a file beside it, so that external data stays reachable.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from onnxport.errors import ConfigError
from onnxport.passes.base import PassContext, has_external_data, save_like

logger = logging.getLogger(__name__)


@contextmanager
def _without_a_second_copy(model: Path) -> Iterator[None]:
    """Keep onnxruntime's dynamic quantizer from holding the weights three times.

    `ONNXQuantizer.__init__` (onnxruntime 1.32) deep-copies the whole model, saves and
    reloads it to refresh shapes after turning Gemm nodes into MatMul, while the first copy
    stays referenced: DistilBERT-base's int8 pass peaked at 1057 MB instead of 715 MB
    (measured in a process without torch). Without a Gemm nothing is turned, the shapes are
    those already inferred, and the model is used as loaded.
    """
    from onnxruntime.quantization import onnx_quantizer

    graph = onnx.load(str(model), load_external_data=False).graph
    reload = getattr(onnx_quantizer, "save_and_reload_model_with_shape_infer", None)
    if reload is None or any(node.op_type == "Gemm" for node in graph.node):
        yield
        return
    onnx_quantizer.save_and_reload_model_with_shape_infer = lambda loaded: loaded
    try:
        yield
    finally:
        onnx_quantizer.save_and_reload_model_with_shape_infer = reload


SHOWN_NODE_NAMES = 5
"""How many existing node names an unknown name's error lists."""
_WEIGHTED = ("MatMul", "Gemm", "Conv", "Gather")
"""Op types whose weights the quantizer quantizes: the names worth showing first."""


def check_nodes_to_exclude(model: Path, names: Sequence[str]) -> None:
    """Raise `ConfigError` when `quantize.nodes_to_exclude` names a node `model` does not
    have: the quantizer would ignore it and the model would be recorded as excluding it."""
    nodes = [n for n in onnx.load(str(model), load_external_data=False).graph.node if n.name]
    known = {n.name for n in nodes}
    unknown = [name for name in names if name not in known]
    if not unknown:
        return
    close = [m for name in unknown for m in difflib.get_close_matches(name, known, n=2)]
    # Else the nodes most worth leaving in float: those that carry weights to quantize.
    shown = list(dict.fromkeys(close)) or [n.name for n in nodes if n.op_type in _WEIGHTED]
    shown = (shown or sorted(known))[:SHOWN_NODE_NAMES]
    raise ConfigError(
        f"quantize.nodes_to_exclude names nodes the graph does not have: {', '.join(unknown)} "
        f"({model.name} has {len(known)} nodes, such as {', '.join(shown)})",
        hint="use the node names a failed gate or `onnxport debug` suggests: those of the "
        "graph as exported, which the variants are made from",
    )


def _not_the_advice(record: logging.LogRecord) -> bool:
    return "pre-processing before quantization" not in record.getMessage()


@contextmanager
def _without_preprocessing_advice() -> Iterator[None]:
    """Keep onnxruntime's quantizers from advising their pre-processing on every call.

    They say it with `logging.warning` on the root logger, which also installs a handler there
    (`logging.basicConfig`) in a program that has none, so that the caller's own logging
    setup later does nothing. The advice does not apply: the quantizers infer shapes
    themselves (`load_model_with_shape_infer`). Any other record is printed as it would be.
    """
    root = logging.getLogger()
    # A handler on the root keeps `logging.warning` from installing its own; `lastResort`
    # prints what Python prints when there is none.
    stand_in = None if root.handlers else (logging.lastResort or logging.NullHandler())
    root.addFilter(_not_the_advice)
    if stand_in is not None:
        root.addHandler(stand_in)
    try:
        yield
    finally:
        root.removeFilter(_not_the_advice)
        if stand_in is not None:
            root.removeHandler(stand_in)


def _common_options(model: Path, context: PassContext) -> dict[str, Any]:
    settings = context.settings
    check_nodes_to_exclude(model, settings.nodes_to_exclude)
    options: dict[str, Any] = {
        "per_channel": settings.per_channel,
        "reduce_range": settings.reduce_range,
        "nodes_to_exclude": list(settings.nodes_to_exclude),
    }
    if settings.op_types:
        options["op_types_to_quantize"] = list(settings.op_types)
    return options


def quantized_nodes(path: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in onnx.load(str(path), load_external_data=False).graph.node:
        if "Integer" in node.op_type or "Quant" in node.op_type or "NBits" in node.op_type:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


class DynamicInt8Pass:
    """Weights to int8 ahead of time, activations quantized at run time."""

    name = "quantize-int8"

    def run(self, model: Path, output: Path, context: PassContext) -> dict[str, Any]:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        options = _common_options(model, context)
        with _without_a_second_copy(model), _without_preprocessing_advice():
            quantize_dynamic(
                model,
                output,
                weight_type=QuantType.QInt8,
                use_external_data_format=has_external_data(model),
                **options,
            )
        return {"mode": "dynamic", **options, "quantized_nodes": quantized_nodes(output)}


class _Calibration:
    """A `CalibrationDataReader` over prepared input dicts."""

    def __init__(self, inputs: tuple[dict[str, np.ndarray], ...], names: set[str]) -> None:
        self._items = iter([{k: v for k, v in i.items() if k in names} for i in inputs])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._items, None)


class StaticInt8Pass:
    """Weights and activations int8 with ranges from calibration samples, QDQ format."""

    name = "quantize-int8-static"

    def run(self, model: Path, output: Path, context: PassContext) -> dict[str, Any]:
        from onnxruntime.quantization import (
            CalibrationDataReader,
            QuantFormat,
            QuantType,
            quantize_static,
        )

        if context.calibration is None or not context.calibration.inputs:
            raise ValueError("static quantization needs calibration samples")
        names = {i.name for i in onnx.load(str(model), load_external_data=False).graph.input}
        reader = _Calibration(context.calibration.inputs, names)
        CalibrationDataReader.register(_Calibration)
        options = _common_options(model, context)
        with _without_preprocessing_advice():
            quantize_static(
                model,
                output,
                reader,
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                use_external_data_format=has_external_data(model),
                **options,
            )
        return {
            "mode": "static",
            "format": "QDQ",
            "calibration_samples": len(context.calibration.inputs),
            "calibration": context.calibration.details(),
            **options,
            "quantized_nodes": quantized_nodes(output),
        }


class Fp16Pass:
    """float32 weights and compute to float16, inputs and outputs kept in their types."""

    name = "fp16"

    def run(self, model: Path, output: Path, context: PassContext) -> dict[str, Any]:
        from onnxruntime.transformers.float16 import convert_float_to_float16

        proto = onnx.load(str(model))
        converted = convert_float_to_float16(proto, keep_io_types=True, disable_shape_infer=True)
        save_like(converted, output, model)
        return {"keep_io_types": True}
