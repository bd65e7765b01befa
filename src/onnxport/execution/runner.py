"""The parent side: run the conversion child (`python -m onnxport.execution ...`) through
`isolation.parent.run`, hand it the settings this process read, and return where it published.

A crash, an out-of-memory kill or a hang in the exporter cannot take the caller down.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from onnxport import interrupts
from onnxport.errors import ExecutionError
from onnxport.execution.child import ChildArguments
from onnxport.isolation.channel import log_event
from onnxport.isolation.parent import run
from onnxport.progress import ProgressCallback

if TYPE_CHECKING:  # pydantic: not before the child's orphan watch starts (`child_main`)
    from onnxport.request.config import ConversionConfig

logger = logging.getLogger("onnxport.execution")

STOP_GRACE_SECONDS = 15.0
"""How long an interrupted caller lets the child stop by itself (removing its work directory,
ending at its next safe point) before it kills the child's process group."""
TIMEOUT_HINT = "raise execution.timeout_seconds in conversion.yaml if the model is large"


@dataclass(frozen=True)
class ChildResult:
    manifest_path: Path
    seconds: float
    peak_rss_mb: float
    """The peak resident memory of the child's largest process (the export child's, when
    it had one), as the kernel recorded it."""


def run_child(
    arguments: ChildArguments,
    *,
    timeout_seconds: float,
    config: ConversionConfig | None = None,
    env: dict[str, str] | None = None,
    on_event: ProgressCallback | None = None,
    on_line: Callable[[str], None] | None = None,
) -> ChildResult:
    """Run the conversion child and return its result, or raise its error.

    Args:
        arguments: the child's command line.
        timeout_seconds: the child is killed (its whole process group) after this long.
        config: the settings this process read and fingerprinted: the child converts with
            these, and does not read `arguments.config_dir` again (a file edited meanwhile
            would make a directory whose `conv_fp` does not describe it). None: it reads them.
        env: extra environment for the child (MLflow run id, lineage).
        on_event: receives each progress event of the child as it comes; default: our log.
        on_line: receives each line the child prints (its log below WARNING, and whatever
            its libraries print) as it comes; default: our logger. Its records of WARNING
            and above go to this process's logging under their own logger names.
    """
    telemetry = os.environ.get("MLFLOW_DISABLE_TELEMETRY", "true")
    returned = run(
        ["-m", "onnxport.execution", *arguments.argv()],
        config,
        name="conversion",
        error_type=ExecutionError,
        on_event=on_event or (lambda event: log_event(logger, event)),
        on_line=on_line or (lambda line: logger.info("[conversion] %s", line)),
        env={"MLFLOW_DISABLE_TELEMETRY": telemetry, **(env or {})},
        timeout_seconds=timeout_seconds,
        timeout_hint=TIMEOUT_HINT,
        stop_grace_seconds=STOP_GRACE_SECONDS,
    )
    manifest: Path = returned.value
    # Published: an interrupt that reached this process meanwhile stopped nothing, and is
    # raised naming it when the handling ends.
    interrupts.published(manifest.parent)
    return ChildResult(manifest, returned.seconds, returned.peak_rss_mb)
