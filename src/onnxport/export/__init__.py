"""Export a `Source` to an ONNX file (`export_to_onnx`, the platform's name): ordered
strategies (`strategies`), external data streaming (`external_data`), the exporters' debug
metadata stripped of this machine's paths (`metadata`), what the exporters need around them
(`workarounds`)."""

from onnxport.export.exporter import export_to_onnx

__all__ = ["export_to_onnx"]
