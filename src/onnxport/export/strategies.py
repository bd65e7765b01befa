"""The exporters, as an ordered tuple of strategies: the dynamo-based exporter (`torch.export`)
first, the TorchScript-based exporter as the fallback. Each writes an ONNX file from a
`Source` through the same `ExportAdapter`, the calling convention validation uses too. The
dynamo strategy can hand over the graph it bound the weights into (`template`), which the
export cache keeps for the next checkpoint of the architecture.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import onnx
import onnx_ir as ir
import torch

from onnxport.errors import ExportError, one_line
from onnxport.export.external_data import gather_external_data
from onnxport.export.layers import (
    TRACED_LAYERS,
    LayerStack,
    decoder_layers,
    fewer_layers,
    fill_layers,
)
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
from onnxport.sources.generative import CausalLMWithPast, with_past

logger = logging.getLogger(__name__)

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
    weights go to `<file>.data`, whether to hand over its template (when it has one),
    whether the exporter's debug metadata stays (`export.metadata`), and whether a decoder's
    alike layers may be traced four and repeated (`export.layers`)."""

    opset: int
    external: bool = False
    keep_template: bool = False
    keep_debug_metadata: bool = False
    repeat_layers: bool = True


def _export_dynamo(source: Source, path: Path, options: ExportOptions) -> Exported:
    if _holds_torchscript(source.module):
        raise ExportError(
            "torch.export cannot trace a TorchScript module; the TorchScript-based exporter "
            "converts it"
        )
    state = state_tensors(adapter_for(source))
    graph, traced = _dynamo_graph(
        source, state, opset=options.opset, repeat_layers=options.repeat_layers
    )
    if not options.keep_debug_metadata:
        # In memory, before the model file is first written: it is written once.
        strip_model_traces(graph)
    template = make_template(graph, state)
    del graph  # its initializers hold the module's parameters
    kept = None
    if options.keep_template:
        kept = TemplateData(template_bytes(template), dict(template.bindings))
    bind(template, state, path, external=options.external)
    return Exported(kept, traced)


def trace_fewer_layers(source: Source, stack: LayerStack, *, opset: int) -> ir.Model:
    """The dynamo exporter's graph (before its optimizer) of the generative `source` with
    the first `TRACED_LAYERS` of `stack`'s layers alone, traced as `source` would be."""
    with fewer_layers(stack):
        made = with_past(stack.model, stack.model.config, None)
        shallow = dataclasses.replace(
            source,
            module=made.module,
            input_names=made.input_names,
            output_names=made.output_names,
            dynamic_axes=made.dynamic_axes,
            trace_inputs=made.inputs.trace_inputs,
        )
        inputs = shallow.example_inputs()
        args = tuple(inputs[name] for name in shallow.input_names)
        return dynamo_program(shallow, args, opset=opset, optimize=False).model


def _dynamo_graph(
    source: Source, state: Mapping[str, torch.Tensor], *, opset: int, repeat_layers: bool
) -> tuple[ir.Model, int | None]:
    """The dynamo exporter's graph of `source` before its optimizer, and how many of its
    layers were traced when the others were repeated from them (`export.layers`)."""
    module = source.module
    if repeat_layers and isinstance(module, CausalLMWithPast):
        stack, why = decoder_layers(module.model, module.layers)
        if stack is not None:
            try:
                graph = trace_fewer_layers(source, stack, opset=opset)
            except Exception as e:  # the whole model may still trace: it decides
                failed = f"{type(e).__name__}: {one_line(e)}"
                why = f"the trace of {TRACED_LAYERS} layers failed ({failed})"
            else:
                why = fill_layers(graph, stack.scope, TRACED_LAYERS, stack.count, state)
                if why is None:
                    logger.info("traced %d of %d layers", TRACED_LAYERS, stack.count)
                    return graph, TRACED_LAYERS
                del graph
        logger.info("tracing every layer: %s", why)
    inputs = source.example_inputs()
    args = tuple(inputs[name] for name in source.input_names)
    return dynamo_program(source, args, opset=opset, optimize=False).model, None


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


def _export_torchscript(source: Source, path: Path, options: ExportOptions) -> Exported:
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
    return Exported()


@dataclass(frozen=True)
class Exported:
    """What a strategy hands back besides the file: the template it kept, when it has one
    and was asked for it, and how many layers it traced when it repeated the others."""

    template: TemplateData | None = None
    traced_layers: int | None = None


StrategyRun = Callable[[Source, Path, ExportOptions], Exported]
"""Export source to path as the options say."""


@dataclass(frozen=True)
class ExportStrategy:
    name: Exporter
    opsets: range
    run: StrategyRun


EXPORT_STRATEGIES: tuple[ExportStrategy, ...] = (
    ExportStrategy(Exporter.DYNAMO, DYNAMO_OPSETS, _export_dynamo),
    ExportStrategy(Exporter.TORCHSCRIPT, TORCHSCRIPT_OPSETS, _export_torchscript),
)
