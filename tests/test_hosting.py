"""`request.hosting`: which platform a conversion runs on, from the environment unless the
caller says."""

from __future__ import annotations

import pytest

from onnxport.errors import ConfigError
from onnxport.request.hosting import PLATFORMS, detect_platform, resolve_platform

_ALL_MARKERS = (
    "AZUREML_RUN_ID",
    "AZUREML_EXPERIMENT_ID",
    "AZUREML_ARM_WORKSPACE_NAME",
    "COLAB_RELEASE_TAG",
    "COLAB_GPU",
    "COLAB_BACKEND_VERSION",
    "KAGGLE_KERNEL_RUN_TYPE",
    "KAGGLE_URL_BASE",
    "KAGGLE_DATA_PROXY_URL",
)


@pytest.fixture
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in _ALL_MARKERS:
        monkeypatch.delenv(name, raising=False)


def test_platforms() -> None:
    assert PLATFORMS == ("local", "azureml", "colab", "kaggle")


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, "local"),
        ({"HOME": "/root", "PATH": "/usr/bin"}, "local"),
        ({"AZUREML_RUN_ID": "run-1"}, "azureml"),
        ({"AZUREML_ARM_WORKSPACE_NAME": "ws"}, "azureml"),
        ({"COLAB_RELEASE_TAG": "release-colab_20250101"}, "colab"),
        ({"COLAB_GPU": "1"}, "colab"),
        ({"KAGGLE_KERNEL_RUN_TYPE": "Interactive"}, "kaggle"),
        ({"KAGGLE_URL_BASE": "https://www.kaggle.com"}, "kaggle"),
        ({"AZUREML_RUN_ID": ""}, "local"),  # set but empty: not a marker
    ],
)
def test_detect_platform_from_environment_mappings(environ: dict, expected: str) -> None:
    assert detect_platform(environ) == expected


def test_detect_platform_reads_os_environ_by_default(
    monkeypatch: pytest.MonkeyPatch, clean_environ: None
) -> None:
    assert detect_platform() == "local"
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Batch")
    assert detect_platform() == "kaggle"
    assert resolve_platform(None) == "kaggle"


@pytest.mark.parametrize("given", [None, ""])
def test_no_platform_given_means_detect(given: str | None) -> None:
    assert resolve_platform(given, {"COLAB_GPU": "1"}) == "colab"
    assert resolve_platform(given, {}) == "local"


@pytest.mark.parametrize("given", ["local", "azureml", "colab", "kaggle"])
def test_explicit_platform_wins_over_the_environment(given: str) -> None:
    environ = {"AZUREML_RUN_ID": "r", "COLAB_GPU": "1", "KAGGLE_URL_BASE": "k"}
    assert resolve_platform(given, environ) == given


@pytest.mark.parametrize(("given", "expected"), [("AzureML", "azureml"), (" local ", "local")])
def test_explicit_platform_is_normalised(given: str, expected: str) -> None:
    assert resolve_platform(given, {}) == expected


@pytest.mark.parametrize("given", ["aws", "sagemaker", "../local", "local/..", "gcp"])
def test_unknown_platform_is_a_config_error_listing_the_known_ones(given: str) -> None:
    with pytest.raises(ConfigError) as raised:
        resolve_platform(given, {})
    message = str(raised.value)
    assert repr(given) in message
    for name in PLATFORMS:
        assert name in message
    assert raised.value.exit_code == 2
