"""The service side of an Azure ML conversion: submit jobs, wait for them, then check what
they published.

`submit_conversion_job` submits one and polls it; `wait_for_jobs` polls until every job is
in a terminal state; `validate_conversion_job` downloads a job's `onnx_model` output and
checks it as a local output is checked. All work on any `MLClient`-like object and import
nothing from azure-ai-ml.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from onnxport.artifact.manifest import MANIFEST_FILENAME
from onnxport.artifact.reader import PublishedDirectory
from onnxport.azureml.job import MODEL_OUTPUT, check_command_bindings
from onnxport.azureml.sdk import COMPLETED, TERMINAL_STATUSES
from onnxport.errors import AzureMLError, OutputError, one_line

if TYPE_CHECKING:
    from azure.ai.ml import MLClient
    from azure.ai.ml.entities import Command, Job

T = TypeVar("T")

logger = logging.getLogger(__name__)

DEFAULT_POLL_SECONDS = 30.0
REQUEST_ATTEMPTS = 3
_STATUS_HINTS = {
    "Failed": "read its log: az ml job stream --name {name} (or open it in Azure ML studio)",
    "Canceled": "it was canceled before it finished; submit it again",
    "NotResponding": "its compute stopped answering; check the cluster, then submit it again",
    "Paused": "resume it in Azure ML studio, or submit it again",
}


def _retried(
    request: Callable[[], T],
    what: str,
    pause: float,
    before_retry: Callable[[], None] | None = None,
) -> T:
    """`request()`, tried up to `REQUEST_ATTEMPTS` times: the service fails a single request
    now and then (a reset connection, a busy front end). The last failure is raised."""
    for attempt in range(REQUEST_ATTEMPTS):
        try:
            return request()
        except Exception as e:  # the SDK raises many types for one failed request
            if attempt == REQUEST_ATTEMPTS - 1:
                raise
            logger.warning("%s failed (%s); retrying", what, one_line(e, 120))
            if before_retry is not None:
                before_retry()
            time.sleep(pause)
    raise AssertionError("unreachable")


def _get_job(ml_client: MLClient, name: str, poll_seconds: float) -> Job:
    try:
        return _retried(lambda: ml_client.jobs.get(name), f"reading job {name}", poll_seconds)
    except Exception as e:
        raise AzureMLError(
            f"cannot read the state of job {name}: {one_line(e)}",
            hint="check the workspace and your access (az login); the job is unaffected",
        ) from e


def wait_for_jobs(
    ml_client: MLClient,
    names: Sequence[str],
    *,
    poll_seconds: float = DEFAULT_POLL_SECONDS,
    timeout_seconds: float | None = None,
    on_status: Callable[[str, str], None] | None = None,
) -> dict[str, Job]:
    """Poll jobs until each is in a terminal state; the finished jobs by name.

    Args:
        names: the jobs, which run in parallel on the service.
        poll_seconds: the pause between rounds of polling.
        timeout_seconds: stop waiting (the jobs go on) after this long; None: no limit.
        on_status: called with (name, status) whenever a job's status changes.
    """
    started = time.monotonic()
    pending = list(dict.fromkeys(names))
    latest: dict[str, Job] = {}
    while True:
        for name in list(pending):
            job = _get_job(ml_client, name, poll_seconds)
            if name not in latest or latest[name].status != job.status:
                logger.info("job %s: %s", name, job.status)
                if on_status is not None:
                    on_status(name, str(job.status))
            latest[name] = job
            if job.status in TERMINAL_STATUSES:
                pending.remove(name)
        if not pending:
            return {name: latest[name] for name in names}
        if timeout_seconds is not None and time.monotonic() - started > timeout_seconds:
            states = ", ".join(f"{name} {latest[name].status}" for name in pending)
            raise AzureMLError(
                f"stopped waiting after {timeout_seconds:g} s; still running: {states}",
                hint="the jobs go on; check them later (az ml job show --name NAME)",
            )
        time.sleep(poll_seconds)


def _download_target(download_dir: Path | None, name: str) -> Path:
    if download_dir is None:
        return Path(tempfile.mkdtemp(prefix=f"onnxport-{name}-"))
    target = Path(download_dir).absolute() / name
    if target.exists():
        if any(target.iterdir()) and not (target / "named-outputs").is_dir():
            raise AzureMLError(
                f"{target} exists and is not an earlier download of job {name}",
                hint="choose another download directory",
            )
        shutil.rmtree(target)
    target.mkdir(parents=True)
    return target


def _find_output_dir(root: Path, name: str) -> Path:
    manifests = [
        path
        for path in sorted(root.rglob(MANIFEST_FILENAME))
        if not any(part.startswith(".") for part in path.relative_to(root).parts)
    ]
    if not manifests:
        raise AzureMLError(
            f"the {MODEL_OUTPUT} output of conversion job {name} holds no onnxport output "
            f"(no {MANIFEST_FILENAME} in {root})",
            hint="read the job's log: it completed without publishing a model",
        )
    if len(manifests) > 1:
        found = ", ".join(str(p.parent) for p in manifests)
        raise AzureMLError(
            f"the {MODEL_OUTPUT} output of conversion job {name} holds several onnxport "
            f"outputs ({found}); expected one"
        )
    return manifests[0].parent


def validate_conversion_job(
    job: Job, ml_client: MLClient, download_dir: Path | None = None
) -> Path:
    """Check a conversion job Completed and its output is complete; the local directory.

    Downloads the `onnx_model` output into `<download_dir>/<job name>/` (None: a new
    temporary directory, left for the caller if the output passes, else removed) and
    checks it: a manifest, every checksum matching, and validation passed for every
    published model. A failed request is tried again, as reading a job's state is.
    """
    name = job.name
    status = _get_job(ml_client, name, DEFAULT_POLL_SECONDS).status
    if status != COMPLETED:
        hint = _STATUS_HINTS.get(str(status), "check it in Azure ML studio").format(name=name)
        raise AzureMLError(
            f"conversion job {name} ended {status}, not Completed: it published no model",
            hint=hint,
        )
    target = _download_target(download_dir, name)
    try:
        return _download_and_check(ml_client, name, target)
    except BaseException:
        if download_dir is None:  # only this function knows where it is
            shutil.rmtree(target, ignore_errors=True)
        raise


def _empty(directory: Path) -> None:
    shutil.rmtree(directory)
    directory.mkdir()


def _download_and_check(ml_client: MLClient, name: str, target: Path) -> Path:
    """Download job `name`'s output into `target`; the checked onnxport directory in it."""
    try:
        _retried(
            lambda: ml_client.jobs.download(
                name, output_name=MODEL_OUTPUT, download_path=str(target)
            ),
            f"downloading the {MODEL_OUTPUT} output of job {name}",
            DEFAULT_POLL_SECONDS,
            # A broken download may leave files behind: the next attempt starts clean.
            before_retry=lambda: _empty(target),
        )
    except Exception as e:
        raise AzureMLError(
            f"cannot download the {MODEL_OUTPUT} output of conversion job {name}: {one_line(e)}",
            hint="check your access to the workspace's datastore, then validate again",
        ) from e
    directory = _find_output_dir(target, name)
    try:
        published_directory = PublishedDirectory.open(directory)
    except OutputError as e:
        raise AzureMLError(
            f"the {MODEL_OUTPUT} output of conversion job {name} is unusable: {e.message}",
            hint="download it again; if it stays damaged, convert again",
        ) from e
    published = published_directory.published()
    failed = [
        out.file
        for out in published
        if out.validation is None
        or not out.validation.passed
        or (out.smoke_test is not None and not out.smoke_test.passed)
    ]
    if not published or failed:
        what = ", ".join(failed) if failed else "no model"
        raise AzureMLError(
            f"conversion job {name} published {what} without passing validation",
            hint=f"read {directory / 'report.md'}",
        )
    logger.info("conversion job %s: %d validated model(s) in %s", name, len(published), directory)
    return directory


def submit_conversion_job(
    ml_client: MLClient,
    job: Command,
    *,
    wait: bool = True,
    poll_seconds: float = DEFAULT_POLL_SECONDS,
    timeout_seconds: float | None = None,
    on_status: Callable[[str, str], None] | None = None,
) -> Job:
    """Submit the job; with `wait`, poll until it is in a terminal state and return it then.

    A Failed or Canceled job is returned, not raised: `validate_conversion_job` judges it.
    """
    check_command_bindings(job.command, job.inputs, job.outputs)
    try:
        submitted = ml_client.jobs.create_or_update(job)
    except Exception as e:  # the SDK raises many types for one refused request
        raise AzureMLError(
            f"Azure ML did not accept the conversion job {job.display_name}: {one_line(e)}",
            hint="check the compute name, the workspace and your access (az login)",
        ) from e
    logger.info("submitted conversion job %s (%s)", submitted.name, submitted.status)
    if not wait:
        return submitted
    finished = wait_for_jobs(
        ml_client,
        [submitted.name],
        poll_seconds=poll_seconds,
        timeout_seconds=timeout_seconds,
        on_status=on_status,
    )
    return finished[submitted.name]
