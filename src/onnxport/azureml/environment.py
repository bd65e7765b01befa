"""What an Azure ML conversion job runs with: onnxport's pinned packages and its code.

`build_environment` makes an environment from the versions in `constraints.txt` that
onnxport needs at run time, so the remote run gets the versions that were tested;
`stage_code` copies the onnxport package into a directory to upload as the job's code.
"""

from __future__ import annotations

import functools
import logging
import re
import shutil
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnxport
from onnxport import __version__
from onnxport.errors import AzureMLError

if TYPE_CHECKING:
    from azure.ai.ml.entities import Environment

logger = logging.getLogger(__name__)

DEFAULT_IMAGE = "mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu22.04:latest"
"""Azure ML's standard CPU base image; the conda file adds onnxport's pinned packages."""
TORCH_CPU_INDEX_URL = "https://download.pytorch.org/whl/cpu"
AZUREML_MLFLOW_REQUIREMENT = "azureml-mlflow==1.60.0"
"""MLflow's plugin for the workspace tracking server: the newest release that pip resolves
together with constraints.txt. Only the remote job needs it."""
STAGED_MARKER = ".onnxport-staged"
# Installer tools come with the environment's pip; pip freeze (so constraints.txt) omits them.
_INSTALLER_TOOLS = frozenset({"pip", "setuptools", "wheel"})


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@functools.cache
def _runtime_distributions(root: str = "onnxport") -> dict[str, str]:
    """Every installed distribution `root` needs at run time (no extras): key -> name."""
    from packaging.requirements import Requirement

    installed = {_normalize(d.metadata["Name"]): d for d in metadata.distributions()}
    found: dict[str, str] = {}
    visited: set[tuple[str, str]] = set()
    pending = [(_normalize(root), "")]
    while pending:
        key, extra = pending.pop()
        if (key, extra) in visited or key not in installed:
            continue  # not installed: a dependency of another platform or Python
        visited.add((key, extra))
        distribution = installed[key]
        if key != _normalize(root) and key not in _INSTALLER_TOOLS:
            found[key] = distribution.metadata["Name"]
        for spec in distribution.requires or []:
            requirement = Requirement(spec)
            if requirement.marker and not requirement.marker.evaluate({"extra": extra}):
                continue
            name = _normalize(requirement.name)
            pending.append((name, ""))
            pending.extend((name, e) for e in requirement.extras)
    return found


def _source_constraints() -> Path | None:
    """constraints.txt of the source checkout onnxport runs from, if it does."""
    candidate = Path(onnxport.__file__).resolve().parents[2] / "constraints.txt"
    return candidate if candidate.is_file() else None


def _read_constraints(path: Path) -> dict[str, str]:
    pins = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line and not line.startswith("-"):
            name, version = line.split("==", 1)
            pins[_normalize(name.strip())] = version.strip()
    return pins


def runtime_requirements(constraints_file: Path | None = None) -> list[str]:
    """`name==version` for every package onnxport needs at run time, as tested.

    Args:
        constraints_file: the pins; None uses the source checkout's `constraints.txt`, or the
            installed versions when onnxport runs from an installed wheel.
    """
    try:
        metadata.distribution("onnxport")
    except metadata.PackageNotFoundError as e:
        raise AzureMLError(
            "onnxport's own package metadata is missing, so its requirements are unknown",
            hint="install onnxport (pip install -e .) before building an environment",
        ) from e
    distributions = _runtime_distributions()
    constraints = constraints_file or _source_constraints()
    pins = _read_constraints(constraints) if constraints else {}
    requirements = []
    for key, name in sorted(distributions.items()):
        version = pins.get(key)
        if version is None:
            version = metadata.version(name)
            if constraints:
                logger.warning("%s is not pinned in %s; using %s", name, constraints, version)
        requirements.append(f"{name}=={version}")
    return requirements


def conda_specification(
    requirements: Sequence[str],
    *,
    python_version: str | None = None,
    torch_index_url: str | None = TORCH_CPU_INDEX_URL,
) -> dict[str, Any]:
    """A conda environment file (as a dict) that pip-installs `requirements`."""
    python_version = python_version or f"{sys.version_info.major}.{sys.version_info.minor}"
    pip = [f"--extra-index-url {torch_index_url}"] if torch_index_url else []
    pip += [*requirements, AZUREML_MLFLOW_REQUIREMENT]
    return {
        "name": "onnxport",
        "channels": ["conda-forge"],
        "dependencies": [f"python={python_version}", "pip", {"pip": pip}],
    }


def build_environment(
    *,
    image: str = DEFAULT_IMAGE,
    constraints_file: Path | None = None,
    torch_index_url: str | None = TORCH_CPU_INDEX_URL,
) -> Environment:
    """An Azure ML environment with onnxport's run-time packages at the tested versions.

    Anonymous (no name), so Azure ML reuses the image it built for the same specification.

    Args:
        image: the base Docker image.
        constraints_file: the pins (see `runtime_requirements`).
        torch_index_url: an extra package index for torch; the default takes the CPU build,
            None takes PyPI's (CUDA) build.
    """
    from onnxport.azureml.sdk import require_azure_ml

    aml = require_azure_ml()
    specification = conda_specification(
        runtime_requirements(constraints_file), torch_index_url=torch_index_url
    )
    return aml.entities.Environment(
        image=image,
        conda_file=specification,
        description=f"onnxport {__version__} run time, pinned as tested",
    )


def stage_code(destination: Path) -> Path:
    """Copy the onnxport package into `destination`, to upload as a job's code directory.

    A version record goes with it, so that the remote manifest names the version that ran.
    """
    destination = Path(destination).absolute()
    package = Path(onnxport.__file__).resolve().parent
    target = destination / "onnxport"
    if target.exists():
        if not (destination / STAGED_MARKER).is_file():
            raise AzureMLError(
                f"{target} exists and was not staged by onnxport; refusing to replace it",
                hint="stage the code into a new or empty directory",
            )
        shutil.rmtree(target)
        for old in destination.glob("onnxport-*.dist-info"):
            shutil.rmtree(old)
    destination.mkdir(parents=True, exist_ok=True)
    (destination / STAGED_MARKER).write_text("staged by onnxport.azureml.stage_code\n")
    shutil.copytree(package, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    dist_info = destination / f"onnxport-{__version__}.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: onnxport\nVersion: {__version__}\n", encoding="utf-8"
    )
    return destination
