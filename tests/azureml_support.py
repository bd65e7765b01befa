"""A stand-in for the Azure ML service, around real azure-ai-ml objects.

Only the service is fake: `FakeMLClient.jobs` answers `create_or_update`, `get` and
`download` as the service does (a submitted job gets a name and moves through a scripted
sequence of statuses; a download writes the job's output under `named-outputs/<name>/`).
`run_like_azureml` runs a conversion job's command as an Azure ML node would: its bindings
resolved to local paths, its code directory as the working directory, an MLflow run that
carries the job's tags, and the environment variables Azure ML sets.
"""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from azure.ai.ml import Output
from azure.ai.ml.entities import CommandJob, Job
from azure.core.exceptions import ResourceNotFoundError

from onnxport.azureml_service import MODEL_OUTPUT, TERMINAL_STATUSES
from onnxport.tracking import ensure_experiment, prepare_store

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


class FakeJobs:
    """`MLClient.jobs`: submitted jobs move through their statuses, one step per `get`."""

    def __init__(
        self,
        training_jobs: Sequence[Job],
        statuses: Sequence[str],
        statuses_by_job: Mapping[str, Sequence[str]],
        output: Callable[[str], Path | None] | None,
    ) -> None:
        self.training = {job.name: job for job in training_jobs}
        self.statuses = list(statuses)
        self.statuses_by_job = statuses_by_job
        self.output = output
        self.submitted: dict[str, CommandJob] = {}
        self.remaining: dict[str, list[str]] = {}
        self.downloads: list[str] = []

    def create_or_update(self, job) -> CommandJob:
        submitted = job._to_job() if hasattr(job, "_to_job") else copy.copy(job)
        submitted._validate()  # the SDK's client-side check before the request
        submitted.name = f"onnxport_conversion_{len(self.submitted) + 1}"
        submitted._status = "Starting"
        self.submitted[submitted.name] = submitted
        self.remaining[submitted.name] = list(
            self.statuses_by_job.get(submitted.name, self.statuses)
        )
        return copy.copy(submitted)

    def get(self, name: str) -> Job:
        if name in self.training:
            return self.training[name]
        if name not in self.submitted:
            raise ResourceNotFoundError(f"Job {name} not found")
        job = self.submitted[name]
        if self.remaining[name]:
            job._status = self.remaining[name].pop(0)
        return copy.copy(job)

    def download(self, name: str, *, download_path=".", output_name=None, all=False) -> None:
        job = self.get(name)
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
    ) -> None:
        """`statuses`: what every submitted job goes through; `statuses_by_job`: exceptions,
        by the name the fake gives (`onnxport_conversion_<n>`, numbered from 1)."""
        self.jobs = FakeJobs(training_jobs, statuses, statuses_by_job or {}, output)


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
