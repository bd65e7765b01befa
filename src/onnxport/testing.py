"""The smoke test: a published ONNX file loads on its own and answers sanely.

Run on the published file in a fresh ONNX Runtime session, with nothing from the conversion
in memory, so that it catches a file that only worked because of state in the converter.
This module imports no torch.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from onnxport.artifact.records.validation import SmokeTestRecord
from onnxport.errors import SmokeTestError, one_line
from onnxport.verify.runtime import create_session, run_session

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
) -> SmokeTestRecord:
    """Load `model_path` in a fresh session and check finite outputs of the declared shapes.

    Args:
        model_path: the published `.onnx` file (external data beside it, if any).
        sample_inputs: named inputs; None generates some from the declared input types.
        raise_on_failure: raise `SmokeTestError` instead of returning a failed result.
    """
    model_path = Path(model_path)
    started = time.perf_counter()
    outputs: dict[str, np.ndarray] = {}
    try:
        session = create_session(model_path)
    except Exception as e:  # onnxruntime raises its own untyped errors for bad files
        problems = [f"cannot load: {one_line(e)}"]
    else:
        problems, outputs = _check(session, sample_inputs)
    record = SmokeTestRecord(
        passed=not problems,
        output_shapes={k: list(v.shape) for k, v in outputs.items()},
        problems=problems,
        seconds=round(time.perf_counter() - started, 3),
    )
    if record.passed:
        logger.info("smoke test passed for %s: %s", model_path.name, record.output_shapes)
        return record
    logger.error("smoke test failed for %s: %s", model_path, "; ".join(record.problems))
    if raise_on_failure:
        raise SmokeTestError(
            f"smoke test failed for {model_path.name}: {'; '.join(record.problems)}"
        )
    return record


def _check(
    session: ort.InferenceSession, sample_inputs: dict[str, np.ndarray] | None
) -> tuple[list[str], dict[str, np.ndarray]]:
    """What is wrong with the session's answer to the inputs, and the answer."""
    declared = {arg.name for arg in session.get_inputs()}
    inputs = generate_inputs(session) if sample_inputs is None else dict(sample_inputs)
    missing = declared - set(inputs)
    if missing:
        return [f"sample inputs lack {sorted(missing)}"], {}
    try:
        outputs = run_session(session, inputs)
    except Exception as e:  # a runtime failure is the smoke test's finding, not a crash
        return [f"inference failed: {one_line(e)}"], {}
    return _expected_problems(session, inputs, outputs), outputs
