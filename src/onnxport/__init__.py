"""onnxport: convert trained PyTorch models to validated, fast, traceable ONNX models."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("onnxport")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

__all__ = ["__version__"]
