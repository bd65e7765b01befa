"""The smoke test: a published ONNX file loads on its own and answers sanely.

Run on the published file in a fresh ONNX Runtime session, with nothing from the conversion
in memory, so that it catches a file that only worked because of state in the converter.
This module imports no torch.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from onnxport.errors import SmokeTestError, one_line

logger = logging.getLogger(__name__)

# Sizes used for symbolic dimensions when no sample inputs are given.
DEFAULT_DIM_VALUES = {"batch": 2, "sequence": 16}
_ONNX_TO_NUMPY = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(bool)": np.bool_,
}


@dataclass(frozen=True)
class SmokeTestResult:
    model_path: Path
    passed: bool
    load_seconds: float
    run_seconds: float
    output_shapes: dict[str, list[int]]
    problems: tuple[str, ...] = ()


def _dims(arg: ort.NodeArg) -> list[int | str | None]:
    return list(arg.shape) if arg.shape is not None else []


def generate_inputs(session: ort.InferenceSession, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs that fit the model's declared inputs: small token ids, ones for masks."""
    rng = np.random.default_rng(seed)
    inputs = {}
    for arg in session.get_inputs():
        shape = [d if isinstance(d, int) else DEFAULT_DIM_VALUES.get(str(d), 1) for d in _dims(arg)]
        dtype = _ONNX_TO_NUMPY.get(arg.type, np.float32)
        if np.issubdtype(dtype, np.integer):
            if "mask" in arg.name:
                value = np.ones(shape, dtype=dtype)
            elif "type" in arg.name:
                value = np.zeros(shape, dtype=dtype)
            else:
                value = rng.integers(1, 100, size=shape).astype(dtype)
        elif dtype is np.bool_:
            value = np.ones(shape, dtype=dtype)
        else:
            value = rng.standard_normal(shape).astype(dtype)
        inputs[arg.name] = value
    return inputs


def _expected_problems(
    session: ort.InferenceSession, inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray]
) -> list[str]:
    bound: dict[str, int] = {}
    for arg in session.get_inputs():
        for dim, size in zip(_dims(arg), inputs[arg.name].shape):
            if isinstance(dim, str):
                bound.setdefault(dim, size)
    problems = []
    for arg in session.get_outputs():
        value = outputs[arg.name]
        if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
            problems.append(f"output '{arg.name}' has NaN or infinite values")
        declared = _dims(arg)
        if declared and len(declared) != value.ndim:
            problems.append(f"output '{arg.name}' has rank {value.ndim}, declared {len(declared)}")
            continue
        for axis, (dim, size) in enumerate(zip(declared, value.shape)):
            expected = dim if isinstance(dim, int) else bound.get(str(dim))
            if expected is not None and expected != size:
                problems.append(
                    f"output '{arg.name}' axis {axis} ({dim}) is {size}, expected {expected}"
                )
    return problems


def smoke_test_onnx_model(
    model_path: Path,
    sample_inputs: dict[str, np.ndarray] | None = None,
    *,
    raise_on_failure: bool = False,
) -> SmokeTestResult:
    """Load `model_path` in a fresh session and check finite outputs of the declared shapes.

    Args:
        model_path: the published `.onnx` file (external data beside it, if any).
        sample_inputs: named inputs; None generates some from the declared input types.
        raise_on_failure: raise `SmokeTestError` instead of returning a failed result.
    """
    model_path = Path(model_path)
    started = time.perf_counter()
    try:
        session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own untyped errors for bad files
        message = one_line(e)
        result = SmokeTestResult(model_path, False, 0.0, 0.0, {}, (f"cannot load: {message}",))
        return _finish(result, raise_on_failure)
    loaded = time.perf_counter()
    declared = {arg.name for arg in session.get_inputs()}
    inputs = generate_inputs(session) if sample_inputs is None else dict(sample_inputs)
    missing = declared - set(inputs)
    if missing:
        result = SmokeTestResult(
            model_path,
            False,
            loaded - started,
            0.0,
            {},
            (f"sample inputs lack {sorted(missing)}",),
        )
        return _finish(result, raise_on_failure)
    names = [o.name for o in session.get_outputs()]
    try:
        values = session.run(names, {k: v for k, v in inputs.items() if k in declared})
    except Exception as e:  # a runtime failure is the smoke test's finding, not a crash
        message = one_line(e)
        result = SmokeTestResult(
            model_path, False, loaded - started, 0.0, {}, (f"inference failed: {message}",)
        )
        return _finish(result, raise_on_failure)
    outputs = dict(zip(names, values))
    problems = _expected_problems(session, inputs, outputs)
    result = SmokeTestResult(
        model_path=model_path,
        passed=not problems,
        load_seconds=loaded - started,
        run_seconds=time.perf_counter() - loaded,
        output_shapes={k: list(v.shape) for k, v in outputs.items()},
        problems=tuple(problems),
    )
    return _finish(result, raise_on_failure)


def _finish(result: SmokeTestResult, raise_on_failure: bool) -> SmokeTestResult:
    if result.passed:
        logger.info("smoke test passed for %s: %s", result.model_path.name, result.output_shapes)
    else:
        logger.error("smoke test failed for %s: %s", result.model_path, "; ".join(result.problems))
        if raise_on_failure:
            raise SmokeTestError(
                f"smoke test failed for {result.model_path.name}: {'; '.join(result.problems)}"
            )
    return result
