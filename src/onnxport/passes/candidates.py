"""The candidates a search tries: `quantization: auto`'s int8 settings or a decoder LM's
weight-only variants (`quantize_search` says which a task gets), and `optimize: auto`'s
levels."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from onnxport.names import Variant
from onnxport.passes.base import OnnxPass
from onnxport.passes.quantize import DynamicInt8Pass, StaticInt8Pass
from onnxport.passes.weight_only import Int4Pass, Int8WeightsPass
from onnxport.request.export_config import OptimizeLevel
from onnxport.request.quantize_config import QuantizeConfig
from onnxport.tasks import Task
from onnxport.verify.rules import FLOAT_LM_HEAD, SKIP_THE_VARIANT, SMALLER_BLOCKS


class QuantizeSetting(Protocol):
    """One kind of candidate the quantization search makes."""

    @property
    def name(self) -> str: ...
    @property
    def variant(self) -> Variant:
        """The name it is published as (and its file's, `output.filename`)."""
        ...

    @property
    def static(self) -> bool:
        """Whether its pass needs the calibration samples."""
        ...

    def onnx_pass(self) -> OnnxPass: ...
    def configure(self, settings: QuantizeConfig, excluded: list[str]) -> QuantizeConfig: ...
    def recorded(self, settings: QuantizeConfig) -> dict[str, object]: ...


@dataclass(frozen=True)
class Int8Setting:
    name: str
    static: bool
    per_channel: bool
    op_types: tuple[str, ...] | None = None
    """What to quantize when the user names nothing; None: onnxruntime's defaults."""
    variant: Variant = Variant.INT8

    def onnx_pass(self) -> OnnxPass:
        return StaticInt8Pass() if self.static else DynamicInt8Pass()

    def configure(self, settings: QuantizeConfig, excluded: list[str]) -> QuantizeConfig:
        return settings.model_copy(
            update={
                "per_channel": self.per_channel,
                "nodes_to_exclude": list(excluded),
                "op_types": settings.op_types or self.op_types,
            }
        )

    def recorded(self, settings: QuantizeConfig) -> dict[str, object]:
        return {
            "static": self.static,
            "per_channel": self.per_channel,
            "op_types": list(settings.op_types or []),
        }


@dataclass(frozen=True)
class WeightOnlySetting:
    """A decoder LM's weight-only variant, made as the explicit one is (the user's
    `quantize.block_size`, `symmetric`, `lm_head`)."""

    variant: Variant
    make: type[Int4Pass] | type[Int8WeightsPass]
    static: bool = False

    @property
    def name(self) -> str:
        return str(self.variant)

    def onnx_pass(self) -> OnnxPass:
        return self.make()

    def configure(self, settings: QuantizeConfig, excluded: list[str]) -> QuantizeConfig:
        return settings.model_copy(update={"nodes_to_exclude": list(excluded)})

    def recorded(self, settings: QuantizeConfig) -> dict[str, object]:
        return {
            "bits": self.make.bits,
            "block_size": settings.block_size,
            "symmetric": settings.symmetric,
            "lm_head": settings.lm_head.value,
        }


INT8_SETTINGS: tuple[QuantizeSetting, ...] = (
    Int8Setting("dynamic per-tensor", static=False, per_channel=False),
    Int8Setting("dynamic per-channel", static=False, per_channel=True),
    # Static QDQ of every op type puts the residual Adds and LayerNorms of a transformer in
    # int8 too, which costs it the most accuracy (a sentence encoder: cosine 0.58); its
    # MatMuls carry the speed-up.
    Int8Setting("static QDQ per-channel", static=True, per_channel=True, op_types=("MatMul",)),
)
WEIGHT_ONLY_SETTINGS: tuple[QuantizeSetting, ...] = (
    WeightOnlySetting(Variant.INT8_WEIGHTS, Int8WeightsPass),
    WeightOnlySetting(Variant.INT4, Int4Pass),
)
"""fp16 is not a candidate: it is the variant for GPU serving, and the search times on ONNX
Runtime's CPU provider (`verify.runtime.PROVIDERS`), where its ranking would say nothing
about the device it is for; an explicit `quantization: fp16` still makes it."""


@dataclass(frozen=True)
class QuantizeSearch:
    """The candidates `quantization: auto` tries, in order, and what to try when none
    passes."""

    target: str
    """What the search record and its refusal call the candidates."""
    settings: tuple[QuantizeSetting, ...]
    remedies: tuple[str, ...]
    leave_in_float: bool = True
    """Whether a failed candidate is tried again with the node the divergence search blames
    left in float. That search blames by the validation inputs' values, which judge int8
    candidates; a weight-only candidate is judged by its next tokens on real text, which a
    few float MatMuls do not restore (SmolLM2-135M int4: agreement 0.652, then 0.658, 0.656,
    0.652 and 0.653 with 1 to 4 left in float, 60 s of a 71 s search)."""


INT8_SEARCH = QuantizeSearch(
    "int8",
    INT8_SETTINGS,
    (SKIP_THE_VARIANT, "a larger quantize.max_excluded_nodes or quantize.search_budget_seconds"),
)
WEIGHT_ONLY_SEARCH = QuantizeSearch(
    "weight-only",
    WEIGHT_ONLY_SETTINGS,
    (SKIP_THE_VARIANT, SMALLER_BLOCKS, FLOAT_LM_HEAD),
    leave_in_float=False,
)


def quantize_search(task: Task) -> QuantizeSearch:
    """Which candidates `quantization: auto` tries for `task`: a decoder LM's weight-only
    variants (dynamic int8 quantizes its outlier activations per tensor and loses its next
    tokens: SmolLM2-135M keeps 0.57 of them), any other model's int8 settings."""
    return WEIGHT_ONLY_SEARCH if task is Task.TEXT_GENERATION else INT8_SEARCH


OPTIMIZE_LEVELS = (OptimizeLevel.NONE, OptimizeLevel.BASIC, OptimizeLevel.EXTENDED)
