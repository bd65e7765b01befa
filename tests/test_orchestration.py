"""`execute_conversion` and `python -m onnxport.cli`: lineage, MLflow, isolation, reuse.

The end-to-end tests convert a tiny DistilBERT laid out as a training output, with a real
SQLite MLflow store under a temporary root. Each conversion starts a child process that
imports torch, so conversions are shared between tests through module-scoped fixtures and
all of them are marked `slow`. The fast tests replace the child by a stand-in.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from onnxport.artifact.manifest import read_manifest, sha256_file, verify_directory
from onnxport.errors import (
    ConfigError,
    ExecutionError,
    ExportError,
    OnnxportError,
    SourceError,
    TrackingError,
)
from onnxport.execution import LINEAGE_ENV, REGISTERED_MODEL_ENV, ChildArguments
from onnxport.progress import Stage, StageEvent, Status
from support import (
    BACKBONE,
    CONVERSION_TIMEOUT,
    CONVERSION_YAML,
    EXEC_FP,
    SPEC_FP,
    FakeChild,
    Project,
    conversion_children,
    corrupt_byte,
    make_project,
    root_with_store,
    wait_for,
)

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

REGISTERED_MODEL = "tiny-resume-tagger"


# ------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def tiny_checkpoint(checkpoint: Callable[[str], Path]) -> Path:
    """The tiny DistilBERT token tagger of `models.py`, built once per test session."""
    return checkpoint("distilbert-token")


@pytest.fixture(scope="module")
def shared_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project root whose MLflow store is migrated once for this module's tests."""
    return root_with_store(tmp_path_factory, "project")


def test_the_stand_in_child_refuses_a_call_the_real_one_would_refuse(tmp_path: Path) -> None:
    child = FakeChild()
    arguments = ChildArguments(tmp_path / "ckpt", tmp_path / "config", "bert", tmp_path / "out", 18)
    for wrong in (
        {"timeout": 5},  # a misspelt keyword
        {},  # a required keyword left out
        {"timeout_seconds": 5, "cwd": tmp_path},
        {"timeout_seconds": 5, "result_file": tmp_path / "r.json"},  # the outcome is a message
        {"timeout_seconds": 5, "on_progress": print},  # execute_conversion's name, not its own
    ):
        with pytest.raises(TypeError):
            child(arguments, **wrong)
    assert child.calls == []
    with pytest.raises(ExecutionError):
        child(arguments, timeout_seconds=5, on_event=print)
    assert child.calls == [{"arguments": arguments, "timeout_seconds": 5, "on_event": print}]


# ------------------------------------------------------------- bad input: fails before a child


def _config_file(name: str, text: str) -> Callable[[Project], dict]:
    """A change to the project: write `text` into its config dir's `name`; no overrides."""

    def change(project: Project) -> dict:
        (project.config_dir / name).write_text(text, encoding="utf-8")
        return {}

    return change


def _remove(relative: str, *, of: str) -> Callable[[Project], dict]:
    def change(project: Project) -> dict:
        target = getattr(project, of) / relative
        shutil.rmtree(target) if target.is_dir() else target.unlink()
        return {}

    return change


def _arguments(**overrides: Any) -> Callable[[Project], dict]:
    return lambda project: overrides


