"""What the plain PyTorch loaders share: the input spec, the inputs it describes, and the
wrapper that gives any `nn.Module` the calling convention of the exporters.

An input spec is a small YAML or JSON file:

    inputs:
      - {name: x, dtype: float32, shape: [batch, 16]}
      - {name: ids, dtype: int64, shape: [batch, sequence], range: [0, 100]}
    outputs: [embedding]          # optional; default `output` or `output_0`, `output_1`, ...
    task: feature-extraction      # optional; decides the agreement metric

A shape lists static sizes (integers) and named dynamic dimensions (strings). The dimension
named `batch` takes the batch size of each validation shape; every other name takes its
`size` (the second number of `validation.shapes`). Integer inputs are drawn from `range`
(low inclusive, high exclusive; default [0, 10)), floats from a normal distribution (or
uniformly from `range`), booleans at random.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic import ValidationError as PydanticValidationError

from onnxport.artifact.records.source import SourceKind
from onnxport.errors import SourceError, one_line
from onnxport.sources.base import Source
from onnxport.tasks import Modality, Task

logger = logging.getLogger(__name__)

BATCH_DIM = "batch"
EXAMPLE_SHAPE = (2, 13)
"""(batch, size) the export traces with: 13 is unlikely to equal a static size by chance,
which would let the dynamo exporter tie a dynamic dimension to it."""
DEFAULT_SHAPES = ((1, 8), (2, 13), (4, 21))
DEFAULT_INT_RANGE = (0, 10)
DEFAULT_TASK = Task.FEATURE_EXTRACTION
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "float64": torch.float64,
    "int64": torch.int64,
    "int32": torch.int32,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "bool": torch.bool,
}
DTypeName = Literal["float32", "float16", "float64", "int64", "int32", "int8", "uint8", "bool"]


class TensorSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    dtype: DTypeName = "float32"
    shape: list[int | str]
    range: tuple[float, float] | None = None

    @field_validator("shape")
    @classmethod
    def _sizes(cls, value: list[int | str]) -> list[int | str]:
        for dim in value:
            if isinstance(dim, int) and dim < 1:
                raise ValueError(f"static sizes must be at least 1, got {dim}")
            if isinstance(dim, str) and not dim.isidentifier():
                raise ValueError(f"dimension names must be identifiers, got {dim!r}")
        return value

    @model_validator(mode="after")
    def _ordered_range(self) -> TensorSpec:
        if self.range is not None and not self.range[0] < self.range[1]:
            raise ValueError(f"range {list(self.range)} must be [low, high] with low < high")
        return self


class InputSpec(BaseModel):
    """A plain model's inputs, in the order its forward takes them, and its outputs' names."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    inputs: list[TensorSpec] = Field(min_length=1)
    outputs: list[str] | None = None
    task: Task | None = None

    @model_validator(mode="after")
    def _unique_names(self) -> InputSpec:
        names = [i.name for i in self.inputs]
        if len(set(names)) != len(names):
            raise ValueError(f"input names must be unique: {names}")
        if self.outputs is not None and len(set(self.outputs)) != len(self.outputs):
            raise ValueError(f"output names must be unique: {self.outputs}")
        return self

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(i.name for i in self.inputs)

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        return {
            i.name: {axis: dim for axis, dim in enumerate(i.shape) if isinstance(dim, str)}
            for i in self.inputs
        }


def parse_input_spec(data: Any, *, origin: str) -> InputSpec:
    try:
        return InputSpec.model_validate(data)
    except PydanticValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in item['loc']) or '(top level)'}: "
            f"{item['msg'].removeprefix('Value error, ')}"
            for item in e.errors()
        )
        raise SourceError(
            f"the input spec {origin} is invalid: {problems}",
            hint="see `onnxport.sources.plain` for the format "
            "(inputs: [{name: x, dtype: float32, shape: [batch, 16]}])",
        ) from e


