"""How the suite runs on two xdist workers: inputs built once per run, one core per worker,
and the extras a CI run must have.

Session fixtures are per worker under pytest-xdist; `build_once` makes the expensive inputs
(trained tagger, checkpoints, a migrated MLflow store) once per run for both workers, the
first worker building under a file lock while the other waits.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from filelock import FileLock

DONE_MARKER = ".built"


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def build_once(
    tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], object]
) -> Path:
    """`build(directory)` once per test run, shared by every xdist worker; the directory."""
    base = tmp_path_factory.getbasetemp()
    # Under xdist each worker's base is `<run>/popen-gwN`: their parent is this run's own.
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    target = shared / "built-once" / name
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if not (target / DONE_MARKER).is_file():
            shutil.rmtree(target, ignore_errors=True)
            target.mkdir()
            build(target)
            (target / DONE_MARKER).touch()
    return target


def one_core_per_worker() -> None:
    """Each of the two workers computes on one core: torch and ONNX Runtime both default to
    every core, and two workers' spin-waiting thread pools on two cores run several times
    slower than one thread each (torch: 3.4 s vs 0.4 s per training step under load).
    The environment reaches the processes the tests start, too."""
    import torch

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("ONNXPORT_THREADS", "1")  # every ONNX Runtime session onnxport opens
    torch.set_num_threads(1)


AZUREML_EXTRA = "needs the azureml extra (pip install -e '.[azureml]')"


def check_ci_has_the_extras() -> None:
    """Under CI=true, the azureml extra must import: without it ~60 tests would skip
    silently, and a broken install would pass as a green run."""
    if not in_ci():
        return
    try:
        import azure.ai.ml
        import azure.identity  # noqa: F401
    except ImportError as e:
        raise pytest.UsageError(
            f"CI=true but the azureml extra cannot be imported ({e}): the install is broken"
        ) from e
