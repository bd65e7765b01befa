"""The service side of an Azure ML conversion: waiting on jobs, downloading and checking them.

The jobs are azure-ai-ml's own objects; the service is `azureml_support.FakeMLClient`,
whose requests fail when a test scripts them to, with the exceptions azure-core raises.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import pytest

pytest.importorskip("azure.ai.ml", reason="needs the azureml extra (pip install -e '.[azureml]')")

from azure.core.exceptions import HttpResponseError, ServiceRequestError

from azureml_support import FakeMLClient, http_error, training_job
from onnxport.artifact.manifest import MANIFEST_FILENAME, verify_directory
from onnxport.azureml import create_conversion_job, submit_conversion_job
from onnxport.azureml.job import MODEL_OUTPUT
from onnxport.azureml.service import (
    DEFAULT_POLL_SECONDS,
    REQUEST_ATTEMPTS,
    validate_conversion_job,
    wait_for_jobs,
)
from onnxport.errors import AzureMLError

REPO = Path(__file__).resolve().parents[1]
# A registered environment: the job needs no staged code or built environment.
ENVIRONMENT = "azureml:onnxport-env:1"


def connection_reset() -> ServiceRequestError:
    return ServiceRequestError("('Connection aborted.', ConnectionResetError(104, 'reset'))")


def service_busy() -> HttpResponseError:
    return http_error(503, "Service Unavailable", "ServiceUnavailable", "Retry later.")


def forbidden() -> HttpResponseError:
    return http_error(
        403, "Forbidden", "AuthorizationFailed", "The client 'me' may not read jobs here."
    )


@pytest.fixture
def submit(tmp_path: Path):
    """`submit(client)`: a conversion job submitted to `client` without waiting; its name."""

    def submit_to(client: FakeMLClient) -> str:
        job = create_conversion_job(
            REPO / "src",
            training_job("train-1"),
            ENVIRONMENT,
            "cpu-cluster",
            work_dir=tmp_path / "job-files",
        )
        return submit_conversion_job(client, job, wait=False).name

    return submit_to


@pytest.fixture
def pauses(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The pauses the service side takes between attempts, recorded instead of slept."""
    taken: list[float] = []
    monkeypatch.setattr("onnxport.azureml.service.time.sleep", taken.append)
    return taken


def finished(client: FakeMLClient, name: str):
    return wait_for_jobs(client, [name], poll_seconds=0)[name]


def requests_of(client: FakeMLClient, kind: str) -> list[str]:
    return [name for made, name in client.jobs.requests if made == kind]


def output_with(tmp_path: Path, *manifests: str) -> Path:
    """An `onnx_model` output holding a (contents-free) manifest at each relative path."""
    output = tmp_path / "output"
    (output / "onnx").mkdir(parents=True)
    (output / "onnx" / "model_fp32.onnx").write_bytes(b"not checked before a manifest is found")
    for relative in manifests:
        (output / relative).parent.mkdir(parents=True, exist_ok=True)
        (output / relative).write_text("{}", encoding="utf-8")
    return output


# ---------------------------------------------------------------------------------- waiting


def test_transient_failures_to_read_a_job_are_retried(
    submit, caplog: pytest.LogCaptureFixture
) -> None:
    client = FakeMLClient(failures={"get": [connection_reset(), None, service_busy()]})
    name = submit(client)
    seen: list[str] = []
    with caplog.at_level(logging.WARNING, logger="onnxport.azureml.service"):
        done = wait_for_jobs(
            client, [name], poll_seconds=0, on_status=lambda job, status: seen.append(status)
        )
    assert done[name].status == "Completed"
    assert seen == ["Queued", "Running", "Completed"]
    assert requests_of(client, "get") == [name] * 5  # two failed, three answered
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.name == "onnxport.azureml.service" and r.levelno == logging.WARNING
    ]
    assert len(warnings) == 2
    assert warnings[0].startswith(f"reading job {name} failed (('Connection aborted.'")
    assert "(ServiceUnavailable) Retry later." in warnings[1]
    assert all(w.endswith("; retrying") for w in warnings)


def test_a_job_that_cannot_be_read_is_an_error_naming_it(submit) -> None:
    refusals = [forbidden() for _ in range(REQUEST_ATTEMPTS)]
    client = FakeMLClient(failures={"get": refusals})
    name = submit(client)
    with pytest.raises(AzureMLError) as raised:
        wait_for_jobs(client, [name], poll_seconds=0)
    message = str(raised.value)
    assert message.startswith(f"cannot read the state of job {name}: (AuthorizationFailed) ")
    assert "\n" not in message
    assert "az login" in raised.value.hint
    assert raised.value.__cause__ is refusals[-1]
    assert requests_of(client, "get") == [name] * REQUEST_ATTEMPTS


