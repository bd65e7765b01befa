"""Isolated execution: the conversion runs in a child process, the parent watches it.

The child (`python -m onnxport.execution ...`, the platform's flags) converts and writes a
structured result: the manifest path, or the error as data. The parent (`run_child`) streams
the child's log lines, enforces a timeout, records the child's peak memory, and re-raises a
child's error as the same typed error.
"""

from onnxport.execution.runner import (
    LINEAGE_ENV,
    REGISTERED_MODEL_ENV,
    ChildArguments,
    ChildResult,
    run_child,
)

__all__ = ["LINEAGE_ENV", "REGISTERED_MODEL_ENV", "ChildArguments", "ChildResult", "run_child"]