# case: (how to break the project, the error type, what the message must name)
BAD_INPUT: dict[str, tuple[Callable[[Project], dict], type[OnnxportError], str]] = {
    "missing parent dir": (
        lambda p: {"parent_training_output_dir": p.parent.with_name("v9")},
        SourceError,
        "v9",
    ),
    "missing checkpoint": (_remove("checkpoint", of="parent"), SourceError, "checkpoint/"),
    "fingerprints disagree with the path": (
        _arguments(parent_spec_fp="abcdef"),
        ConfigError,
        "abcdef",
    ),
    "non-hex spec fingerprint": (_arguments(parent_spec_fp="xyz!"), ConfigError, "parent_spec_fp"),
    "non-hex exec fingerprint": (_arguments(parent_exec_fp="12 34"), ConfigError, "parent_exec_fp"),
    "missing conversion.yaml": (
        _remove("conversion.yaml", of="config_dir"),
        ConfigError,
        "conversion.yaml",
    ),
    "missing config dir": (
        lambda p: {"config_dir": p.root / "no-such-config"},
        ConfigError,
        "no-such-config/conversion.yaml",
    ),
    "unknown key in conversion.yaml": (
        _config_file("conversion.yaml", "onnx: {colour: red}\n"),
        ConfigError,
        "onnx.colour",
    ),
    "out-of-range opset": (
        _config_file("conversion.yaml", "onnx: {opset_version: 99}\n"),
        ConfigError,
        "opset_version",
    ),
    "invalid YAML": (
        _config_file("conversion.yaml", "onnx: [unclosed\n"),
        ConfigError,
        "not valid YAML",
    ),
    "filename_pattern escapes": (
        _config_file("conversion.yaml", 'output: {filename_pattern: "../x_{quantization}.onnx"}'),
        ConfigError,
        "filename_pattern",
    ),
    "absolute filename_pattern": (
        _config_file("conversion.yaml", 'output: {filename_pattern: "/x_{quantization}.onnx"}'),
        ConfigError,
        "filename_pattern",
    ),
    "invalid experiment.yaml": (
        _config_file("experiment.yaml", "experiment_nam: typo\n"),
        ConfigError,
        "experiment.yaml",
    ),
    "invalid experiment_config mapping": (
        _arguments(experiment_config={"tags": ["not", "a", "mapping"]}),
        ConfigError,
        "experiment_config",
    ),
    "experiment_config of the wrong type": (
        _arguments(experiment_config=42),
        ConfigError,
        "experiment_config",
    ),
    "unknown platform": (_arguments(platform="sagemaker"), ConfigError, "sagemaker"),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_is_a_typed_error_before_anything_starts(
    tmp_path: Path, fake_child: FakeChild, case: str
) -> None:
    project = make_project(tmp_path, "bad")
    change, error_type, fragment = BAD_INPUT[case]
    overrides = change(project)
    with pytest.raises(error_type) as raised:
        project.call(**overrides)
    assert fragment in str(raised.value)
    assert raised.value.exit_code == 2
    assert fake_child.calls == []
    assert not (tmp_path / "outputs" / "conversion").exists()
    assert not (tmp_path / "mlflow.db").exists(), "bad input created an MLflow store"


def test_unreachable_tracking_uri_fails_before_converting_naming_it(
    tmp_path: Path, fake_child: FakeChild, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT"):
        monkeypatch.setenv(name, "")  # records its absence: prepare_store's value is undone
        monkeypatch.delenv(name)
    project = make_project(
        tmp_path, "unreachable", experiment_yaml="tracking_uri: http://127.0.0.1:9\n"
    )
    with pytest.raises(TrackingError) as raised:
        project.call()
    assert "http://127.0.0.1:9" in str(raised.value)
    assert fake_child.calls == []
    assert not (tmp_path / "outputs" / "conversion").exists()


# ----------------------------------------------------- what the parent hands the child (fast)


def test_the_child_continues_the_parents_run_which_ends_failed_when_the_child_fails(
    shared_root: Path, fake_child: FakeChild
) -> None:
    project = make_project(
        shared_root,
        "handoff",
        conversion=CONVERSION_YAML + "execution:\n  timeout_seconds: 123\n",
    )
    experiment = {"registered_model_name": "tagger", "tags": {"team": "nlp"}, "other_key": 1}
    events: list[StageEvent] = []
    lines: list[str] = []
    with pytest.raises(ExecutionError, match="SIGKILL"):
        project.call(
            experiment_config=experiment,
            parent_training_run_id="train-run-7",
            on_progress=events.append,
            on_log_line=lines.append,
        )

    (call,) = fake_child.calls
    expected = project.expected_output_dir()
    arguments: ChildArguments = call["arguments"]
    assert arguments.checkpoint_path == project.parent / "checkpoint"
    assert arguments.output_dir == expected
    assert arguments.backbone == BACKBONE
    assert arguments.opset_version == 18
    assert arguments.conv_fp == expected.name.removeprefix("conv_")
    assert arguments.force  # a damaged or forced directory is replaced atomically
    assert call["timeout_seconds"] == 123
    assert call["on_event"] == events.append
    assert call["on_line"] == lines.append

    (run,) = project.runs()
    assert run.info.status == "FAILED"
    env = call["env"]
    assert env["MLFLOW_RUN_ID"] == run.info.run_id
    assert env["MLFLOW_TRACKING_URI"] == project.tracking_uri
    assert env[REGISTERED_MODEL_ENV] == "tagger"
    lineage = json.loads(env[LINEAGE_ENV])
    assert lineage["mlflow_run_id"] == run.info.run_id
    assert lineage["parent_training_run_id"] == "train-run-7"
    assert lineage["conv_fp"] == arguments.conv_fp

    tags = run.data.tags
    assert tags["mlflow.runType"] == "conversion"
    assert tags["team"] == "nlp"
    assert tags["code.lineage.parent_spec_fp"] == project.spec_fp
    assert tags["code.lineage.parent_exec_fp"] == project.exec_fp
    assert tags["code.lineage.parent_training_run_id"] == "train-run-7"
    assert tags["code.lineage.conv_fp"] == arguments.conv_fp
    assert tags["code.lineage.platform"] == "local"
    assert tags["code.lineage.backbone"] == BACKBONE
    assert not expected.exists()


def test_platform_is_detected_from_the_environment_when_not_given(
    shared_root: Path, fake_child: FakeChild, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AZUREML_RUN_ID", "azureml-run-1")
    project = make_project(shared_root, "azure")
    with pytest.raises(ExecutionError):
        project.call(platform=None)
    (call,) = fake_child.calls
    assert call["arguments"].output_dir == project.expected_output_dir(platform="azureml")
    (run,) = project.runs()
    assert run.data.tags["code.lineage.platform"] == "azureml"


def test_explicit_platform_wins_over_the_environment(
    shared_root: Path, fake_child: FakeChild, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AZUREML_RUN_ID", "azureml-run-1")
    project = make_project(shared_root, "explicit-platform")
    with pytest.raises(ExecutionError):
        project.call(platform="kaggle")
    assert fake_child.calls[0]["arguments"].output_dir == project.expected_output_dir("kaggle")


@pytest.mark.parametrize("metadata", ["{broken json", json.dumps({"epochs": 3})])
def test_missing_backbone_in_metadata_falls_back_to_the_path_and_logs_it(
    shared_root: Path,
    fake_child: FakeChild,
    caplog: pytest.LogCaptureFixture,
    metadata: str,
) -> None:
    project = make_project(shared_root, "no-backbone", metadata=metadata)
    with caplog.at_level(logging.WARNING), pytest.raises(ExecutionError):
        project.call()
    (call,) = fake_child.calls
    assert call["arguments"].backbone == BACKBONE  # the path's backbone segment
    assert any(
        r.levelno == logging.WARNING and "metadata.json" in r.getMessage() for r in caplog.records
    )


def test_experiment_yaml_decides_where_and_under_what_the_run_is_tracked(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, fake_child: FakeChild
) -> None:
    elsewhere = root_with_store(tmp_path_factory, "elsewhere") / "mlflow.db"
    tracking_uri = f"sqlite:///{elsewhere.as_posix()}"
    artifacts = (tmp_path / "shared-artifacts").as_uri()
    project = make_project(
        tmp_path,
        "from-file",
        experiment_yaml=(
            "experiment_name: resume-taggers\n"
            f"tracking_uri: {tracking_uri}\n"
            f"artifact_location: {artifacts}\n"
            "tags: {team: nlp, cost_center: '42'}\n"
            "registered_model_name: resume-tagger\n"
        ),
    )
    with pytest.raises(ExecutionError):
        project.call(conversion_experiment_name=None)
    with pytest.raises(ExecutionError):
        project.call(conversion_experiment_name="named-by-the-caller")  # the caller's name wins

    assert not (tmp_path / "mlflow.db").exists(), "tracked in the root's store, not the file's"
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    for call, name in zip(fake_child.calls, ["resume-taggers", "named-by-the-caller"]):
        experiment = client.get_experiment_by_name(name)
        assert experiment.artifact_location == artifacts
        (run,) = client.search_runs([experiment.experiment_id])
        assert run.data.tags["team"] == "nlp"
        assert run.data.tags["cost_center"] == "42"
        env = call["env"]
        assert env["MLFLOW_TRACKING_URI"] == tracking_uri
        assert env["MLFLOW_EXPERIMENT_ID"] == experiment.experiment_id
        assert env["MLFLOW_RUN_ID"] == run.info.run_id
        assert env[REGISTERED_MODEL_ENV] == "resume-tagger"


# ------------------------------------------------------------------ in-process CLI bad input


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
    assert main([*args, "--force"]) == 1  # converted again, by the stand-in child that fails
    (call,) = fake_child.calls
    assert call["arguments"].output_dir == expected
    assert [r.info.status for r in project.cache_hit_runs()] == ["FINISHED"]
    assert [r.info.status for r in project.conversion_runs()] == ["FAILED"]
    assert (expected / "manifest.json").read_bytes() == before
    assert verify_directory(expected) == []


def test_a_reuse_cannot_register_a_model_no_run_of_the_store_logged(
    shared_root: Path, fake_child: FakeChild, converted
) -> None:
    """A complete directory made outside this tracking store (here by `pipeline.convert`,
    untracked): asked to register it, the reuse says why it cannot and what to do, before
    recording anything."""
    project = make_project(shared_root, "reuse-unregistrable")
    expected = project.expected_output_dir()
    shutil.copytree(converted("distilbert-token").directory, expected)
    experiment = {"registered_model_name": "nowhere-tagger"}
    with pytest.raises(TrackingError, match="cannot register the reused conversion") as raised:
        project.call(experiment_config=experiment)
    assert "nowhere-tagger" in str(raised.value)
    assert "force" in str(raised.value.hint)
    assert fake_child.calls == []
    assert project.runs() == []
    assert project.client().search_model_versions("name='nowhere-tagger'") == []
    assert verify_directory(expected) == []


# =================================================================== end to end (slow)


@dataclass
class Conversion:
    project: Project
    output: Path
    run_id: str
    events: list[StageEvent]


@pytest.fixture(scope="module")
def e2e(shared_root: Path, tiny_checkpoint: Path) -> Conversion:
    """One real conversion, tracked in MLflow, shared by the end-to-end tests below."""
    project = make_project(shared_root, "e2e", tiny_checkpoint, spec_fp=SPEC_FP, exec_fp=EXEC_FP)
    project.defaults = {
        "experiment_config": {"registered_model_name": REGISTERED_MODEL, "tags": {"team": "nlp"}},
        "parent_training_run_id": "training-run-42",
    }
    events: list[StageEvent] = []
    output = project.call(on_progress=events.append)
    (run,) = project.runs()
    return Conversion(project, output, run.info.run_id, events)


@pytest.mark.slow
def test_e2e_returns_the_complete_output_directory(e2e: Conversion) -> None:
    assert e2e.output == e2e.project.expected_output_dir()
    assert e2e.output.is_dir()
    assert verify_directory(e2e.output) == []
    names = {p.name for p in e2e.output.iterdir()}
    assert {"model_fp32.onnx", "manifest.json", "report.md", "config.json"} <= names
    assert e2e.project.partials() == []


@pytest.mark.slow
def test_e2e_progress_arrives_as_events_a_start_and_a_done_per_stage_in_order(
    e2e: Conversion,
) -> None:
    # Logging to MLflow is a stage inside publishing's, after the manifest is sealed and
    # before the directory takes its name (publishing is done only then).
    *before, publishing, tracking, tracked, published = e2e.events
    assert [(e.stage, e.status) for e in (publishing, tracking, tracked, published)] == [
        (Stage.PUBLISH, Status.START),
        (Stage.TRACK, Status.START),
        (Stage.TRACK, Status.DONE),
        (Stage.PUBLISH, Status.DONE),
    ]
    starts, ends = before[::2], before[1::2]
    assert [e.status for e in starts] == [Status.START] * len(starts)
    assert [e.status for e in ends] == [Status.DONE] * len(ends)
    assert [e.stage for e in starts] == [e.stage for e in ends]
    stages = [e.stage for e in starts] + [Stage.PUBLISH]
    assert stages == sorted(stages, key=list(Stage).index)  # the pipeline's order, each once
    assert stages[0] == Stage.LOAD
    # The one clock of a stage: its event and the manifest show the same seconds, publish
    # too (its figure taken as the manifest is sealed).
    timings = read_manifest(e2e.output).timings
    assert list(timings) == [stage.value for stage in stages]
    for event in [*ends, published]:
        assert event.seconds == timings[event.stage.value]


@pytest.mark.slow
def test_e2e_manifest_records_the_lineage(e2e: Conversion) -> None:
    manifest = read_manifest(e2e.output)
    project = e2e.project
    assert manifest.conv_fp == e2e.output.name.removeprefix("conv_")
    assert manifest.lineage["parent_spec_fp"] == project.spec_fp
    assert manifest.lineage["parent_exec_fp"] == project.exec_fp
    assert manifest.lineage["parent_training_id"] == f"spec_{SPEC_FP}_exec_{EXEC_FP}/v1"
    assert manifest.lineage["parent_training_run_id"] == "training-run-42"
    assert manifest.lineage["mlflow_run_id"] == e2e.run_id
    assert manifest.lineage["platform"] == "local"
    assert manifest.lineage["backbone"] == BACKBONE


@pytest.mark.slow
def test_e2e_run_is_finished_with_the_lineage_tags(e2e: Conversion) -> None:
    run = e2e.project.client().get_run(e2e.run_id)
    assert run.info.status == "FINISHED"
    tags = run.data.tags
    assert tags["mlflow.runType"] == "conversion"
    assert tags["code.lineage.parent_spec_fp"] == SPEC_FP
    assert tags["code.lineage.parent_exec_fp"] == EXEC_FP
    assert tags["code.lineage.conv_fp"] == e2e.output.name.removeprefix("conv_")
    assert tags["code.lineage.platform"] == "local"
    assert tags["code.lineage.backbone"] == BACKBONE
    assert tags["code.lineage.parent_training_run_id"] == "training-run-42"
    assert tags["team"] == "nlp"
    assert BACKBONE in run.info.run_name
    assert tags.get("onnxport.cache_hit") != "true"


@pytest.mark.slow
def test_e2e_run_has_metrics_and_params(e2e: Conversion) -> None:
    run = e2e.project.client().get_run(e2e.run_id)
    metrics = run.data.metrics
    for name in (
        "fp32.logits.max_abs_diff",
        "fp32.logits.max_rel_diff",
        "fp32.task_agreement",
        "fp32.size_bytes",
        "seconds.load",
        "seconds.export",
        "seconds.validate",
        "seconds.publish",
        "peak_rss_mb",
        "child_peak_rss_mb",
    ):
        assert name in metrics, f"metric {name} not logged: {sorted(metrics)}"
    assert metrics["fp32.logits.max_abs_diff"] < 1e-3
    assert metrics["fp32.task_agreement"] >= 0.99
    assert metrics["child_peak_rss_mb"] > 50  # torch alone needs more than that
    assert metrics["fp32.size_bytes"] == (e2e.output / "model_fp32.onnx").stat().st_size
    params = run.data.params
    assert params["opset"] == "18"
    assert params["quantization"] == "none"
    assert params["task"] == "token-classification"
    assert params["exporter"] in ("dynamo", "torchscript")


@pytest.mark.slow
def test_e2e_manifest_and_report_are_artifacts(e2e: Conversion) -> None:
    client = e2e.project.client()
    artifacts = {a.path for a in client.list_artifacts(e2e.run_id)}
    assert {"manifest.json", "report.md"} <= artifacts
    local = Path(client.download_artifacts(e2e.run_id, "manifest.json"))
    assert json.loads(local.read_text())["conv_fp"] == read_manifest(e2e.output).conv_fp


def _run_onnx(model, sequence: int = 8) -> dict[str, Any]:
    import numpy as np
    import onnxruntime

    session = onnxruntime.InferenceSession(
        model.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    feed = {i.name: np.ones((1, sequence), dtype=np.int64) for i in session.get_inputs()}
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, feed)))


@pytest.fixture
def tracking(e2e: Conversion):
    import mlflow

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(e2e.project.tracking_uri)
    yield mlflow
    mlflow.set_tracking_uri(previous)


@pytest.mark.slow
def test_e2e_logged_model_loads_and_runs_in_onnxruntime(e2e: Conversion, tracking) -> None:
    import mlflow.onnx
    import numpy as np
    import onnx

    by_run = mlflow.onnx.load_model(f"runs:/{e2e.run_id}/onnx_fp32")
    (logged,) = [
        m
        for m in tracking.search_logged_models(
            experiment_ids=[tracking.get_run(e2e.run_id).info.experiment_id],
            output_format="list",
        )
        if m.source_run_id == e2e.run_id and m.name == "onnx_fp32"
    ]
    by_uri = mlflow.onnx.load_model(logged.model_uri)
    on_disk = onnx.load(str(e2e.output / "model_fp32.onnx"))
    expected = _run_onnx(on_disk)["logits"]
    assert expected.shape[:2] == (1, 8)
    for model in (by_run, by_uri):
        np.testing.assert_allclose(_run_onnx(model)["logits"], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_e2e_model_is_registered_under_the_experiment_configs_name(e2e: Conversion) -> None:
    versions = e2e.project.client().search_model_versions(f"name='{REGISTERED_MODEL}'")
    assert [v.run_id for v in versions] == [e2e.run_id]


@pytest.mark.slow
def test_e2e_second_call_reuses_the_directory_without_a_child(
    e2e: Conversion, fake_child: FakeChild, caplog: pytest.LogCaptureFixture
) -> None:
    project = e2e.project
    model_file = e2e.output / "model_fp32.onnx"
    manifest_file = e2e.output / "manifest.json"
    before = (model_file.stat().st_mtime_ns, manifest_file.read_bytes())
    hits_before = len(project.cache_hit_runs())

    with caplog.at_level(logging.INFO, logger="onnxport.orchestration"):
        again = project.call()

    assert again == e2e.output
    assert fake_child.calls == []  # no child, no conversion
    assert before == (
        model_file.stat().st_mtime_ns,
        (e2e.output / "manifest.json").read_bytes(),
    )
    assert "reusing" in caplog.text
    assert len(project.conversion_runs()) == 1
    hits = project.cache_hit_runs()
    assert len(hits) == hits_before + 1
    hit = hits[-1]
    assert hit.info.status == "FINISHED"
    assert hit.data.tags["onnxport.original_run_id"] == e2e.run_id
    assert hit.data.tags["onnxport.output_dir"] == str(e2e.output)
    assert hit.data.tags["mlflow.runType"] == "conversion"
    assert hit.data.tags["code.lineage.conv_fp"] == e2e.output.name.removeprefix("conv_")


@pytest.mark.slow
def test_e2e_a_reuse_applies_a_new_experiment_yaml(
    e2e: Conversion, fake_child: FakeChild, tracking, tmp_path: Path
) -> None:
    """The same conversion.yaml, now with an experiment.yaml naming another experiment and a
    model name: the reuse runs no child, logs the conversion into that experiment, and
    registers the model the conversion's run logged; asked again, it registers no twin."""
    project = e2e.project
    config_dir = shutil.copytree(project.config_dir, tmp_path / "config-with-experiment")
    (config_dir / "experiment.yaml").write_text(
        "experiment_name: reused-elsewhere\nregistered_model_name: reused-tagger\n",
        encoding="utf-8",
    )
    arguments = {"config_dir": config_dir, "experiment_config": None}
    again = project.call(**arguments, conversion_experiment_name=None)
    assert again == e2e.output
    assert fake_child.calls == []  # reused: no conversion

    client = project.client()
    conv_fp = e2e.output.name.removeprefix("conv_")
    (version,) = client.search_model_versions("name='reused-tagger'")
    (logged,) = [  # the text model the conversion's run logged, as log_conversion registers
        m
        for m in client.search_logged_models(
            experiment_ids=[client.get_run(e2e.run_id).info.experiment_id]
        )
        if m.source_run_id == e2e.run_id and m.name == "text_fp32"
    ]
    assert (version.run_id, version.source) == (e2e.run_id, logged.artifact_location)
    info = tracking.models.get_model_info("models:/reused-tagger/1")
    assert "python_function" in info.flavors and "onnx" not in info.flavors
    assert version.tags["onnxport.conv_fp"] == conv_fp
    assert version.tags["onnxport.variant"] == "fp32"
    assert version.tags["code.lineage.parent_training_run_id"] == "training-run-42"

    experiment = client.get_experiment_by_name("reused-elsewhere")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.tags["onnxport.cache_hit"] == "true"
    assert run.data.tags["onnxport.original_run_id"] == e2e.run_id
    assert run.data.tags["onnxport.registered_model"] == "models:/reused-tagger/1"
    original = client.get_run(e2e.run_id).data
    # The conversion's own params (the text model's served settings stay with its run).
    assert run.data.params["conv_fp"] == conv_fp
    assert run.data.params.items() <= original.params.items()
    assert run.data.metrics["fp32.task_agreement"] == original.metrics["fp32.task_agreement"]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"manifest.json", "report.md"} <= artifacts

    project.call(**arguments, conversion_experiment_name=None)
    assert len(client.search_model_versions("name='reused-tagger'")) == 1
    assert len(client.search_runs([experiment.experiment_id])) == 2


@pytest.mark.slow
def test_e2e_forced_rebuild_that_fails_keeps_the_earlier_result(
    e2e: Conversion, fake_child: FakeChild
) -> None:
    project = e2e.project
    manifest_before = (e2e.output / "manifest.json").read_bytes()
    with pytest.raises(ExecutionError):
        project.call(force=True)
    assert len(fake_child.calls) == 1
    assert verify_directory(e2e.output) == []
    assert (e2e.output / "manifest.json").read_bytes() == manifest_before
    newest = project.conversion_runs()[-1]
    assert newest.info.run_id != e2e.run_id
    assert newest.info.status == "FAILED"


@pytest.mark.slow
def test_e2e_damaged_directory_is_rebuilt_not_returned(e2e: Conversion) -> None:
    """Runs last among the e2e tests: it replaces the shared conversion."""
    project = e2e.project
    model_file = e2e.output / "model_fp32.onnx"
    good = read_manifest(e2e.output).files["model_fp32.onnx"]
    corrupt_byte(model_file)
    assert verify_directory(e2e.output) != []
    conversions_before = len(project.conversion_runs())
    hits_before = len(project.cache_hit_runs())

    again = project.call()

    assert again == e2e.output
    assert verify_directory(again) == []
    assert sha256_file(model_file) == read_manifest(again).files["model_fp32.onnx"]
    assert sha256_file(model_file) == good  # the same model, deterministically rebuilt
    assert len(project.conversion_runs()) == conversions_before + 1
    assert project.conversion_runs()[-1].info.status == "FINISHED"
    assert len(project.cache_hit_runs()) == hits_before  # not reported as a reuse
    assert project.partials() == []


# ---------------------------------------------------------------- failures of the child (slow)


@pytest.mark.slow
def test_sigkill_mid_export_publishes_nothing_and_a_second_call_converts(
    shared_root: Path, tiny_checkpoint: Path
) -> None:
    # The dynamo exporter takes several seconds on the tiny model: a wide window to kill in.
    dynamo = CONVERSION_YAML.replace("exporter: torchscript", "exporter: dynamo")
    assert dynamo != CONVERSION_YAML
    project = make_project(shared_root, "sigkill", tiny_checkpoint, conversion=dynamo)
    expected = project.expected_output_dir()
    export_started = threading.Event()
    outcome: dict[str, Any] = {}

    def on_progress(event: StageEvent) -> None:
        if (event.stage, event.status) == (Stage.EXPORT, Status.START):
            export_started.set()

    def convert() -> None:
        try:
            outcome["output"] = project.call(on_progress=on_progress)
        except BaseException as e:
            outcome["error"] = e

    caller = threading.Thread(target=convert, daemon=True)
    caller.start()
    (child,) = wait_for(conversion_children, "the conversion child process")
    # The parent prepared the store and created the run before it started the child.
    (run,) = project.runs()
    assert run.info.status == "RUNNING"
    partial = wait_for(lambda: project.partials(), "the .partial- staging directory")[0]
    assert f".partial-{child.pid}-" in partial.name
    assert export_started.wait(CONVERSION_TIMEOUT), "the child never started exporting"
    os.kill(child.pid, signal.SIGKILL)
    caller.join(60)
    assert not caller.is_alive()

    error = outcome.get("error")
    assert isinstance(error, ExecutionError), outcome
    assert "SIGKILL" in str(error)
    assert not expected.exists()
    (run,) = project.runs()
    assert run.info.status == "FAILED"

    output = project.call()
    assert output == expected
    assert verify_directory(output) == []
    assert project.partials() == []  # the killed child's leftovers are cleaned up
    assert [r.info.status for r in project.runs()] == ["FAILED", "FINISHED"]


@pytest.mark.slow
def test_timeout_stops_the_conversion_marks_the_run_failed_and_publishes_nothing(
    shared_root: Path, tiny_checkpoint: Path
) -> None:
    project = make_project(
        shared_root,
        "timeout",
        tiny_checkpoint,
        conversion=CONVERSION_YAML + "execution: {timeout_seconds: 2}\n",
    )
    with pytest.raises(ExecutionError) as raised:
        project.call()
    message = str(raised.value)
    assert "2 s" in message
    assert "timeout" in message.lower()
    assert not project.expected_output_dir().exists()
    (run,) = project.runs()
    assert run.info.status == "FAILED"
    assert conversion_children() == []


@pytest.mark.slow
def test_a_failing_child_raises_its_typed_error_and_the_run_fails(
    shared_root: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    broken = shutil.copytree(tiny_checkpoint, tmp_path / "broken-checkpoint")
    (broken / "config.json").write_text("{this is not json", encoding="utf-8")
    project = make_project(shared_root, "corrupt", broken)
    events: list[StageEvent] = []
    with pytest.raises(SourceError) as raised:
        project.call(on_progress=events.append)
    assert "config.json" in str(raised.value)
    assert [(e.stage, e.status) for e in events] == [
        (Stage.LOAD, Status.START),
        (Stage.LOAD, Status.FAILED),
    ]
    assert not project.expected_output_dir().exists()
    assert project.partials() == []
    (run,) = project.runs()
    assert run.info.status == "FAILED"


# ------------------------------------------------------------ processes and the CLI (slow)


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