def read_input_spec(path: Path) -> InputSpec:
    """Read an input spec from a YAML or JSON file (JSON is YAML)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SourceError(f"cannot read the input spec {path}: {e}", hint="check the path") from e
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise SourceError(f"the input spec {path} is not valid YAML or JSON: {e}") from e
    return parse_input_spec(data, origin=str(path))


class TensorInputs:
    """Example inputs for a plain model, built from its input spec."""

    def __init__(self, spec: InputSpec) -> None:
        self.spec = spec

    def __call__(self, batch: int, size: int, seed: int) -> dict[str, torch.Tensor]:
        generator = torch.Generator().manual_seed(seed)
        return {i.name: self._tensor(i, batch, size, generator) for i in self.spec.inputs}

    @staticmethod
    def _tensor(
        spec: TensorSpec, batch: int, size: int, generator: torch.Generator
    ) -> torch.Tensor:
        shape = [
            dim if isinstance(dim, int) else batch if dim == BATCH_DIM else size
            for dim in spec.shape
        ]
        dtype = DTYPES[spec.dtype]
        if dtype is torch.bool:
            return torch.randint(0, 2, shape, generator=generator).to(torch.bool)
        if dtype.is_floating_point:
            if spec.range is None:
                return torch.randn(shape, generator=generator).to(dtype)
            low, high = spec.range
            return (torch.rand(shape, generator=generator) * (high - low) + low).to(dtype)
        low, high = spec.range or DEFAULT_INT_RANGE
        return torch.randint(int(low), int(high), shape, generator=generator, dtype=dtype)


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    """The tensors of a model's output, flattened in order (tuples, lists, dict values)."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)
    elif value is not None:
        raise TypeError(f"the model returned a {type(value).__name__}, not tensors")


class PositionalModule(torch.nn.Module):
    """Calls a plain model with its inputs in the spec's order, whatever its forward calls
    them, and returns its outputs as a flat tuple of tensors."""

    def __init__(self, model: torch.nn.Module, input_names: tuple[str, ...]) -> None:
        super().__init__()
        self.model = model
        self.input_names = input_names

    def forward(self, **inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(_tensors(self.model(*(inputs[name] for name in self.input_names))))

    def train(self, mode: bool = True) -> PositionalModule:
        # The model was put in eval mode on load. A torch.export program's mode was fixed
        # when it was exported, and its module raises on train()/eval().
        self.training = mode
        return self


def plain_source(
    model: torch.nn.Module,
    spec: InputSpec,
    *,
    path: Path,
    kind: SourceKind,
    architecture: str,
    task: Task | None,
    weight_files: tuple[Path, ...] = (),
) -> Source:
    """A `Source` for a plain model: checks that it runs on the spec's example inputs and
    names its outputs."""
    wrapper = PositionalModule(model, spec.input_names)
    factory = TensorInputs(spec)
    try:
        with torch.no_grad():
            outputs = wrapper(**factory(*EXAMPLE_SHAPE, 0))
    except Exception as e:  # user models raise anything on inputs that do not fit
        message = one_line(e)
        raise SourceError(
            f"{architecture} from {path} fails on inputs built from its input spec "
            f"(batch {EXAMPLE_SHAPE[0]}, size {EXAMPLE_SHAPE[1]}): {type(e).__name__}: {message}",
            hint="check the input spec: input order, dtypes, shapes, and `range: [low, high]` "
            "for integer inputs such as token ids",
        ) from e
    if not outputs:
        raise SourceError(f"{architecture} from {path} returned no tensors")
    if spec.outputs is not None:
        if len(spec.outputs) != len(outputs):
            raise SourceError(
                f"the input spec names {len(spec.outputs)} outputs ({', '.join(spec.outputs)}) "
                f"but {architecture} returns {len(outputs)} tensors",
                hint="list one name per returned tensor, in order, or leave `outputs` out",
            )
        output_names = tuple(spec.outputs)
    elif len(outputs) == 1:
        output_names = ("output",)
    else:
        output_names = tuple(f"output_{i}" for i in range(len(outputs)))
    resolved = task or spec.task or DEFAULT_TASK
    logger.info(
        "loaded %s (%s, task %s) from %s: inputs %s, outputs %s",
        architecture,
        kind,
        resolved.value,
        path,
        ", ".join(spec.input_names),
        ", ".join(output_names),
    )
    return Source(
        module=wrapper,
        task=resolved,
        modality=Modality.TENSOR,
        path=path,
        kind=kind,
        architecture=architecture,
        input_names=spec.input_names,
        output_names=output_names,
        dynamic_axes=spec.dynamic_axes(),
        make_inputs=factory,
        example_shape=EXAMPLE_SHAPE,
        default_shapes=DEFAULT_SHAPES,
        weight_files=weight_files,
        num_parameters=sum(p.numel() for p in model.parameters()),
    )
