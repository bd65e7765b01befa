"""Export a `Source` to an ONNX file (`export_to_onnx`, the platform's name): ordered
strategies (`strategies`), external data streaming (`external_data`), what the exporters
need around them (`workarounds`)."""

from onnxport.export.exporter import export_to_onnx

__all__ = ["export_to_onnx"]
