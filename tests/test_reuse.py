"""`tracking.reuse`: a reused conversion returns without MLflow, and its run is written by a
detached recorder from the project's journal, once, or stays pending with the reason."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from onnxport.errors import TrackingError
from onnxport.tracking.reuse import (
    REUSE_ID_TAG,
    ReuseRecord,
    journal_dir,
    record_pending,
)
from support import Project, leftovers, make_project

pytestmark = pytest.mark.slow

CALL = """
import json, sys
from onnxport.orchestration import execute_conversion
output = execute_conversion(**json.loads(sys.argv[1]))
print(json.dumps({"output": str(output), "mlflow_imported": "mlflow" in sys.modules}))
"""


def _reusable(root: Path, name: str, converted) -> Project:
    """A project whose conversion is already complete (a copy of a converted directory)."""
    project = make_project(root, name)
    shutil.copytree(converted("distilbert-token").directory, project.expected_output_dir())
    return project


def _arguments(project: Project) -> dict[str, object]:
    return {
        "root_dir": str(project.root),
        "config_dir": str(project.config_dir),
        "parent_training_output_dir": str(project.parent),
        "parent_spec_fp": project.spec_fp,
        "parent_exec_fp": project.exec_fp,
        "experiment_config": None,
        "conversion_experiment_name": project.experiment,
        "platform": "local",
    }


def test_a_reuse_in_a_fresh_process_returns_without_mlflow_and_its_run_is_written(
    shared_root: Path, converted
) -> None:
    project = _reusable(shared_root, "deferred", converted)
    done = subprocess.run(
        [sys.executable, "-c", CALL, json.dumps(_arguments(project))],
        capture_output=True,
        text=True,
        check=True,
    )
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer == {"output": str(project.expected_output_dir()), "mlflow_imported": False}

    record_pending(shared_root)  # waits for the detached recorder, and writes what it left
    (hit,) = project.cache_hit_runs()
    assert hit.info.status == "FINISHED"
    assert hit.data.tags["onnxport.output_dir"] == str(project.expected_output_dir())
    assert hit.data.tags["code.lineage.conv_fp"] == project.expected_output_dir().name[5:]
    assert hit.data.metrics, "the reused conversion's figures are logged"
    assert project.conversion_runs() == []
    assert list(journal_dir(shared_root).glob("*.json")) == []


def test_the_recorder_writes_each_record_once_and_keeps_the_ones_it_cannot_write(
    shared_root: Path, converted, tmp_path: Path
) -> None:
    project = _reusable(shared_root, "recorder", converted)
    root = tmp_path / "root"  # a journal of its own: no other test's records
    journal = journal_dir(root)
    journal.mkdir(parents=True)
    good = ReuseRecord(
        tracking_uri=project.tracking_uri,
        experiment_name=project.experiment,
        artifact_location=None,
        run_name="recorder-reused",
        tags={"code.lineage.conv_fp": "abc", "api_token": "s3cret"},
        output_dir=project.expected_output_dir(),
    )
    (tmp_path / "a-file").write_text("not a directory", encoding="utf-8")
    store_below_a_file = f"sqlite:///{tmp_path / 'a-file' / 'mlflow.db'}"
    unreachable = good.model_copy(update={"id": "unreachable", "tracking_uri": store_below_a_file})
    for record in (good, unreachable):
        (journal / f"{record.id}.json").write_text(record.model_dump_json(), encoding="utf-8")
    assert "s3cret" not in (journal / f"{good.id}.json").read_text(encoding="utf-8")
    copy = (journal / f"{good.id}.json").read_bytes()

    recorder = [sys.executable, "-m", "onnxport.tracking.reuse", str(root)]
    subprocess.run(recorder, capture_output=True, text=True, check=True)
    (hit,) = project.cache_hit_runs()
    assert hit.data.tags[REUSE_ID_TAG] == good.id
    assert hit.info.start_time == good.started_ms
    assert "api_token" not in hit.data.tags
    assert sorted(p.name for p in journal.glob("*.json")) == ["unreachable.json"]

    # The same record again (a recorder stopped after the run, before deleting it): no twin.
    (journal / f"{good.id}.json").write_bytes(copy)
    done = subprocess.run(recorder, capture_output=True, text=True, check=True)
    assert [r.info.run_id for r in project.cache_hit_runs()] == [hit.info.run_id]
    assert sorted(p.name for p in journal.glob("*.json")) == ["unreachable.json"]
    assert "unreachable.json stays pending: cannot reach the MLflow tracking store" in (done.stderr)


def test_a_reuse_waits_for_its_run_when_asked_or_when_it_registers(
    shared_root: Path, converted
) -> None:
    project = _reusable(shared_root, "waits", converted)
    project.defaults = {"wait_for_tracking": False}
    with pytest.raises(TrackingError, match="cannot register the reused conversion"):
        # A registration is checked at once: its failure reaches the caller.
        project.call(experiment_config={"registered_model_name": "never-logged"})
    project.call(wait_for_tracking=True)
    (hit,) = project.cache_hit_runs()  # written before the call returned
    assert hit.info.status == "FINISHED"
    assert not any(journal_dir(shared_root).glob(f"*{hit.data.tags[REUSE_ID_TAG]}*"))


def test_a_reuse_removes_a_killed_runs_leftovers_and_keeps_a_running_ones(
    shared_root: Path, converted
) -> None:
    project = _reusable(shared_root, "leftovers", converted)
    final = project.expected_output_dir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    killed = final.parent / f".{final.name}.partial-{dead}-0"
    running = final.parent / f".{final.name}.partial-{os.getppid()}-1"  # a live process
    for work in (killed, running):
        work.mkdir()
    project.defaults = {"wait_for_tracking": False}
    assert project.call() == final
    assert leftovers(final) == [running.name]
