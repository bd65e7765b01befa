"""The MLflow run that records a reused conversion: written at once, or by a recorder process.

A reused conversion returns its directory without converting. The run that says so
(`onnxport.cache_hit`, the run that made the result, its figures) costs far more than the
reuse: in a fresh process, MLflow's import and store take about 3 s, and the reuse 0.1 s. So,
unless the caller waits (`execute_conversion(wait_for_tracking=True)`) or registers the model
(a failure it must see), `defer_reuse` writes the record into the project's journal
(`<root>/pending-tracking/<id>.json`, atomically) and starts a detached recorder
(`python -m onnxport.tracking.reuse ROOT`) that writes it into MLflow and then deletes it.

A record the recorder could not write (the store unreachable, the machine stopped) stays in
the journal, with the reason in `recorder.log` beside it; the next recorder retries it, and
running the recorder by hand does the same. Each run carries its record's id
(`onnxport.reuse_id`), so a record is never written twice.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

from pydantic import BaseModel, Field

from onnxport.artifact.manifest import read_manifest
from onnxport.errors import TrackingError, one_line
from onnxport.request.lineage import is_secret
from onnxport.tracking.conversion import log_figures, register_reused, registrable_model
from onnxport.tracking.store import (
    create_run,
    ensure_experiment,
    failed_unless_finished,
    prepare_store,
    with_retry,
)

logger = logging.getLogger(__name__)

JOURNAL_DIRNAME = "pending-tracking"
RECORDER_LOG_FILENAME = "recorder.log"
REUSE_ID_TAG = "onnxport.reuse_id"


class ReuseRecord(BaseModel):
    """What the run of one reuse holds, and where it goes."""

    id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    started_ms: int = Field(default_factory=lambda: int(time.time() * 1000))
    tracking_uri: str
    experiment_name: str
    artifact_location: str | None
    run_name: str
    tags: dict[str, str]
    output_dir: Path
    registered_model_name: str | None = None

    def model_post_init(self, context: object) -> None:
        # The journal is a file on disk: a secret-looking tag never reaches it (nor the run).
        self.tags = {k: v for k, v in self.tags.items() if not is_secret(k)}


def journal_dir(root_dir: Path) -> Path:
    return Path(root_dir) / JOURNAL_DIRNAME


def record_reuse(record: ReuseRecord, client=None) -> str:
    """Write the run of `record` into its store (a FINISHED run in its experiment that says the
    result was reused, points at the run that made it and holds its figures and files; with a
    `registered_model_name`, the model that run logged is registered under it, once per
    conversion). Returns the run id; a run already written for this record is not written
    again. The registration is checked before anything is recorded, and refused with the
    reason."""
    client = client or prepare_store(record.tracking_uri)
    experiment_id = ensure_experiment(client, record.experiment_name, record.artifact_location)
    written = with_retry(
        lambda: client.search_runs(
            [experiment_id], filter_string=f"tags.`{REUSE_ID_TAG}` = '{record.id}'"
        )
    )
    if written:
        return written[0].info.run_id
    output_dir = record.output_dir
    manifest = read_manifest(output_dir)
    original = manifest.lineage.get("mlflow_run_id", "")
    model = None
    if record.registered_model_name:
        model = registrable_model(client, original)
        if model is None:
            raise TrackingError(
                f"cannot register the reused conversion {output_dir} as "
                f"{record.registered_model_name}: the tracking store {record.tracking_uri} "
                f"holds no model logged by the run that made it ({original or 'none recorded'})",
                hint="convert again with force to log and register it in this store",
            )
    run_id = create_run(
        client,
        experiment_id,
        run_name=record.run_name,
        tags={
            **record.tags,
            "onnxport.cache_hit": "true",
            "onnxport.original_run_id": original,
            "onnxport.output_dir": str(output_dir),
            REUSE_ID_TAG: record.id,
        },
        start_time=record.started_ms,
    )
    with failed_unless_finished(client, run_id):
        try:
            log_figures(client, run_id, manifest, output_dir)
            if record.registered_model_name and model is not None:  # found above
                version = register_reused(client, record.registered_model_name, model, manifest)
                uri = f"models:/{record.registered_model_name}/{version}"
                with_retry(lambda: client.set_tag(run_id, "onnxport.registered_model", uri))
                logger.info("the reused conversion is registered as %s", uri)
        except Exception as e:  # MLflow and its stores raise many types
            raise TrackingError(
                f"cannot record the reuse of {output_dir} in MLflow run {run_id}: {one_line(e)}"
            ) from e
    return run_id


def defer_reuse(record: ReuseRecord, root_dir: Path) -> Path:
    """Write `record` into the journal of `root_dir` and start a detached recorder for it;
    returns the record's file. Neither MLflow nor its store is touched in this process."""
    journal = journal_dir(root_dir)
    journal.mkdir(parents=True, exist_ok=True)
    path = journal / f"{record.id}.json"
    partial = path.with_suffix(".partial")
    partial.write_text(record.model_dump_json(), encoding="utf-8")
    os.replace(partial, path)  # a recorder never reads half a record
    with open(journal / RECORDER_LOG_FILENAME, "ab") as log:
        subprocess.Popen(
            [sys.executable, "-m", "onnxport.tracking.reuse", str(Path(root_dir).absolute())],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,  # outlives this process, and its Ctrl-C
        )
    return path


def record_pending(root_dir: Path) -> list[str]:
    """Write every record in the journal of `root_dir` into MLflow, oldest first, deleting each
    once written; one recorder at a time. A record that cannot be written stays, and is
    logged with the reason. Returns the ids of the runs written."""
    from filelock import FileLock

    journal = journal_dir(root_dir)
    if not journal.is_dir():
        return []
    written: list[str] = []
    clients: dict[str, object] = {}
    with FileLock(str(journal / ".lock"), timeout=600):
        for path in sorted(journal.glob("*.json"), key=lambda p: p.stat().st_mtime):
            try:
                record = ReuseRecord.model_validate_json(path.read_text(encoding="utf-8"))
                if record.tracking_uri not in clients:
                    clients[record.tracking_uri] = prepare_store(record.tracking_uri)
                written.append(record_reuse(record, clients[record.tracking_uri]))
            except Exception as e:  # any failure leaves the record for the next recorder
                logger.warning("the reuse record %s stays pending: %s", path, one_line(e))
                continue
            path.unlink()
    return written


def main(argv: list[str] | None = None) -> int:
    """`python -m onnxport.tracking.reuse ROOT`: write ROOT's pending reuse records."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m onnxport.tracking.reuse PROJECT_ROOT", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    written = record_pending(Path(args[0]))
    if written:  # another recorder may have written them first: then nothing is said
        logger.info("recorded %d reuse run(s): %s", len(written), ", ".join(written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
