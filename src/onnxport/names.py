"""Names that are enums in the code and plain strings in `manifest.json`, MLflow and file names:
`StrEnum` (Python 3.11's, also on 3.10), and `Variant`, the name each published model goes by.

A `StrEnum` member formats as its value (`f"model_{Variant.FP32}.onnx"` is `model_fp32.onnx`)
and equals it (`Variant.FP32 == "fp32"`), so what is written and read stays the same strings.
"""

from __future__ import annotations

import sys
from enum import Enum

if sys.version_info >= (3, 11):
    from enum import StrEnum
else:

    class StrEnum(str, Enum):
        """Python 3.11's `enum.StrEnum`: a member is its value, in `str()` and `format()`."""

        def __str__(self) -> str:
            return str(self.value)

        def __format__(self, spec: str) -> str:
            return format(str(self.value), spec)


__all__ = ["StrEnum", "Variant"]


class Variant(StrEnum):
    """A published model (`model_{variant}.onnx`, the manifest's `variant`): the fp32 model,
    or one made from it (`onnx.quantization`)."""

    FP32 = "fp32"
    INT8 = "int8"
    INT8_STATIC = "int8-static"
    FP16 = "fp16"
    INT4 = "int4"
    INT8_WEIGHTS = "int8-weights"
