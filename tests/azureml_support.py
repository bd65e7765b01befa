"""A stand-in for the Azure ML service, around real azure-ai-ml objects.

Only the service is fake: `FakeMLClient.jobs` answers `create_or_update`, `get` and
`download` as the service does (a submitted job gets a name and moves through a scripted
sequence of statuses; a download writes the job's output under `named-outputs/<name>/`),
or fails as the service does when a request is scripted to fail (`failures`, with the
exceptions azure-core raises: `ServiceRequestError`, `http_error(...)`). `serve_jobs` puts the
fake behind every real `MLClient`, so that the CLI builds its client as it does in production.
`run_like_azureml` runs a conversion job's command as an Azure ML node would: its bindings
resolved to local paths, its code directory as the working directory, an MLflow run that
carries the job's tags, and the environment variables Azure ML sets.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import requests
from azure.ai.ml import MLClient, Output
from azure.ai.ml.entities import CommandJob, Job
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.core.pipeline.transport import HttpRequest, RequestsTransportResponse

from onnxport.azureml.job import MODEL_OUTPUT
from onnxport.azureml.sdk import TERMINAL_STATUSES
from onnxport.tracking.store import ensure_experiment, prepare_store

TRAINING_ENVIRONMENT = "azureml:training-env:1"


def training_job(
    name: str,
    *,
    status: str = "Completed",
    outputs: Sequence[str] = ("checkpoint",),
    tags: Mapping[str, str] | None = None,
) -> CommandJob:
    """A training job as `ml_client.jobs.get` returns it."""
    return CommandJob(
        name=name,
        status=status,
        command="python train.py --output ${{outputs.checkpoint}}",
        outputs={output: Output(type="uri_folder") for output in outputs},
        environment=TRAINING_ENVIRONMENT,
        compute="gpu-cluster",
        tags=dict(tags or {"backbone": "distilbert-base-uncased"}),
    )


def http_error(status: int, reason: str, code: str, message: str) -> HttpResponseError:
    """The error azure-core raises for a refused request: an HTTP response with the service's
    JSON error body, e.g. `http_error(503, "Service Unavailable", "ServiceUnavailable", ...)`."""
    response = requests.Response()
    response.status_code = status
    response.reason = reason
    response.headers["Content-Type"] = "application/json"
    response._content = json.dumps({"error": {"code": code, "message": message}}).encode()
    request = HttpRequest("GET", "https://management.azure.com/subscriptions/s/jobs")
    return HttpResponseError(response=RequestsTransportResponse(request, response))


Script = Mapping[str, Sequence[BaseException | None]]
"""Per request kind (`create_or_update`, `get`, `download`), the outcome of each call in
turn: an exception is raised instead of answering, None answers; after the script, all
calls answer."""


class FakeJobs:
    """`MLClient.jobs`: submitted jobs move through their statuses, one step per `get`."""

    def __init__(
        self,
        training_jobs: Sequence[Job],
        statuses: Sequence[str],
        statuses_by_job: Mapping[str, Sequence[str]],
        output: Callable[[str], Path | None] | None,
        failures: Script,
    ) -> None:
        self.training = {job.name: job for job in training_jobs}
        self.statuses = list(statuses)
        self.statuses_by_job = statuses_by_job
        self.output = output
        self.failures = {kind: list(script) for kind, script in failures.items()}
        self.submitted: dict[str, CommandJob] = {}
        self.remaining: dict[str, list[str]] = {}
        self.downloads: list[str] = []
        self.requests: list[tuple[str, str]] = []
        """Every request as (kind, job name), failed or not, in order."""

    def _answer(self, kind: str, name: str) -> None:
        self.requests.append((kind, name))
        script = self.failures.get(kind)
        outcome = script.pop(0) if script else None
        if outcome is not None:
            raise outcome

    def create_or_update(self, job) -> CommandJob:
        submitted = job._to_job() if hasattr(job, "_to_job") else copy.copy(job)
        submitted._validate()  # the SDK's client-side check before the request
        self._answer("create_or_update", submitted.display_name or "")
        submitted.name = f"onnxport_conversion_{len(self.submitted) + 1}"
        submitted._status = "Starting"
        self.submitted[submitted.name] = submitted
        self.remaining[submitted.name] = list(
            self.statuses_by_job.get(submitted.name, self.statuses)
        )
        return copy.copy(submitted)

    def get(self, name: str) -> Job:
        self._answer("get", name)
        return self._advance(name)

    def _advance(self, name: str) -> Job:
        if name in self.training:
            return self.training[name]
        if name not in self.submitted:
            raise ResourceNotFoundError(f"Job {name} not found")
        job = self.submitted[name]
        if self.remaining[name]:
            job._status = self.remaining[name].pop(0)
        return copy.copy(job)

    def download(self, name: str, *, download_path=".", output_name=None, all=False) -> None:
        self._answer("download", name)
        job = self.submitted.get(name) or self.training.get(name)
        if job is None:
            raise ResourceNotFoundError(f"Job {name} not found")
        if job.status not in TERMINAL_STATUSES:
            raise RuntimeError(f"This job is in state {job.status}")
        self.downloads.append(name)
        source = self.output(name) if self.output else None
        if output_name == MODEL_OUTPUT and source is not None:
            shutil.copytree(source, Path(download_path) / "named-outputs" / output_name)


class FakeMLClient:
    def __init__(
        self,
        training_jobs: Sequence[Job] = (),
        *,
        statuses: Sequence[str] = ("Queued", "Running", "Completed"),
        statuses_by_job: Mapping[str, Sequence[str]] | None = None,
        output: Callable[[str], Path | None] | None = None,
        failures: Script | None = None,
    ) -> None:
        """`statuses`: what every submitted job goes through; `statuses_by_job`: exceptions,
        by the name the fake gives (`onnxport_conversion_<n>`, numbered from 1); `failures`:
        the requests that fail, see `Script`."""
        self.jobs = FakeJobs(training_jobs, statuses, statuses_by_job or {}, output, failures or {})


def write_workspace_config(path: Path, workspace: str = "ws-test") -> Path:
    """A workspace `config.json` as Azure ML studio downloads it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    config = {
        "subscription_id": "00000000-0000-0000-0000-000000000000",
        "resource_group": "rg-test",
        "workspace_name": workspace,
    }
    path.write_text(json.dumps(config), encoding="utf-8")
    return path


