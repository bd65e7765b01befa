"""Concurrency: eight pipelines at once against one SQLite MLflow store.

Four processes ask for the same conversion and four for four different ones, all as the
platform calls onnxport (`python -m onnxport.cli --config-dir ...`), on one project root and
one store. Expected: one conversion per request (the others wait on the request's lock and
reuse it), every process recorded as a run that ended (a reuse's run by the detached
recorders, drained here once the processes are done), and no "database is locked" anywhere.
"""

from __future__ import annotations

import collections
import os
import subprocess
import sys

import pytest

from onnxport.artifact.manifest import read_manifest, verify_directory
from onnxport.tracking.reuse import journal_dir, record_pending
from support import (
    CONVERSION_TIMEOUT,
    CONVERSION_YAML,
    Project,
    conversion_children,
    leftovers,
    make_project,
    root_with_store,
    write_config_dir,
)

# Eight conversion processes at once: on one worker, not beside the fault tests' kills.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("processes")]

EXPERIMENT = "concurrency"
SAME, DIFFERENT = 4, 4


def _start(project: Project) -> subprocess.Popen:
    return subprocess.Popen(
        [
            *(sys.executable, "-m", "onnxport.cli"),
            *("--config-dir", str(project.config_dir)),
            *("--parent-training-dir", str(project.parent)),
            *("--parent-spec-fp", project.spec_fp, "--parent-exec-fp", project.exec_fp),
            *("--root-dir", str(project.root), "--experiment-name", EXPERIMENT),
            *("--platform", "local"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"},
    )


def test_four_same_and_four_different_requests_against_one_store(
    tmp_path_factory: pytest.TempPathFactory, checkpoint
) -> None:
    root = root_with_store(tmp_path_factory, "concurrency")
    same = make_project(root, "same", checkpoint("distilbert-token"))
    same.experiment = EXPERIMENT
    # Four other requests for the same training output: another validation seed each.
    different = [
        Project(
            root,
            write_config_dir(
                root / f"config-different-{i}", conversion=CONVERSION_YAML + f"  seed: {i + 1}\n"
            ),
            same.parent,
            EXPERIMENT,
            same.spec_fp,
            same.exec_fp,
        )
        for i in range(DIFFERENT)
    ]
    projects = [same] * SAME + different
    expected = [p.expected_output_dir() for p in projects]
    assert len(set(expected)) == 1 + DIFFERENT

    processes = [_start(p) for p in projects]
    results = [p.communicate(timeout=CONVERSION_TIMEOUT) for p in processes]

    for process, (stdout, stderr), output in zip(processes, results, expected):
        assert process.returncode == 0, stderr
        assert "database is locked" not in stderr.lower(), stderr
        assert "Traceback" not in stderr, stderr
        assert stdout.strip().splitlines()[-1] == str(output)
    for output in set(expected):
        assert verify_directory(output) == []
        assert leftovers(output) == []
    assert conversion_children() == []

    record_pending(root)  # waits for the reuses' recorders, and writes what they left
    assert list(journal_dir(root).glob("*.json")) == []
    runs = same.runs()
    assert len(runs) == SAME + DIFFERENT, "every process is recorded as a run"
    assert {r.info.status for r in runs} == {"FINISHED"}
    conversions = collections.Counter(
        r.data.tags["onnxport.conv_fp"]
        for r in runs
        if r.data.tags.get("onnxport.cache_hit") != "true"
    )
    hits = collections.Counter(
        r.data.tags["onnxport.conv_fp"]
        for r in runs
        if r.data.tags.get("onnxport.cache_hit") == "true"
    )
    fingerprints = {output.name.removeprefix("conv_") for output in expected}
    assert dict(conversions) == dict.fromkeys(fingerprints, 1), "one conversion per request"
    assert dict(hits) == {same.expected_output_dir().name.removeprefix("conv_"): SAME - 1}
    # Each published directory names the run that made it.
    made_by = {r.info.run_id for r in runs if r.data.tags.get("onnxport.cache_hit") != "true"}
    for output in set(expected):
        assert read_manifest(output).lineage["mlflow_run_id"] in made_by
