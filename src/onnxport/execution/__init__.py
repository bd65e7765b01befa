"""Isolated execution: the conversion runs in a child process, the parent watches it.

The child (`child.py`: `python -m onnxport.execution ...`, the platform's flags) converts with
the settings its parent hands it and tells its parent how it goes; the parent
(`runner.run_child`) returns where it published or raises its error as the same type. Both
sides go through `onnxport.isolation`, as the export child of `onnxport.preparation` does:
one channel, one watch (timeout, interrupts, peak memory), one way to report a child's death.
"""

from onnxport.execution.child import LINEAGE_ENV, REGISTERED_MODEL_ENV, ChildArguments
from onnxport.execution.runner import ChildResult, run_child

__all__ = ["LINEAGE_ENV", "REGISTERED_MODEL_ENV", "ChildArguments", "ChildResult", "run_child"]
