"""Export a `Source` to an ONNX file (`export_to_onnx`, the platform's name): ordered
strategies (`strategies`), the dynamo graph as a template the weights are bound into
(`template`), external data streaming (`external_data`), the exporters' debug metadata
stripped of this machine's paths (`metadata`), what the exporters need around them
(`workarounds`), and the export cache (`cache`).

`export_to_onnx` is imported on first use (PEP 562): importing this package must not load
torch, so that `onnxport cache` reads and prunes the cache without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from onnxport.export.exporter import export_to_onnx

__all__ = ["export_to_onnx"]


def __getattr__(name: str) -> Any:
    if name == "export_to_onnx":
        from onnxport.export.exporter import export_to_onnx

        return export_to_onnx
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
