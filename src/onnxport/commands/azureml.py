"""`onnxport azureml ...`: conversions as Azure Machine Learning jobs.

Imports no Azure SDK at module level: without the `azureml` extra every other command works,
and these say how to install it (exit code 2).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from onnxport.commands.console import console, setup_logging, stdout
from onnxport.errors import (
    AzureMLError,
    AzureMLNotInstalledError,
    ConfigError,
    OnnxportError,
    one_line,
)

azureml_app = typer.Typer(
    name="azureml",
    help="Run conversions as Azure Machine Learning jobs (needs the azureml extra).",
    no_args_is_help=True,
)

DEFAULT_JOB_YAML = Path("conversion-job.yaml")
DEFAULT_DOWNLOAD_DIR = Path("azureml-outputs")


@azureml_app.callback()
def _require_sdk() -> None:
    """Run conversions as Azure Machine Learning jobs (needs the azureml extra)."""
    from onnxport.azureml.sdk import INSTALL_HINT, azure_ml_available

    if not azure_ml_available():
        raise AzureMLNotInstalledError(
            "the azureml commands need azure-ai-ml, which is not installed", hint=INSTALL_HINT
        )


def read_training_job_names(names: list[str] | None, names_file: Path | None) -> list[str]:
    """The job names given on the line and in the file (one a line, `#` comments), in order."""
    found = list(names or [])
    if names_file is not None:
        try:
            text = names_file.read_text(encoding="utf-8")
        except OSError as e:
            raise ConfigError(f"cannot read the training jobs file {names_file}: {e}") from e
        found += [line.split("#", 1)[0].strip() for line in text.splitlines()]
    found = list(dict.fromkeys(name for name in found if name))
    if not found:
        raise ConfigError(
            "no training job given",
            hint="pass --training-job NAME (repeatable) or --training-jobs-file FILE",
        )
    return found


def connect(
    subscription: str | None,
    resource_group: str | None,
    workspace: str | None,
    workspace_config: Path | None,
):
    """An `MLClient` on the workspace, signed in with `DefaultAzureCredential`."""
    from onnxport.azureml.sdk import INSTALL_HINT, require_azure_ml

    aml = require_azure_ml()
    try:
        from azure.identity import DefaultAzureCredential
    except ImportError as e:
        raise AzureMLNotInstalledError(
            f"signing in needs azure-identity, which cannot be imported ({e})", hint=INSTALL_HINT
        ) from e
    named = (subscription, resource_group, workspace)
    if workspace_config is not None and any(named):
        raise ConfigError(
            "give either --workspace-config or --subscription/--resource-group/--workspace"
        )
    if workspace_config is not None:
        if not workspace_config.is_file():
            raise ConfigError(f"workspace config not found: {workspace_config}")
        try:
            return aml.MLClient.from_config(DefaultAzureCredential(), path=str(workspace_config))
        except Exception as e:  # the SDK raises several types for an unusable file
            raise ConfigError(f"cannot use the workspace config {workspace_config}: {e}") from e
    if not all(named):
        raise ConfigError(
            "no workspace given",
            hint="pass --subscription, --resource-group and --workspace, or --workspace-config "
            "config.json (or --dry-run to only write the job)",
        )
    return aml.MLClient(DefaultAzureCredential(), subscription, resource_group, workspace)


def _job_yaml_paths(output: Path, names: list[str]) -> list[Path]:
    from onnxport.request.paths import safe_segment

    if len(names) == 1:
        return [output]
    return [output.with_name(f"{output.stem}-{safe_segment(n)}{output.suffix}") for n in names]


def _summary(rows: list[tuple[str, str, str, str]]) -> Table:
    table = Table(title="Azure ML conversion jobs")
    for column in ("training job", "conversion job", "status", "output"):
        table.add_column(column)
    for training, conversion, status, output in rows:
        style = "green" if status == "Completed" and not output.startswith("✗") else "red"
        table.add_row(
            escape(training),
            escape(conversion),
            f"[{style}]{escape(status)}[/{style}]",
            escape(output),
        )
    return table


@azureml_app.command()
def submit(
    compute: Annotated[str, typer.Option(help="The compute cluster to run on.")],
    training_job: Annotated[
        list[str] | None,
        typer.Option(
            "--training-job",
            "-t",
            help="A Completed training job's name; repeat for several (one job each).",
        ),
    ] = None,
    training_jobs_file: Annotated[
        Path | None, typer.Option(help="A file of training job names, one a line.")
    ] = None,
    subscription: Annotated[str | None, typer.Option(help="Azure subscription id.")] = None,
    resource_group: Annotated[str | None, typer.Option(help="Resource group.")] = None,
    workspace: Annotated[str | None, typer.Option(help="Azure ML workspace name.")] = None,
    workspace_config: Annotated[
        Path | None, typer.Option(help="A workspace config.json (instead of the three above).")
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="A conversion.yaml file.")
    ] = None,
    environment: Annotated[
        str | None,
        typer.Option(
            help="A registered environment (azureml:NAME:VERSION); default: built "
            "from onnxport's pinned requirements."
        ),
    ] = None,
    code: Annotated[
        Path | None,
        typer.Option(help="Code directory to upload; default: a copy of this onnxport."),
    ] = None,
    checkpoint_output: Annotated[
        str, typer.Option(help="The training job's output that holds the checkpoint.")
    ] = "checkpoint",
    experiment_name: Annotated[str, typer.Option(help="Azure ML experiment.")] = "conversion",
    dry_run: Annotated[
        bool, typer.Option(help="Write the job as YAML (az ml job create -f) and submit nothing.")
    ] = False,
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Where --dry-run writes the job YAML.")
    ] = DEFAULT_JOB_YAML,
    wait: Annotated[
        bool, typer.Option(help="Wait for the jobs, then download and validate their output.")
    ] = True,
    poll_seconds: Annotated[float, typer.Option(help="Seconds between status polls.")] = 30.0,
    download_dir: Annotated[
        Path, typer.Option(help="Where validated outputs are downloaded (one folder per job).")
    ] = DEFAULT_DOWNLOAD_DIR,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Convert training jobs' checkpoints on an Azure ML cluster, one job per training job.

    Without a workspace, --dry-run addresses each training job's output by its name alone
    (azureml://jobs/NAME/outputs/checkpoint), trusting that the job Completed.
    """
    from onnxport.azureml import create_conversion_job, write_job_yaml
    from onnxport.azureml.environment import stage_code

    setup_logging(verbose)
    _quiet_azure(verbose)
    names = read_training_job_names(training_job, training_jobs_file)
    has_workspace = any((subscription, resource_group, workspace, workspace_config))
    client = (
        connect(subscription, resource_group, workspace, workspace_config)
        if has_workspace or not dry_run
        else None
    )
    training = [_get_training_job(client, name, dry_run) for name in names] if client else names

    with tempfile.TemporaryDirectory(prefix="onnxport-azureml-") as scratch:
        # A dry run's files stay next to its YAML; a submission's only until they are uploaded.
        files = output.absolute().parent / f"{output.stem}_files" if dry_run else Path(scratch)
        created = dry_run and not files.exists()
        try:
            code_dir = code or stage_code(files / "code")
            jobs = [
                create_conversion_job(
                    code_dir,
                    job,
                    environment,
                    compute,
                    conversion_config=config,
                    experiment_name=experiment_name,
                    checkpoint_output=checkpoint_output,
                    work_dir=files,
                )
                for job in training
            ]
        except BaseException:
            if created:  # a refused dry run leaves no half-made job files behind
                shutil.rmtree(files, ignore_errors=True)
            raise
        if dry_run:
            for job, path in zip(jobs, _job_yaml_paths(output, names)):
                stdout.print(str(write_job_yaml(job, path)), highlight=False, soft_wrap=True)
            console.print(f"dry run: {len(jobs)} job(s) written, nothing submitted")
            return
        submitted = _submit_all(client, jobs, names)
    if not wait:
        return
    _wait_and_validate(client, names, submitted, poll_seconds, download_dir)


