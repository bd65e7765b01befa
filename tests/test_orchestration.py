"""`execute_conversion` up to its conversion child, which a stand-in replaces (fast).

Bad input is a typed error before anything starts; otherwise the parent hands the child its
arguments, environment, MLflow run and lineage, on the platform it detects or is told, with
the experiment settings of the call or of `experiment.yaml`. The real child runs in
`test_orchestration_end_to_end.py` and `test_orchestration_failures.py`.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from onnxport.errors import (
    ConfigError,
    ExecutionError,
    OnnxportError,
    SourceError,
    TrackingError,
)
from onnxport.execution import LINEAGE_ENV, REGISTERED_MODEL_ENV, ChildArguments
from onnxport.progress import StageEvent
from support import (
    BACKBONE,
    CONVERSION_YAML,
    FakeChild,
    Project,
    make_project,
    root_with_store,
)

# -------------------------------------------------------------------------- the stand-in child


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


# ------------------------------------------------------ what the parent hands the child (fast)


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