def test_reading_a_finished_job_again_is_retried_after_the_long_pause(
    submit, pauses: list[float], tmp_path: Path
) -> None:
    client = FakeMLClient(output=lambda name: output_with(tmp_path, "onnx/manifest.json"))
    name = submit(client)
    job = finished(client, name)
    pauses.clear()  # those of the polling, zero seconds each
    client.jobs.failures["get"] = [service_busy()]
    with pytest.raises(AzureMLError, match="is damaged"):
        validate_conversion_job(job, client, tmp_path / "downloads")
    assert pauses == [DEFAULT_POLL_SECONDS]
    assert requests_of(client, "download") == [name]


# ---------------------------------------------------------------------------------- download


def test_a_download_that_keeps_failing_is_an_error_naming_the_job(
    submit, pauses: list[float], tmp_path: Path
) -> None:
    refusals = [forbidden() for _ in range(REQUEST_ATTEMPTS)]
    client = FakeMLClient(output=lambda name: tmp_path, failures={"download": refusals})
    name = submit(client)
    job = finished(client, name)
    pauses.clear()  # those of the polling, zero seconds each
    with pytest.raises(AzureMLError) as raised:
        validate_conversion_job(job, client, tmp_path / "downloads")
    message = str(raised.value)
    assert message.startswith(
        f"cannot download the {MODEL_OUTPUT} output of conversion job {name}: "
        "(AuthorizationFailed) "
    )
    assert "\n" not in message
    assert "datastore" in raised.value.hint
    assert raised.value.__cause__ is refusals[-1]
    assert requests_of(client, "download") == [name] * REQUEST_ATTEMPTS
    assert pauses == [DEFAULT_POLL_SECONDS] * (REQUEST_ATTEMPTS - 1)
    assert client.jobs.downloads == []
    assert list((tmp_path / "downloads" / name).iterdir()) == []


@pytest.mark.slow
def test_a_transient_download_failure_is_retried(
    submit, converted, pauses: list[float], tmp_path: Path
) -> None:
    output = converted("distilbert-token").directory
    client = FakeMLClient(output=lambda name: output, failures={"download": [connection_reset()]})
    name = submit(client)
    job = finished(client, name)
    pauses.clear()  # those of the polling, zero seconds each
    directory = validate_conversion_job(job, client, tmp_path / "downloads")
    assert verify_directory(directory) == []
    assert directory.is_relative_to(tmp_path / "downloads" / name / "named-outputs")
    assert requests_of(client, "download") == [name, name]
    assert pauses == [DEFAULT_POLL_SECONDS]


@pytest.fixture
def temporary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The directory `tempfile` makes its directories in, for this test alone."""
    directory = tmp_path / "tmp"
    directory.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(directory))
    return directory


@pytest.mark.slow
def test_without_a_download_directory_the_output_goes_to_a_new_temporary_one(
    submit, converted, temporary: Path
) -> None:
    output = converted("distilbert-token").directory  # may make torch's torchinductor_<user>
    before = set(temporary.iterdir())
    client = FakeMLClient(output=lambda name: output)
    name = submit(client)
    directory = validate_conversion_job(finished(client, name), client)
    (made,) = set(temporary.iterdir()) - before
    assert made.name.startswith(f"onnxport-{name}-")
    assert directory == made / "named-outputs" / MODEL_OUTPUT
    assert verify_directory(directory) == []


def test_a_refused_temporary_download_is_removed(submit, temporary: Path, tmp_path: Path) -> None:
    client = FakeMLClient(output=lambda name: output_with(tmp_path))
    name = submit(client)
    with pytest.raises(AzureMLError, match="holds no onnxport output"):
        validate_conversion_job(finished(client, name), client)
    assert client.jobs.downloads == [name]
    assert list(temporary.iterdir()) == [], "the refused download was left in the temp dir"


def test_a_download_directory_holding_other_files_is_refused_untouched(
    submit, tmp_path: Path
) -> None:
    client = FakeMLClient(output=lambda name: output_with(tmp_path, "onnx/manifest.json"))
    name = submit(client)
    target = tmp_path / "downloads" / name
    target.mkdir(parents=True)
    (target / "notes.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(AzureMLError, match="exists and is not an earlier download of job"):
        validate_conversion_job(finished(client, name), client, tmp_path / "downloads")
    assert [p.name for p in target.iterdir()] == ["notes.txt"]
    assert requests_of(client, "download") == []


@pytest.mark.parametrize(
    ("manifests", "problem"),
    [
        ((), f"holds no onnxport output (no {MANIFEST_FILENAME} in "),
        ((f".cache/{MANIFEST_FILENAME}",), "holds no onnxport output"),
        ((f"a/{MANIFEST_FILENAME}", f"b/{MANIFEST_FILENAME}"), "holds several onnxport outputs"),
    ],
    ids=["none", "only-in-a-hidden-directory", "several"],
)
def test_the_output_must_hold_exactly_one_conversion(
    submit, tmp_path: Path, manifests: tuple[str, ...], problem: str
) -> None:
    client = FakeMLClient(output=lambda name: output_with(tmp_path, *manifests))
    name = submit(client)
    with pytest.raises(AzureMLError) as raised:
        validate_conversion_job(finished(client, name), client, tmp_path / "downloads")
    assert f"the {MODEL_OUTPUT} output of conversion job {name} {problem}" in str(raised.value)
