"""Input shapes in the user's terms: how a message names a shape, why a graph refused one
(a dimension fixed at export), and which exporter made the graph and why the other did not.

ONNX Runtime's and the exporters' own words stay in the records (`runtime_errors`, the
export's attempts); these sentences are what the terminal says.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from onnxport.artifact.records.export import CacheStatus, ExportRecord
from onnxport.artifact.records.validation import InputRecord
from onnxport.errors import one_line
from onnxport.request.config import ConversionConfig
from onnxport.request.export_config import Exporter
from onnxport.tasks import generation_step

if TYPE_CHECKING:  # loading imports torch; the shapes need only its fields
    from onnxport.sources.base import Source

# How ONNX Runtime names what it refused: a declared dimension ("index: 2 Got: 64 Expected:
# 32"), or the node it stopped in ("running Mul node. Name:'/model/Mul_1'").
_DECLARED_DIMENSION = re.compile(r"index: (\d+) Got: (\d+) Expected: (\d+)")
_FAILED_NODE = re.compile(r"running (\w+) node\. Name:'([^']*)'")
# How the dynamo exporter says the model fixed a dimension it was asked to keep dynamic.
_STATIC_DIMENSION = re.compile(
    r"static shape of (\d+) for dimension inputs\['args'\]\[(\d+)\]\.shape\[(\d+)\]"
)


def validation_shapes(source: Source, config: ConversionConfig) -> list[tuple[int, int]]:
    """The shapes of the validation inputs: the config's, else the source's defaults."""
    shapes = config.validation.shapes or list(source.default_shapes)
    return [tuple(s) for s in shapes]  # type: ignore[misc]


def describe_shapes(shapes: dict[str, list[int]]) -> str:
    """`[1, 8]` when every input has that shape, else `input_ids [1, 8], boxes [1, 4]`;
    a generation step: `[1, 1] after 12 cached`."""
    step = generation_step(shapes)
    if step is not None:
        tokens, cached = step
        return f"{tokens}" + (f" after {cached} cached" if cached else "")
    distinct = {tuple(shape) for shape in shapes.values()}
    if len(distinct) == 1:
        return str(list(distinct.pop()))
    return ", ".join(f"{name} {shape}" for name, shape in shapes.items())


def refusal_reason(inputs: Sequence[InputRecord], error: BaseException) -> str:
    """Why a graph did not run an input, from ONNX Runtime's error: a dimension the graph
    declares fixed, or a size fixed inside it at export (and the node it stopped in)."""
    text = str(error)
    declared = _DECLARED_DIMENSION.findall(text)
    if declared:
        name = next((i.name for i in inputs if f"input: {i.name} " in text), "an input")
        fixed = ", ".join(f"dimension {axis} is {expected}" for axis, _, expected in declared)
        return f"the graph declares {name} with sizes fixed at export ({fixed})"
    node = _FAILED_NODE.search(text)
    where = f": ONNX Runtime stopped in {node[1]} node {node[2]}" if node else ""
    return f"a size inside the graph was fixed at export{where}"


@dataclass(frozen=True)
class ExportOrigin:
    """Which exporter made a graph and why the ones before it did not, and what to try
    when the graph refuses an input shape."""

    sentence: str
    remedies: tuple[str, ...]


def export_origin(export: ExportRecord, input_names: Sequence[str]) -> ExportOrigin:
    """How `export` came to be, for a refusal: the exporter that made the graph, why each
    before it failed (a dimension the model's code fixes when traced, named), what to try."""
    reasons: list[str] = []
    remedies: list[str] = []
    for attempt in (a for a in export.attempts if not a.ok):
        fixed = _STATIC_DIMENSION.search(attempt.error or "")
        if fixed is None:
            reasons.append(
                f"the {attempt.exporter} exporter failed: "
                f"{one_line(attempt.error or 'no reason given', 160)}"
            )
            continue
        size, arg, axis = (int(n) for n in fixed.groups())
        name = input_names[arg] if arg < len(input_names) else f"input {arg}"
        reasons.append(
            f"the {attempt.exporter} exporter found that the model's code fixes {name} "
            f"dimension {axis} at {size} when traced"
        )
        if axis == 0:  # the batch: no validation shapes keep it and vary it
            remedies.append(f"changing the model code that fixes the batch size at {size}")
            continue
        remedies.append(
            f"validation.shapes: [[1, {size}], [2, {size}]] if every input will have {size} "
            f"as {name} dimension {axis} (the graph takes no other), or changing the model "
            "code that fixes it"
        )
    tried = {a.exporter for a in export.attempts}
    remedies += [
        f"onnx.exporter: {other}"
        for other in (Exporter.DYNAMO, Exporter.TORCHSCRIPT)
        if other not in tried and other != export.exporter
    ]
    sentence = f"the {export.exporter} exporter made the graph"
    if reasons:
        sentence += ", because " + "; ".join(reasons)
    if export.cache is not None and export.cache.status is CacheStatus.HIT:
        sentence += f" (taken from export cache entry {export.cache.key})"
        remedies.insert(
            0,
            "execution.export_cache: false to export the graph instead of taking it from the cache",
        )
    return ExportOrigin(sentence, tuple(remedies))
