"""`onnxport run` and `python -m onnxport.cli --config-dir ...` (the platform's form):
`execute_conversion` from the command line, in process with a stand-in child, and as the
platform starts it, in processes of their own (slow)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from onnxport.artifact.manifest import verify_directory
from onnxport.errors import ExportError
from onnxport.execution import LINEAGE_ENV
from onnxport.progress import Stage, StageEvent, Status
from onnxport.tracking.reuse import record_pending
from support import (
    CONVERSION_TIMEOUT,
    EXEC_FP,
    SPEC_FP,
    FakeChild,
    Project,
    make_project,
)

# ----------------------------------------------------------- in process, with a stand-in child


def _cli_args(project: Project, **flags: str) -> list[str]:
    values = {
        "--config-dir": str(project.config_dir),
        "--parent-training-dir": str(project.parent),
        "--parent-spec-fp": project.spec_fp,
        "--parent-exec-fp": project.exec_fp,
        "--root-dir": str(project.root),
        **flags,
    }
    return [part for pair in values.items() for part in pair]


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        ({"--parent-training-dir": "/no/such/training/output/v1"}, "/no/such/training/output/v1"),
        ({"--parent-spec-fp": "xyz!"}, "parent_spec_fp"),
        ({"--config-dir": "/no/such/config"}, "conversion.yaml"),
    ],
)
def test_cli_main_bad_input_exits_2_with_a_short_error(
    tmp_path: Path,
    fake_child: FakeChild,
    capsys: pytest.CaptureFixture[str],
    flags: dict[str, str],
    fragment: str,
) -> None:
    from onnxport.cli import main

    project = make_project(tmp_path, "cli")
    assert main(_cli_args(project, **flags)) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "Traceback" not in captured.err
    errors = [line for line in captured.err.splitlines() if line.startswith("error")]
    assert len(errors) == 1
    assert fragment in errors[0]
    assert fake_child.calls == []


def test_cli_run_records_the_training_run_id_as_lineage(
    shared_root: Path, fake_child: FakeChild
) -> None:
    from onnxport.cli import main

    project = make_project(shared_root, "cli-lineage")
    flags = {"--experiment-name": project.experiment, "--platform": "local"}
    code = main(_cli_args(project, **flags, **{"--parent-training-run-id": "train-run-9"}))
    assert code == 1  # the stand-in child fails
    (call,) = fake_child.calls
    assert json.loads(call["env"][LINEAGE_ENV])["parent_training_run_id"] == "train-run-9"
    (run,) = project.runs()
    assert run.data.tags["code.lineage.parent_training_run_id"] == "train-run-9"


@pytest.mark.parametrize("verbose", [False, True])
def test_cli_run_renders_progress_from_events_and_the_childs_lines_only_with_verbose(
    shared_root: Path, monkeypatch: pytest.MonkeyPatch, cli, verbose: bool
) -> None:
    """The lines `onnxport convert` prints, from the child's events; its log lines with -v.
    A line that reads like a stage's log line is not taken for progress."""
    child = FakeChild(
        events=(
            StageEvent(Stage.LOAD, Status.START),
            StageEvent(Stage.LOAD, Status.DONE, 1.24),
            StageEvent(Stage.EXPORT, Status.START),
            StageEvent(Stage.EXPORT, Status.FAILED, 0.5),
        ),
        lines=("12:00:00 INFO onnxport.execution: stage validate done in 9.9 s", "[odd] text"),
        error=ExportError("the exporter gave up"),
    )
    monkeypatch.setattr("onnxport.orchestration.run_child", child)
    project = make_project(shared_root, f"cli-progress-{verbose}")
    flags = {"--experiment-name": project.experiment, "--platform": "local"}
    torch_level = logging.getLogger("torch").level
    try:
        run = cli("run", *_cli_args(project, **flags), *(["-v"] if verbose else []))
    finally:
        # -v lets torch log INFO, which it does at exit, to a handler an earlier in-process
        # CLI call left on a stream pytest has closed since.
        logging.getLogger("torch").setLevel(torch_level)
    assert run.code == 1
    err = run.stderr.splitlines()
    progress = [line for line in err if line[:1] in "…✓✗"]
    assert progress == [
        "… load source",
        "✓ load source 1.2 s",
        "… export to ONNX",
        "✗ export to ONNX 0.5 s",
    ]
    shown = [line.strip() for line in err if line.startswith("  ")]
    assert shown == (list(child.lines) if verbose else [])
    assert "error (export): the exporter gave up" in err


