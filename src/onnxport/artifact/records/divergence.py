"""Where a refused model parts ways with its reference (`onnxport.verify.divergence`)."""

from __future__ import annotations

from pydantic import Field

from onnxport.artifact.records import Record


class NodeDivergenceRecord(Record):
    """One ONNX node's output against its reference (PyTorch's value, or the fp32 model's)."""

    value: str
    node: str
    op_type: str
    module: str | None
    max_abs_diff: float
    max_rel_diff: float
    input_max_abs_diff: float
    """The largest error among its compared inputs: small means this node introduced it."""
    relative_l2: float | None = None
    """||actual - expected|| / ||expected||: how much of the value is lost (variants)."""
    input_relative_l2: float | None = None
    """The largest `relative_l2` among its compared inputs (variants)."""
    error_ratio: float | None = None
    """Its error against PyTorch in float64 in multiples of PyTorch's own float32 error at
    the same node (`onnxport.verify.compare.error_budget`); None when the tolerance judged."""
    onnx_max: float | None = None
    onnx_rms: float | None = None
    pytorch_max: float | None = None
    pytorch_rms: float | None = None
    input_error_ratio: float | None = None
    """The largest `error_ratio` among its compared inputs: within the limit means this node
    introduced the error."""


class DivergenceRecord(Record):
    """Where a failed model parts ways with its reference (`onnxport.verify.divergence`)."""

    against: str
    """`pytorch`, or `fp32-onnx` for a variant."""
    shape: list[int]
    compared: int
    first: NodeDivergenceRecord | None
    following: list[NodeDivergenceRecord] = Field(default_factory=list)
    atol: float | None = None
    rtol: float | None = None
    """The tolerance, when it judged the values."""
    max_error_ratio: float | None = None
    """The error budget's limit (`validation.max_error_ratio`), when it judged the values."""
    suggestion: str | None = None
    note: str | None = None
    seconds: float = 0.0
    exclude: list[str] = Field(default_factory=list)

    def summary(self) -> str:
        """One line for the error message of a failed conversion."""
        if self.first is None:
            return f"no single diverging node found ({self.note or f'compared {self.compared}'})"
        f = self.first
        where = f"{f.op_type}, {f.module}" if f.module else f.op_type
        if self.against == "fp32-onnx":
            line = (
                f"the variant loses the most at node {f.node} ({where}): relative error "
                f"{f.relative_l2 or 0.0:.2g} against the fp32 model, from inputs at "
                f"{f.input_relative_l2 or 0.0:.2g}"
            )
            return line + (f"; try {self.suggestion}" if self.suggestion else "")
        if self.max_error_ratio is not None:
            ratio = f.error_ratio or 0.0
            times = f"{ratio:.0f}" if ratio >= 10 else f"{ratio:.2g}"
            line = (
                f"first divergence at node {f.node} ({where}): error {times}x PyTorch's own "
                f"(limit {self.max_error_ratio:g})"
            )
        else:
            line = (
                f"first divergence at node {f.node} ({where}): max abs {f.max_abs_diff:.2g} "
                f"vs tolerance {self.atol or 0.0:g}"
            )
        return line + (f"; {self.suggestion}" if self.suggestion else "")
