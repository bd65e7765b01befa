"""The one comparison: the tolerance, and the error budget against float64."""

from __future__ import annotations

import numpy as np
import pytest

from onnxport.verify.compare import EPS32, FLOOR_ULPS, Tolerance, compare, error_budget

RNG = np.random.default_rng(0)
EXACT = RNG.normal(size=(4, 64)) * 10.0
"""The exact answer (float64), at the scale of a language model's logits."""


def _rounded(exact: np.ndarray, relative: float, seed: int) -> np.ndarray:
    """`exact` with float32-like rounding noise of `relative` size."""
    noise = np.random.default_rng(seed).normal(size=exact.shape) * relative
    return exact * (1.0 + noise)


def test_onnx_as_far_from_the_exact_answer_as_pytorch_is_within_budget() -> None:
    pytorch = _rounded(EXACT, 1e-6, seed=1)
    onnx = _rounded(EXACT, 1e-6, seed=2)
    found = error_budget(onnx, pytorch, EXACT)
    assert 0.5 < found.ratio < 2.0
    assert found.onnx_max > 0 and found.pytorch_max > 0
    assert found.onnx_rms <= found.onnx_max


def test_the_ratio_is_the_worse_of_max_and_rms() -> None:
    pytorch = _rounded(EXACT, 1e-6, seed=1)
    spread = _rounded(EXACT, 1e-5, seed=2)  # ten times worse everywhere: RMS and max
    one_element = pytorch.copy()
    one_element[2, 7] += 1e-2  # right everywhere but one place: the max sees it
    assert error_budget(spread, pytorch, EXACT).ratio == pytest.approx(10, rel=0.5)
    assert error_budget(one_element, pytorch, EXACT).ratio > 100


def test_an_output_pytorch_computes_exactly_gets_a_floor_not_a_zero_budget() -> None:
    exact = np.arange(12, dtype=np.float64).reshape(3, 4)
    one_ulp = exact * (1 + EPS32)  # what rounding to float32 alone may do
    found = error_budget(one_ulp, exact.copy(), exact)
    assert found.pytorch_max == 0.0
    assert 0 < found.ratio <= 1 / FLOOR_ULPS + 1e-9
    assert error_budget(exact + 1e-3, exact.copy(), exact).ratio > 100


def test_a_wrong_shape_or_a_misplaced_nan_is_an_infinite_ratio() -> None:
    pytorch = _rounded(EXACT, 1e-6, seed=1)
    assert error_budget(EXACT[:2], pytorch, EXACT).ratio == float("inf")
    nan = EXACT.copy()
    nan[0, 0] = np.nan
    assert error_budget(nan, pytorch, EXACT).ratio == float("inf")
    both = EXACT.copy()
    both[0, 0] = np.inf
    assert error_budget(both, both.copy(), both).ratio == 0.0  # the same special value


def test_identical_answers_have_a_zero_ratio_and_empty_ones_too() -> None:
    assert error_budget(EXACT, EXACT, EXACT).ratio == 0.0
    empty = np.zeros((0, 3))
    assert error_budget(empty, empty, empty).ratio == 0.0


def test_the_tolerance_is_numpys_allclose() -> None:
    expected = np.array([1.0, -2.0, 0.0])
    tolerance = Tolerance(atol=1e-4, rtol=1e-3)
    assert compare(expected + 5e-5, expected, tolerance).within
    assert not compare(expected + 3e-3, expected, tolerance).within
    assert np.allclose(expected + 5e-5, expected, atol=1e-4, rtol=1e-3)
