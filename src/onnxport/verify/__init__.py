"""The proof that an ONNX model computes what PyTorch computes: ONNX Runtime sessions
(`runtime`), the one element-wise comparison (`compare`), validation against PyTorch
(`validate`), task metrics on a labelled set (`evaluation`), the one accuracy gate (`gate`),
and where a failed model parts ways (`divergence`)."""
