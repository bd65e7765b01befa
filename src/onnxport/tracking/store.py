"""The MLflow store, its experiments and runs: prepared once by the parent (the database
migration under a lock), each call retried while a SQLite store is locked, and a run that
always ends FINISHED, FAILED or KILLED."""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from onnxport import interrupts
from onnxport.errors import TrackingError, one_line
from onnxport.request.config import ExperimentConfig
from onnxport.request.lineage import is_secret

logger = logging.getLogger(__name__)


T = TypeVar("T")
RUN_TYPE = "conversion"
DB_FILENAME = "mlflow.db"
ARTIFACTS_DIRNAME = "mlartifacts"


def quiet_mlflow() -> None:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "true")
    # Imported first: its import sets its loggers to INFO, which would undo the level set here
    # ("Creating initial MLflow database tables..." on a new store, for a Python caller).
    import mlflow  # noqa: F401

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)


def resolve_tracking_uri(root_dir: Path, experiment: ExperimentConfig) -> str:
    if experiment.tracking_uri:
        return experiment.tracking_uri
    return f"sqlite:///{(Path(root_dir).absolute() / DB_FILENAME).as_posix()}"


def resolve_artifact_location(root_dir: Path, experiment: ExperimentConfig) -> str:
    if experiment.artifact_location:
        return experiment.artifact_location
    return (Path(root_dir).absolute() / ARTIFACTS_DIRNAME).as_uri()


def _is_locked(error: BaseException) -> bool:
    text = str(error).lower()
    return "database is locked" in text or "database table is locked" in text


def with_retry(call: Callable[[], T], *, attempts: int = 8) -> T:
    """Retry an MLflow call that SQLite refused because another process held the lock."""
    for attempt in range(attempts):
        try:
            return call()
        except Exception as e:  # MLflow wraps sqlite's OperationalError in its own types
            if not _is_locked(e) or attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1) + random.random() * 0.2)
    raise AssertionError("unreachable")


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///` URI; None for other stores and in-memory SQLite."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri.removeprefix("sqlite:///").split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def prepare_store(tracking_uri: str):
    """An `MlflowClient` on a store that exists and is migrated; fails early if unreachable."""
    quiet_mlflow()
    from filelock import FileLock
    from mlflow.tracking import MlflowClient

    db = _sqlite_path(tracking_uri)
    try:
        if db is not None:
            db.parent.mkdir(parents=True, exist_ok=True)
            # Creating the store runs the schema migration; two processes doing it at once
            # on a new file collide, so the first does it under a lock and the rest wait.
            with FileLock(str(db) + ".lock", timeout=120):
                client = MlflowClient(tracking_uri)
                with_retry(lambda: client.search_experiments(max_results=1))
        else:
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
            client = MlflowClient(tracking_uri)
            client.search_experiments(max_results=1)
    except Exception as e:  # any failure here means the store cannot be used
        message = one_line(e, 200)
        raise TrackingError(
            f"cannot reach the MLflow tracking store {tracking_uri}: {message}",
            hint="check tracking_uri in experiment.yaml, or leave it out for a local SQLite store",
        ) from e
    return client


def ensure_experiment(client, name: str, artifact_location: str | None) -> str:
    def get_or_create() -> str:
        experiment = client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        try:
            return client.create_experiment(name, artifact_location=artifact_location)
        except Exception:  # another process created it first
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
            return experiment.experiment_id

    return with_retry(get_or_create)


def create_run(
    client,
    experiment_id: str,
    *,
    run_name: str,
    tags: dict[str, str],
    start_time: int | None = None,
) -> str:
    """A new run; `start_time` in ms since the epoch (default: now)."""
    safe = {k: v for k, v in tags.items() if not is_secret(k)}
    safe["mlflow.runType"] = RUN_TYPE
    run = with_retry(
        lambda: client.create_run(
            experiment_id, start_time=start_time, run_name=run_name, tags=safe
        )
    )
    return run.info.run_id


def end_run(client, run_id: str, status: str) -> None:
    with_retry(lambda: client.set_terminated(run_id, status=status))


def run_status(client, run_id: str) -> str:
    return with_retry(lambda: client.get_run(run_id)).info.status


@contextmanager
def failed_unless_finished(client, run_id: str) -> Iterator[None]:
    """End the run FAILED if the block raises or leaves it unfinished (the parent's duty);
    KILLED if it was interrupted (Ctrl-C, SIGTERM)."""
    try:
        yield
    except BaseException as e:
        status = "KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED"
        try:
            with interrupts.shielded():
                end_run(client, run_id, status)
        except Exception:
            logger.exception("could not mark MLflow run %s %s", run_id, status)
        raise
    if run_status(client, run_id) not in ("FINISHED", "FAILED", "KILLED"):
        end_run(client, run_id, "FINISHED")
