"""The one comparison of an ONNX value with its reference, used by validation and by the
divergence search alike, so that both always agree about the same tensor.

The tolerance (`compare`):
- absolute error: |actual - expected|;
- relative error: |actual - expected| / max(|expected|, atol), element by element (the floor
  keeps values near zero from dominating);
- within tolerance: every element has |actual - expected| <= atol + rtol * |expected|, the
  shapes are equal and NaN or infinity stand in the same places (numpy's `allclose` rule).

The error budget (`error_budget`): the same PyTorch model run in float64 stands for the exact
answer, and ONNX's float32 error is measured against PyTorch's own float32 error:
- PyTorch's error: e_pt = |torch32 - torch64|; ONNX's error: e_onnx = |onnx32 - torch64|;
- for each of two statistics, the maximum and the root mean square (RMS) over the tensor:
  ratio = stat(e_onnx) / max(stat(e_pt), floor), floor = FLOOR_ULPS * eps32 * stat(|torch64|)
  (an output PyTorch computes exactly still gets a few float32 roundings of its own scale,
  so that a ratio of two tiny numbers never decides);
- the value's ratio is the larger of the two: the maximum catches a bug confined to a few
  elements, the RMS one spread thinly over all of them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

INFINITE = float("inf")


@dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float


@dataclass(frozen=True)
class TensorComparison:
    max_abs_diff: float
    max_rel_diff: float
    within: bool


def compare(actual: np.ndarray, expected: np.ndarray, tolerance: Tolerance) -> TensorComparison:
    """How far `actual` is from `expected`, and whether within `tolerance`."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    if actual.shape != expected.shape:
        return TensorComparison(INFINITE, INFINITE, False)
    if actual.size == 0:
        return TensorComparison(0.0, 0.0, True)
    finite_actual, finite_expected = np.isfinite(actual), np.isfinite(expected)
    both = finite_actual & finite_expected
    diff = np.zeros(actual.shape)
    diff[both] = np.abs(actual[both] - expected[both])
    # Where either is NaN or infinite, they agree only if both are the same special value.
    same_special = ~finite_actual & ~finite_expected
    same_special &= (actual == expected) | (np.isnan(actual) & np.isnan(expected))
    diff[~both & ~same_special] = INFINITE
    magnitude = np.where(finite_expected, np.abs(expected), 0.0)
    within = bool((diff <= tolerance.atol + tolerance.rtol * magnitude).all())
    relative = diff / np.maximum(magnitude, tolerance.atol)
    return TensorComparison(float(diff.max()), float(relative.max()), within)


def relative_l2(actual: np.ndarray, expected: np.ndarray) -> float:
    """||actual - expected|| / ||expected||: how much of a value is lost, insensitive to single
    outliers (ranks a variant's nodes by the damage they do)."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    if actual.shape != expected.shape:
        return INFINITE
    norm = float(np.linalg.norm(expected))
    return float(np.linalg.norm(actual - expected)) / max(norm, 1e-12)


EPS32 = float(np.finfo(np.float32).eps)
FLOOR_ULPS = 4.0
"""The floor of PyTorch's own error, in float32 epsilons of the output's scale."""


@dataclass(frozen=True)
class ErrorBudget:
    """ONNX's and PyTorch's float32 errors against float64, and how many times PyTorch's own
    ONNX's is (`ratio`; infinite for a wrong shape or misplaced NaN/infinity)."""

    onnx_max: float
    onnx_rms: float
    pytorch_max: float
    pytorch_rms: float
    ratio: float


def error_budget(actual: np.ndarray, reference: np.ndarray, exact: np.ndarray) -> ErrorBudget:
    """How far `actual` (ONNX, float32) is from `exact` (PyTorch in float64), in multiples of
    how far `reference` (PyTorch in float32) is from it."""
    actual = np.asarray(actual, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    exact = np.asarray(exact, dtype=np.float64)
    if actual.shape != exact.shape or reference.shape != exact.shape:
        return ErrorBudget(INFINITE, INFINITE, 0.0, 0.0, INFINITE)
    if exact.size == 0:
        return ErrorBudget(0.0, 0.0, 0.0, 0.0, 0.0)
    finite = np.isfinite(exact)
    # Where the exact answer is NaN or infinite, ONNX must hold the same special value; where
    # it is finite, a finite value.
    same = (actual == exact) | (np.isnan(actual) & np.isnan(exact))
    if not same[~finite].all() or not np.isfinite(actual[finite]).all():
        return ErrorBudget(INFINITE, INFINITE, 0.0, 0.0, INFINITE)
    scale = np.abs(exact[finite])
    onnx = np.abs(actual[finite] - exact[finite])
    torch = np.abs(reference[finite] - exact[finite])
    torch = np.where(np.isfinite(torch), torch, 0.0)  # PyTorch's own overflow is no budget
    if onnx.size == 0:
        return ErrorBudget(0.0, 0.0, 0.0, 0.0, 0.0)

    def rms(values: np.ndarray) -> float:
        return float(np.sqrt(np.mean(np.square(values))))

    figures = (float(onnx.max()), rms(onnx), float(torch.max()), rms(torch))
    floor_max = FLOOR_ULPS * EPS32 * float(scale.max())
    floor_rms = FLOOR_ULPS * EPS32 * rms(scale)
    ratios = [
        _ratio(figures[0], max(figures[2], floor_max)),
        _ratio(figures[1], max(figures[3], floor_rms)),
    ]
    return ErrorBudget(*figures, ratio=max(ratios))


def _ratio(error: float, budget: float) -> float:
    if error == 0.0:
        return 0.0
    return error / budget if budget > 0 else INFINITE
