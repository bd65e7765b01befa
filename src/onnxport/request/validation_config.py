"""How the models are judged against PyTorch: the `validation` section."""

from __future__ import annotations

from enum import Enum

from pydantic import Field, field_validator

from onnxport.request.sections import Section

DEFAULT_MIN_TASK_AGREEMENT = 0.99
DEFAULT_GENERATE_TOKENS = 32
DEFAULT_MAX_ERROR_RATIO = 4.0
DEFAULT_FLOAT64_MAX_WEIGHTS_GB = 6.0
"""A float64 copy takes twice the float32 weights: 12 GB beside 6 GB fits a 24 GiB machine."""
DEFAULT_MIN_NEXT_TOKEN_AGREEMENT = 0.9
DEFAULT_MAX_PERPLEXITY_INCREASE = 0.05


class Yardstick(str, Enum):
    """How the fp32 model's values are judged against PyTorch's."""

    BUDGET = "budget"
    """ONNX's error against PyTorch in float64 (the exact answer), within
    `max_error_ratio` times PyTorch's own float32 error (`onnxport.verify.compare`)."""
    TOLERANCE = "tolerance"
    """|onnx - pytorch_fp32| <= atol + rtol * |pytorch_fp32|, element by element."""


class ValidationConfig(Section):
    shapes: list[tuple[int, int]] | None = None
    """(batch, sequence) pairs for text, (batch, image size) for vision; None: the defaults."""
    mode: Yardstick | None = None
    """None: `tolerance` when `atol` or `rtol` is set (an explicit override), else `budget`."""
    max_error_ratio: float = Field(DEFAULT_MAX_ERROR_RATIO, gt=0)
    """`budget`: how many times PyTorch's own float32 error ONNX's error may be."""
    float64_max_weights_gb: float = Field(DEFAULT_FLOAT64_MAX_WEIGHTS_GB, ge=0)
    """`budget`: above this many GB of float32 weights, PyTorch is not run in float64 (it
    needs twice the memory) and the tolerance judges, saying why; 0: never."""
    atol: float | None = Field(None, gt=0)
    rtol: float | None = Field(None, ge=0)
    min_task_agreement: float = Field(DEFAULT_MIN_TASK_AGREEMENT, ge=0.0, le=1.0)
    seed: int = 0
    localize: bool = True
    """After a failed validation, search for where the model diverges: its first diverging
    node (`onnxport.verify.divergence`)."""
    eval_file: str | None = None
    """A labelled evaluation set (JSON lines, see `onnxport.verify.evaluation`): every model must
    then also keep PyTorch's entity F1 (token classification) or accuracy (sequence
    classification) on it, within `max_metric_drop`. Relative: see `FILE_SETTINGS`."""
    max_metric_drop: float = Field(0.01, ge=0.0, le=1.0)
    generate_tokens: int = Field(DEFAULT_GENERATE_TOKENS, ge=0, le=4096)
    """text-generation: the new tokens each greedy generation proof prompt runs to; the
    ONNX model's tokens must be PyTorch's (transformers' `generate()`); 0: no such proof."""
    min_next_token_agreement: float = Field(DEFAULT_MIN_NEXT_TOKEN_AGREEMENT, ge=0.0, le=1.0)
    """Text generation: a variant's next-token argmax must equal the fp32 model's at this
    share of the positions of real text, teacher-forced (`onnxport.verify.next_token`)."""
    max_perplexity_increase: float = Field(DEFAULT_MAX_PERPLEXITY_INCREASE, ge=0.0)
    """Text generation: a variant's perplexity on that text may exceed the fp32 model's by
    this share (0.05: 5%)."""

    @property
    def yardstick(self) -> Yardstick:
        if self.mode is not None:
            return self.mode
        explicit = self.atol is not None or self.rtol is not None
        return Yardstick.TOLERANCE if explicit else Yardstick.BUDGET

    @field_validator("shapes")
    @classmethod
    def _positive(cls, value: list[tuple[int, int]] | None) -> list[tuple[int, int]] | None:
        if value is not None:
            if not value:
                raise ValueError("must list at least one shape, or be left out")
            for shape in value:
                if min(shape) < 1 or max(shape) > 65536:
                    raise ValueError(f"{list(shape)} has a dimension outside 1..65536")
        return value
