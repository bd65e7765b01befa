"""The one place onnxport opens ONNX Runtime sessions: providers, threads, graph optimization
and spinning are decided here for every caller (validation, divergence, smoke test, task
metrics, passes, benchmark, predict, tracking).

ONNX Runtime's own log (written to stderr by its C++ core, colours included) is kept to fatal
errors: onnxport says what went wrong itself, in the user's terms, and keeps the runtime's
words in the manifest and the `--debug` output.

Imports no torch: `onnxport.predict` serves models through it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as _state

from onnxport.artifact.records.validation import InputRecord

PROVIDERS = ["CPUExecutionProvider"]
LOG_SEVERITY = 4
"""ONNX Runtime's log levels: 0 verbose, 1 info, 2 warning, 3 error, 4 fatal."""
RUNTIME_ERRORS: tuple[type[Exception], ...] = (
    _state.Fail,
    _state.InvalidArgument,
    _state.RuntimeException,
    _state.NotImplemented,
)
"""What `InferenceSession.run` raises when a graph cannot compute an input."""

# The default logger logs what happens before a session exists and in sessions made by
# other code (the quantizers' calibration): as quiet as ours.
ort.set_default_logger_severity(LOG_SEVERITY)
THREADS_ENV = "ONNXPORT_THREADS"
"""Intra-op threads of every session that does not set its own: for containers whose CPU
quota is below the cores ONNX Runtime counts, and for test workers sharing a machine."""


def configured_threads() -> int | None:
    """`ONNXPORT_THREADS` when set, else None: ONNX Runtime's own choice (one per core)."""
    value = os.environ.get(THREADS_ENV, "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


def session_options(
    *,
    threads: int | None = None,
    optimization: ort.GraphOptimizationLevel | None = None,
    spinning: bool | None = None,
    optimized_model_path: Path | None = None,
    config_entries: Mapping[str, str] | None = None,
) -> ort.SessionOptions:
    """Options for one session.

    Args:
        threads: intra-op threads (inter-op is then 1); None: `configured_threads()`.
        optimization: graph optimization level; None: ONNX Runtime's default (all).
        spinning: whether idle intra-op threads spin-wait; None: ONNX Runtime's default.
        optimized_model_path: write the optimized graph there (an offline pass).
        config_entries: further session configuration entries.
    """
    options = ort.SessionOptions()
    options.log_severity_level = LOG_SEVERITY
    threads = threads or configured_threads()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if optimization is not None:
        options.graph_optimization_level = optimization
    if spinning is not None:
        options.add_session_config_entry(
            "session.intra_op.allow_spinning", "1" if spinning else "0"
        )
    if optimized_model_path is not None:
        options.optimized_model_filepath = str(optimized_model_path)
    for key, value in (config_entries or {}).items():
        options.add_session_config_entry(key, value)
    return options


def create_session(
    model_path: Path, options: ort.SessionOptions | None = None
) -> ort.InferenceSession:
    """A CPU session on `model_path` (its external data resolved beside it)."""
    return ort.InferenceSession(
        str(model_path), sess_options=options or session_options(), providers=PROVIDERS
    )


def run_session(
    session: ort.InferenceSession, inputs: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Every output by name, feeding the inputs the model declares (others are ignored)."""
    wanted = {i.name for i in session.get_inputs()}
    feed = {k: v for k, v in inputs.items() if k in wanted}
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feed)))


def declared_inputs(session: ort.InferenceSession) -> list[InputRecord]:
    """The inputs the graph declares: a number where a dimension was fixed at export, a name
    where it varies (`batch`, `sequence`, `height`)."""
    return [
        InputRecord(
            name=arg.name,
            dtype=str(arg.type).removeprefix("tensor(").removesuffix(")"),
            shape=[d if isinstance(d, (int, str)) else "?" for d in arg.shape],
        )
        for arg in session.get_inputs()
    ]