def _quiet_azure(verbose: bool) -> None:
    """azure-ai-ml logs on its own handler (experimental-class notices, upload progress) and
    azure-identity about each credential it tries: noise unless asked for."""
    from onnxport.azureml.sdk import require_azure_ml

    require_azure_ml()  # installs its handler and level, which are set here after it
    for name in ("azure", "azure.ai.ml"):
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.ERROR)


def _get_training_job(client, name: str, dry_run: bool):
    from azure.core.exceptions import ClientAuthenticationError

    from onnxport.azureml.sdk import missing_credential

    try:
        return client.jobs.get(name)
    except ClientAuthenticationError as e:  # the first request is where signing in happens
        raise missing_credential(e, client.workspace_name, dry_run=dry_run) from e
    except Exception as e:  # the SDK raises several types for a missing job
        raise AzureMLError(
            f"cannot read training job {name}: {one_line(e, 200)}",
            hint="check the job name and the workspace",
        ) from e


def _submit_all(client, jobs, names: list[str]) -> list:
    from onnxport.azureml import submit_conversion_job

    submitted = []
    for name, job in zip(names, jobs):
        submitted.append(submit_conversion_job(client, job, wait=False))
        url = getattr(submitted[-1], "studio_url", None) or ""
        console.print(f"submitted {submitted[-1].name} for {name} {url}", markup=False)
    return submitted


def _wait_and_validate(client, names, submitted, poll_seconds: float, download_dir: Path) -> None:
    from onnxport.azureml.service import validate_conversion_job, wait_for_jobs

    def show(name: str, status: str) -> None:
        console.print(f"  {name}: {status}", highlight=False, markup=False)

    final = wait_for_jobs(
        client, [job.name for job in submitted], poll_seconds=poll_seconds, on_status=show
    )
    rows, errors = [], []
    for name, job in zip(names, submitted):
        finished = final[job.name]
        try:
            directory = validate_conversion_job(finished, client, download_dir)
            result = str(directory)
        except OnnxportError as e:
            errors.append(e)
            result = f"✗ {e.message}"
        rows.append((name, job.name, str(finished.status), result))
    stdout.print(_summary(rows))
    for error in errors:
        console.print(f"[red]error[/red] ({error.stage}): {escape(str(error))}", highlight=False)
    if errors:
        raise AzureMLError(
            f"{len(errors)} of {len(rows)} conversion job(s) published no validated model"
        )