@pytest.mark.slow
def test_cli_run_force_converts_again_over_a_complete_result(
    shared_root: Path, fake_child: FakeChild, converted, capsys: pytest.CaptureFixture[str]
) -> None:
    from onnxport.cli import main

    project = make_project(shared_root, "cli-force")
    expected = project.expected_output_dir()
    shutil.copytree(converted("distilbert-token").directory, expected)  # an earlier result
    before = (expected / "manifest.json").read_bytes()
    args = _cli_args(project, **{"--experiment-name": project.experiment, "--platform": "local"})

    assert main(args) == 0
    assert capsys.readouterr().out.strip() == str(expected)
    assert fake_child.calls == []  # reused
    record_pending(shared_root)  # the reuse's run, written as its detached recorder would
    assert main([*args, "--force"]) == 1  # converted again, by the stand-in child that fails
    (call,) = fake_child.calls
    assert call["arguments"].output_dir == expected
    assert [r.info.status for r in project.cache_hit_runs()] == ["FINISHED"]
    assert [r.info.status for r in project.conversion_runs()] == ["FAILED"]
    assert (expected / "manifest.json").read_bytes() == before
    assert verify_directory(expected) == []


# --------------------------------- as the platform starts it, in processes of their own (slow)


def _cli(cwd: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "onnxport.cli", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"},
    )


@pytest.mark.slow
def test_two_concurrent_cli_processes_convert_once_and_return_the_same_directory(
    tmp_path: Path, tiny_checkpoint: Path
) -> None:
    """`python -m onnxport.cli ...` as the platform calls it, twice at once on a fresh root."""
    project = make_project(
        tmp_path,
        "race",
        tiny_checkpoint,
        spec_fp=SPEC_FP,
        exec_fp=EXEC_FP,
        config_dirname="config",
    )
    project.experiment = "conversion"  # the default: no experiment.yaml, no --experiment-name
    args = (
        "--config-dir", "config",
        "--parent-training-dir", str(project.parent.relative_to(tmp_path)),
        "--parent-spec-fp", SPEC_FP,
        "--parent-exec-fp", EXEC_FP,
    )  # fmt: skip
    processes = [_cli(tmp_path, *args) for _ in range(2)]
    results = [p.communicate(timeout=CONVERSION_TIMEOUT) for p in processes]

    expected = project.expected_output_dir()
    for process, (stdout, stderr) in zip(processes, results):
        assert process.returncode == 0, stderr
        assert stdout.strip() == str(expected)
        assert "Traceback" not in stderr
    assert verify_directory(expected) == []
    record_pending(tmp_path)  # waits for the reuse's recorder, and writes what it left
    (conversion,) = project.conversion_runs()
    (hit,) = project.cache_hit_runs()
    assert conversion.info.status == "FINISHED"
    assert hit.info.status == "FINISHED"
    assert hit.data.tags["onnxport.original_run_id"] == conversion.info.run_id


@pytest.mark.slow
def test_cli_bad_input_exits_2_with_a_one_line_error_and_no_traceback(tmp_path: Path) -> None:
    project = make_project(tmp_path, "cli-bad", spec_fp=SPEC_FP, exec_fp=EXEC_FP)
    (tmp_path / "bad-config").mkdir()
    (tmp_path / "bad-config" / "conversion.yaml").write_text("onnx:\n  opset_version: 99\n")
    good = {
        "--config-dir": str(project.config_dir),
        "--parent-training-dir": str(project.parent),
        "--parent-spec-fp": SPEC_FP,
        "--parent-exec-fp": EXEC_FP,
    }
    missing = str(project.parent.with_name("v7"))
    cases = {
        "missing parent dir": ({"--parent-training-dir": missing}, missing),
        "invalid conversion.yaml": (
            {"--config-dir": str(tmp_path / "bad-config")},
            "opset_version",
        ),
        "non-hex fingerprint": ({"--parent-spec-fp": "abc12g"}, "parent_spec_fp"),
    }
    processes = {
        name: _cli(tmp_path, *[part for pair in {**good, **flags}.items() for part in pair])
        for name, (flags, _) in cases.items()
    }
    for name, process in processes.items():
        stdout, stderr = process.communicate(timeout=120)
        fragment = cases[name][1]
        assert process.returncode == 2, (name, stderr)
        assert stdout == "", name
        assert "Traceback" not in stderr, name
        lines = [line for line in stderr.splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith("error")]
        assert len(errors) == 1, (name, stderr)
        assert fragment in errors[0], (name, stderr)
        assert all(line == errors[0] or line.startswith("  hint:") for line in lines), stderr
    assert not (tmp_path / "outputs" / "conversion").exists()
