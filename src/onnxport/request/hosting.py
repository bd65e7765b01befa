"""Which platform a conversion runs on: `local`, `azureml`, `colab` or `kaggle`."""

from __future__ import annotations

import os
from collections.abc import Mapping

from onnxport.errors import ConfigError

PLATFORMS = ("local", "azureml", "colab", "kaggle")
# Environment variables each hosted platform sets in its jobs and notebooks.
_MARKERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("azureml", ("AZUREML_RUN_ID", "AZUREML_EXPERIMENT_ID", "AZUREML_ARM_WORKSPACE_NAME")),
    ("colab", ("COLAB_RELEASE_TAG", "COLAB_GPU", "COLAB_BACKEND_VERSION")),
    ("kaggle", ("KAGGLE_KERNEL_RUN_TYPE", "KAGGLE_URL_BASE", "KAGGLE_DATA_PROXY_URL")),
)


def detect_platform(environ: Mapping[str, str] | None = None) -> str:
    env = os.environ if environ is None else environ
    for name, markers in _MARKERS:
        if any(env.get(marker) for marker in markers):
            return name
    return "local"


def resolve_platform(given: str | None, environ: Mapping[str, str] | None = None) -> str:
    """The `platform` argument when given, else what the environment says."""
    if not given:
        return detect_platform(environ)
    name = given.strip().lower()
    if name not in PLATFORMS:
        raise ConfigError(f"unknown platform {given!r}", hint=f"use one of {', '.join(PLATFORMS)}")
    return name
