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

import onnx
import torch

from onnxport.errors import ExportError
from onnxport.export.external_data import gather_external_data
from onnxport.export.metadata import strip_debug_metadata, strip_model_traces
from onnxport.export.template import (
    TemplateData,
    bind,
    make_template,
    state_tensors,
    template_bytes,
)
from onnxport.request.export_config import EXPORTER_OPSETS, Exporter
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


@dataclass(frozen=True)
class ExportOptions:
    """What a strategy is asked for besides the source and the file: the opset, whether the
    weights go to `<file>.data`, whether to hand over its template (when it has one), and
    whether the exporter's debug metadata stays (`export.metadata`)."""

    opset: int
    external: bool = False
    keep_template: bool = False
    keep_debug_metadata: bool = False


def _export_dynamo(source: Source, path: Path, options: ExportOptions) -> TemplateData | None:
    if _holds_torchscript(source.module):
        raise ExportError(
            "torch.export cannot trace a TorchScript module; the TorchScript-based exporter "
            "converts it"
        )
    inputs = source.example_inputs()
    args = tuple(inputs[name] for name in source.input_names)
    program = dynamo_program(source, args, opset=options.opset, optimize=False)
    if not options.keep_debug_metadata:
        # In memory, before the model file is first written: it is written once.
        strip_model_traces(program.model)
    state = state_tensors(adapter_for(source))
    template = make_template(program.model, state)
    del program  # the exported program holds the module's parameters
    kept = None
    if options.keep_template:
        kept = TemplateData(template_bytes(template), dict(template.bindings))
    bind(template, state, path, external=options.external)
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


def _export_torchscript(source: Source, path: Path, options: ExportOptions) -> TemplateData | None:
    before = set(path.parent.iterdir())
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
        opset_version=options.opset,
        input_names=list(source.input_names),
        output_names=list(source.output_names),
        dynamic_axes={**source.dynamic_axes, **_output_axes(source)},
        do_constant_folding=True,
    )
    if not options.keep_debug_metadata:
        strip_debug_metadata(path)  # torch wrote the file: rewritten if it held any
    # Checked while a large model's weights are still in torch's files (a model torch wrote
    # whole is read whole), then gathered into one `.data` file.
    onnx.checker.check_model(str(path), full_check=False)
    if options.external:
        gather_external_data(path, before)
    # Its initializers are folded with the weights and named by the exporter, not after the
    # parameters: no template to keep.
    return None


StrategyRun = Callable[[Source, Path, ExportOptions], TemplateData | None]
"""Export source to path as the options say; returns the template kept, when the strategy has
one and was asked for it."""


@dataclass(frozen=True)
class ExportStrategy:
    name: Exporter
    opsets: range
    run: StrategyRun


EXPORT_STRATEGIES: tuple[ExportStrategy, ...] = (
    ExportStrategy(Exporter.DYNAMO, DYNAMO_OPSETS, _export_dynamo),
    ExportStrategy(Exporter.TORCHSCRIPT, TORCHSCRIPT_OPSETS, _export_torchscript),
)
