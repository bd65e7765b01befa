"""How the quantized variant is made: the `quantize` section (`onnxport.passes.quantize`)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from onnxport.request.sections import Section

DEFAULT_CALIBRATION_SAMPLES = 32
DEFAULT_SEARCH_BUDGET_SECONDS = 600.0
DEFAULT_MAX_EXCLUDED_NODES = 4
DEFAULT_BLOCK_SIZE = 32
DEFAULT_ACCURACY_LEVEL = 4
"""int8 compute for MatMulNBits on CPU: the fastest, at no measurable cost in accuracy."""


class LmHead(str, Enum):
    """How int4 stores a language model's vocabulary projection (`QuantizeConfig.lm_head`)."""

    INT4 = "int4"
    INT8 = "int8"
    FLOAT = "float"


class QuantizeConfig(Section):
    """How the quantized variant is made (see `onnxport.passes.quantize`)."""

    per_channel: bool = False
    reduce_range: bool = False
    nodes_to_exclude: list[str] = Field(default_factory=list)
    """Node names left in float; a failed gate's message suggests which."""
    op_types: list[str] | None = None
    """Operator types to quantize; None: onnxruntime's defaults."""
    calibration_file: Path | None = None
    """Static quantization's samples: plain text, one per line, or JSON lines (`text`, or
    `words` as in an eval file); None: `validation.eval_file`'s texts, else built-in text."""
    calibration_samples: int = Field(DEFAULT_CALIBRATION_SAMPLES, ge=1, le=10000)
    on_failure: Literal["fail", "skip"] = "fail"
    """A variant under its accuracy gate fails the conversion, or is skipped (not published,
    recorded in the manifest) while the fp32 model is published."""
    search_budget_seconds: float = Field(DEFAULT_SEARCH_BUDGET_SECONDS, gt=0)
    """`quantization: auto`: no new candidate is tried once the search has run this long."""
    max_excluded_nodes: int = Field(DEFAULT_MAX_EXCLUDED_NODES, ge=0, le=100)
    """`quantization: auto`: at most this many nodes left in float per candidate setting."""
    block_size: int = DEFAULT_BLOCK_SIZE
    """int4, int8-weights: weights per quantization block (a scale and zero point each); a
    power of 2, 16 or more."""
    symmetric: bool = False
    """int4, int8-weights: blocks without a zero point (see `passes.weight_only`)."""
    accuracy_level: int = Field(DEFAULT_ACCURACY_LEVEL, ge=0, le=4)
    """int4, int8-weights: MatMulNBits' compute type; 0: the input's type, 1: fp32, 2: fp16,
    3: bf16, 4: int8 (the fast one on CPU)."""
    lm_head: LmHead = LmHead.INT8
    """int4, int8-weights: how the MatMul that makes the logits is stored: `int4` like the
    others (int8-weights: in 8 bits), `int8` (MatMulNBits with 8 bits), or `float`. The
    vocabulary projection decides the next token most directly, and a tied one is the
    embedding's weight."""

    @field_validator("block_size")
    @classmethod
    def _power_of_two(cls, value: int) -> int:
        if value < 16 or value & (value - 1):
            raise ValueError("must be a power of 2, at least 16 (MatMulNBits' blocks)")
        return value
