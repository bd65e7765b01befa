"""Coverage: which architectures and tasks onnxport converts and validates."""
