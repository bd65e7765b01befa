"""The one element-wise comparison of an ONNX value with its reference, used by validation
and by the divergence search alike, so that both always agree about the same tensor.

- absolute error: |actual - expected|;
- relative error: |actual - expected| / max(|expected|, atol), element by element (the floor
  keeps values near zero from dominating);
- within tolerance: every element has |actual - expected| <= atol + rtol * |expected|, the
  shapes are equal and NaN or infinity stand in the same places (numpy's `allclose` rule).
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