def serve_jobs(monkeypatch, service: FakeMLClient) -> list[MLClient]:
    """Every real `MLClient` sends its job requests to `service`; returns the clients that
    did, as they were built (from a workspace config, a credential)."""
    clients: list[MLClient] = []

    def jobs(client: MLClient) -> FakeJobs:
        if not any(client is known for known in clients):
            clients.append(client)
        return service.jobs

    monkeypatch.setattr(MLClient, "jobs", property(jobs))
    return clients


@dataclass(frozen=True)
class NodeRun:
    returncode: int
    log: str
    outputs: dict[str, Path]
    tracking_uri: str
    run_id: str


def run_like_azureml(
    job, inputs: Mapping[str, Path], root: Path, *, timeout: float = 600
) -> NodeRun:
    """Run `job`'s command as an Azure ML node would, with `inputs` bound to local paths.

    Inputs not in `inputs` are local files of the job (the SDK would upload them); each
    output is an empty directory, as with `mode: upload`.
    """
    command_job = job._to_job()
    bindings = {}
    for name, value in command_job.inputs.items():
        bindings[f"inputs.{name}"] = Path(inputs.get(name) or value.path)
    outputs = {}
    for name in command_job.outputs:
        outputs[name] = root / "outputs" / name
        outputs[name].mkdir(parents=True)
        bindings[f"outputs.{name}"] = outputs[name]
    command = command_job.command
    for key, path in bindings.items():
        command = command.replace("${{" + key + "}}", str(path))
    assert "${{" not in command, command

    # Azure ML creates the job's MLflow run, tagged with the job's tags, and names it in the
    # environment; the workspace's tracking server is a local SQLite store here.
    tracking_uri = f"sqlite:///{root / 'mlflow.db'}"
    client = prepare_store(tracking_uri)
    experiment_id = ensure_experiment(
        client, command_job.experiment_name, (root / "mlartifacts").as_uri()
    )
    run = client.create_run(experiment_id, tags=dict(command_job.tags))
    env = {
        **os.environ,
        **command_job.environment_variables,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "MLFLOW_TRACKING_URI": tracking_uri,
        "MLFLOW_RUN_ID": run.info.run_id,
        "MLFLOW_EXPERIMENT_ID": experiment_id,
        "AZUREML_RUN_ID": run.info.run_id,
    }
    done = subprocess.run(
        ["bash", "-c", command],
        cwd=command_job.code,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return NodeRun(
        done.returncode, done.stdout + done.stderr, outputs, tracking_uri, run.info.run_id
    )
