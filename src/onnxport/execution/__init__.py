"""Isolated execution: the conversion runs in a child process, the parent watches it.

The child (`child.py`: `python -m onnxport.execution ...`, the platform's flags) converts and
tells its parent how it goes over one channel (`protocol.py`): progress events, its log
records of WARNING and above, and its outcome, the manifest path or the error as data. The
parent (`runner.run_child`) streams the child's log lines, hands on its events, enforces a
timeout, records the child's peak memory, and re-raises a child's error as the same typed error.
"""

from onnxport.execution.child import LINEAGE_ENV, REGISTERED_MODEL_ENV, ChildArguments
from onnxport.execution.runner import ChildResult, run_child

__all__ = ["LINEAGE_ENV", "REGISTERED_MODEL_ENV", "ChildArguments", "ChildResult", "run_child"]
