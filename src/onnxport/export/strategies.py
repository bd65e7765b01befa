"""The exporters, as an ordered tuple of strategies: the dynamo-based exporter (`torch.export`)
first, the TorchScript-based exporter as the fallback. Each writes an ONNX file from a
`Source` through the same `ExportAdapter`, the calling convention validation uses too. The
dynamo strategy can hand over the graph it bound the weights into (`template`), which the
export cache keeps for the next checkpoint of the architecture.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from onnxport.errors import ExportError
from onnxport.export.template import (
    TemplateData,
    bind,
    make_template,
    state_tensors,
    template_bytes,
)
from onnxport.request.config import EXPORTER_OPSETS, Exporter
from onnxport.sources.base import Source

DYNAMO_OPSETS = EXPORTER_OPSETS[Exporter.DYNAMO]
TORCHSCRIPT_OPSETS = EXPORTER_OPSETS[Exporter.TORCHSCRIPT]


class ExportAdapter(torch.nn.Module):
    """Positional named inputs in, a tuple of named outputs out: one calling convention for
    every exporter and for the PyTorch reference that validation compares against."""

    def __init__(
        self, model: torch.nn.Module, input_names: tuple[str, ...], output_names: tuple[str, ...]
    ) -> None:
        super().__init__()
        self.model = model
        self.input_names = input_names
        self.output_names = output_names

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs = self.model(**dict(zip(self.input_names, args)))
        if isinstance(outputs, torch.Tensor):
            outputs = (outputs,)
        if isinstance(outputs, dict):  # transformers' ModelOutput is a dict
            return tuple(outputs[name] for name in self.output_names)
        return tuple(outputs)[: len(self.output_names)]


def adapter_for(source: Source) -> ExportAdapter:
    return ExportAdapter(source.module, source.input_names, source.output_names).eval()


def dynamo_program(
    source: Source, args: tuple[torch.Tensor, ...], *, opset: int, optimize: bool = True
) -> torch.onnx.ONNXProgram:
    """Trace `source` with the dynamo-based exporter; its `exported_program` is the FX
    program whose node names the ONNX graph's values and metadata refer to."""
    shapes = tuple(source.dynamic_axes.get(name, {}) for name in source.input_names)
    program = torch.onnx.export(
        adapter_for(source),
        args,
        dynamo=True,
        opset_version=opset,
        input_names=list(source.input_names),
        output_names=list(source.output_names),
        dynamic_shapes=(shapes,),
        optimize=optimize,
    )
    if program is None:
        raise ExportError("the dynamo exporter returned no program")
    return program


def _holds_torchscript(module: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.jit.ScriptModule) for m in module.modules())


def _export_dynamo(
    source: Source, path: Path, opset: int, external: bool, keep: bool
) -> TemplateData | None:
    if _holds_torchscript(source.module):
        raise ExportError(
            "torch.export cannot trace a TorchScript module; the TorchScript-based exporter "
            "converts it"
        )
    inputs = source.example_inputs()
    args = tuple(inputs[name] for name in source.input_names)
    program = dynamo_program(source, args, opset=opset, optimize=False)
    state = state_tensors(adapter_for(source))
    template = make_template(program.model, state)
    del program  # the exported program holds the module's parameters
    kept = TemplateData(template_bytes(template), dict(template.bindings)) if keep else None
    # Saved with external data whatever the size: the save then streams the weights out one
    # by one, where a self-contained save builds two in-memory copies of them (measured on
    # DistilBERT-base: peak 1580 MiB vs 793 MiB). Small models are made self-contained again.
    bind(template, state, path)
    return kept


def _output_axes(source: Source) -> dict[str, dict[int, str]]:
    """Dynamic axes for outputs, for the TorchScript exporter (dynamo infers them)."""
    batch, size = source.example_shape
    # The inputs' dynamic axis other than the batch (`sequence` for text), if they have one.
    size_names = sorted({n for axes in source.dynamic_axes.values() for a, n in axes.items() if a})
    with torch.no_grad():
        outputs = adapter_for(source)(*source.example_inputs().values())
    axes: dict[str, dict[int, str]] = {}
    for name, value in zip(source.output_names, outputs):
        dims: dict[int, str] = {}
        if value.dim() >= 1 and value.shape[0] == batch:
            dims[0] = "batch"
        if value.dim() >= 2 and value.shape[1] == size and size_names:
            dims[1] = size_names[0]
        axes[name] = dims
    return axes


def _export_torchscript(
    source: Source, path: Path, opset: int, external: bool, keep: bool
) -> TemplateData | None:
    adapter: torch.nn.Module = adapter_for(source)
    inputs = source.example_inputs()
    args = tuple(inputs[name] for name in source.input_names)
    if _holds_torchscript(adapter):
        # torch.onnx's tracer cannot call into a ScriptModule held by a Python module ("not
        # part of the active trace"); traced first, the whole is one ScriptModule it takes.
        adapter = torch.jit.trace(adapter, args)
    torch.onnx.export(
        adapter,
        args,
        str(path),
        dynamo=False,
        opset_version=opset,
        input_names=list(source.input_names),
        output_names=list(source.output_names),
        dynamic_axes={**source.dynamic_axes, **_output_axes(source)},
        do_constant_folding=True,
    )
    # Its initializers are folded with the weights and named by the exporter, not after the
    # parameters: no template to keep.
    return None


StrategyRun = Callable[[Source, Path, int, bool, bool], TemplateData | None]
"""Export (source, to path, opset, weights external?, keep the template?); returns the template
kept, when the strategy has one and was asked for it."""


@dataclass(frozen=True)
class ExportStrategy:
    name: Exporter
    opsets: range
    run: StrategyRun


EXPORT_STRATEGIES: tuple[ExportStrategy, ...] = (
    ExportStrategy(Exporter.DYNAMO, DYNAMO_OPSETS, _export_dynamo),
    ExportStrategy(Exporter.TORCHSCRIPT, TORCHSCRIPT_OPSETS, _export_torchscript),
)
