"""How the model is exported and written: the `onnx` and `output` sections, and the opsets
each exporter writes."""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum
from typing import Any

from pydantic import field_validator, model_validator

from onnxport.names import StrEnum, Variant
from onnxport.request.sections import Section

DEFAULT_OPSET = 18
DEFAULT_FILENAME_PATTERN = "model_{quantization}.onnx"


class Quantization(str, Enum):
    NONE = "none"
    INT8 = "int8"
    INT8_STATIC = "int8-static"
    FP16 = "fp16"
    INT4 = "int4"
    """Weight-only: MatMul weights in 4 bits per block (`passes.weight_only`), for decoder
    LMs."""
    INT8_WEIGHTS = "int8-weights"
    """Weight-only: MatMul weights in 8 bits per block, activations in float (decoder LMs,
    whose outlier activations dynamic int8 cannot take)."""
    AUTO = "auto"
    """Search for the fastest variant that passes the gate (`passes.search`): int8 settings,
    or a decoder LM's `int8-weights` and `int4`."""

    @property
    def variant(self) -> Variant:
        """The published variant's name; `auto`'s is the int8 search's. A decoder LM's search
        publishes the variant it chooses under that one's name, `int8-weights` or `int4`
        (`passes.candidates.quantize_search`). `none` makes no variant: asking is a bug."""
        return Variant.INT8 if self is Quantization.AUTO else Variant(self.value)


# Spellings accepted for the same setting; `dynamic` is the platform's older name for int8.
_QUANTIZATION_ALIASES = {"dynamic": "int8", "int8-dynamic": "int8", "static": "int8-static"}


class OptimizeLevel(str, Enum):
    NONE = "none"
    BASIC = "basic"
    EXTENDED = "extended"
    AUTO = "auto"
    """Measure every level on this machine and keep the fastest that validates."""


class Exporter(StrEnum):
    AUTO = "auto"
    DYNAMO = "dynamo"
    TORCHSCRIPT = "torchscript"


EXPORTER_OPSETS = {Exporter.DYNAMO: range(18, 24), Exporter.TORCHSCRIPT: range(7, 21)}
"""The opsets each installed torch.onnx exporter writes: the one place they are written
(the settings, `export.strategies` and their messages read them here)."""
MIN_OPSET = min(opsets.start for opsets in EXPORTER_OPSETS.values())
MAX_OPSET = max(opsets.stop for opsets in EXPORTER_OPSETS.values()) - 1


def unsupported_opset(opset: int, exporters: Sequence[Exporter]) -> str | None:
    """Why none of `exporters` writes `opset`, with the opsets each does; None when one of
    them writes it."""
    if any(opset in EXPORTER_OPSETS[e] for e in exporters):
        return None
    spans = [(e, f"{EXPORTER_OPSETS[e].start}-{EXPORTER_OPSETS[e].stop - 1}") for e in exporters]
    if len(spans) == 1:
        ((exporter, span),) = spans
        return f"opset {opset} is not supported by the {exporter} exporter ({span})"
    each = ", ".join(f"{e}: {span}" for e, span in spans)
    return f"opset {opset} is not supported by the installed exporters ({each})"


class ExternalData(str, Enum):
    """Where the published model's weights go: in the `.onnx` file or in `<file>.data`."""

    AUTO = "auto"
    ALWAYS = "always"
    NEVER = "never"


class OnnxConfig(Section):
    opset_version: int = DEFAULT_OPSET
    quantization: Quantization = Quantization.NONE
    optimize: OptimizeLevel = OptimizeLevel.NONE
    run_smoke_test: bool = True
    exporter: Exporter = Exporter.AUTO
    repeat_layers: bool = True
    """A decoder whose layers are all alike is traced with four of them and the others are
    repeated in the graph (`onnxport.export.layers`): its first export takes a fraction of
    the time, and the graph is proven like any other. `false` traces every layer; only then
    do the graph's values carry the FX names the divergence search pairs them by."""

    @field_validator("opset_version")
    @classmethod
    def _supported_opset(cls, value: int) -> int:
        refused = unsupported_opset(value, tuple(EXPORTER_OPSETS))
        if refused is not None:
            raise ValueError(f"{refused}; use {DEFAULT_OPSET}")
        return value

    @model_validator(mode="after")
    def _opset_of_the_exporter(self) -> OnnxConfig:
        # Refused with the settings, not once the model is loaded and handed to the exporter.
        if self.exporter is not Exporter.AUTO:
            refused = unsupported_opset(self.opset_version, (self.exporter,))
            if refused is not None:
                raise ValueError(f"{refused}; choose an opset in that range, or exporter: auto")
        return self

    @field_validator("quantization", mode="before")
    @classmethod
    def _alias(cls, value: Any) -> Any:
        if isinstance(value, str):
            return _QUANTIZATION_ALIASES.get(value.strip().lower(), value.strip().lower())
        return value


class OutputConfig(Section):
    filename_pattern: str = DEFAULT_FILENAME_PATTERN
    external_data: ExternalData = ExternalData.AUTO
    """`auto`: one self-contained file, weights in `<file>.data` beside it only above
    protobuf's 2 GiB limit; `always`: in `<file>.data` at any size (ONNX Runtime then maps
    them instead of copying them: less memory per session); `never`: refused above 2 GiB."""
    keep_debug_metadata: bool = False
    """Keep the exporter's stack traces and source locations in the published models; they
    hold the converting machine's file paths (`onnxport.export.metadata`)."""

    @field_validator("external_data", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("filename_pattern")
    @classmethod
    def _plain_file_name(cls, value: str) -> str:
        if "{quantization}" not in value:
            raise ValueError("must contain '{quantization}' so that each variant gets its own file")
        if "/" in value or "\\" in value or ".." in value or value.startswith("~"):
            raise ValueError("must be a plain file name inside the output directory (no '/', '..')")
        if not value.endswith(".onnx"):
            raise ValueError("must end with '.onnx'")
        try:
            value.format(quantization=Variant.FP32)
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(f"has a placeholder other than '{{quantization}}': {e}") from None
        return value

    def filename(self, variant: Variant) -> str:
        return self.filename_pattern.format(quantization=variant)
