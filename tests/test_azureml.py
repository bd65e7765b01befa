"""Conversions as Azure Machine Learning jobs: real azure-ai-ml objects, a fake service.

The job, its inputs, outputs and environment are azure-ai-ml's own, checked by its
client-side validation and a YAML round trip through `load_job`. Only the service is
replaced (`azureml_support.FakeMLClient`). The slow tests run the job's command as an Azure
ML node would, on a tiny checkpoint, and validate what it publishes.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from suite import AZUREML_EXTRA

pytest.importorskip("azure.ai.ml", reason=AZUREML_EXTRA)  # under CI=true: fails in conftest

from azure.ai.ml import Input, load_job
from azure.ai.ml.entities import Environment
from azure.core.exceptions import ServiceRequestError

from azureml_support import (
    FakeMLClient,
    http_error,
    run_like_azureml,
    serve_jobs,
    training_job,
    write_workspace_config,
)
from onnxport import __version__
from onnxport.artifact.manifest import MANIFEST_FILENAME, read_manifest, verify_directory
from onnxport.azureml import (
    check_command_bindings,
    create_conversion_job,
    get_checkpoint_output_from_training_job,
    submit_conversion_job,
    write_job_yaml,
)
from onnxport.azureml.environment import (
    AZUREML_MLFLOW_REQUIREMENT,
    runtime_requirements,
    stage_code,
)
from onnxport.azureml.job import CHECKPOINT_INPUT, CONFIG_INPUT, MODEL_OUTPUT, MODEL_SUBDIR
from onnxport.azureml.service import validate_conversion_job, wait_for_jobs
from onnxport.commands.azureml import read_training_job_names
from onnxport.errors import AzureMLError, ConfigError
from onnxport.execution import LINEAGE_ENV
from onnxport.execution.child import parse_arguments
from onnxport.request.config import ConversionConfig, load_conversion_config
from onnxport.request.fingerprints import conversion_fingerprint
from support import root_with_store

SPEC_FP = "abc123"
EXEC_FP = "def456"
REPO = Path(__file__).resolve().parents[1]
# The TorchScript exporter and two shapes: the remote job's behaviour does not depend on them.
FAST = ConversionConfig().with_overrides(
    onnx={"exporter": "torchscript"}, validation={"shapes": [[1, 8], [2, 13]]}
)


@pytest.fixture(scope="session")
def code_dir(tmp_path_factory) -> Path:
    return stage_code(tmp_path_factory.mktemp("azureml-code") / "code")


@pytest.fixture
def make_job(code_dir, tmp_path):
    """`make_job(training_job=..., **options)`: a conversion job with the test's defaults."""

    def make(training=None, **options):
        options.setdefault("conversion_config", FAST)
        options.setdefault("work_dir", tmp_path / "job-files")
        training = training if training is not None else training_job("train-1")
        return create_conversion_job(code_dir, training, None, "cpu-cluster", **options)

    return make


def _child_arguments(job, **paths: str):
    """The command's arguments as the conversion child parses them, bindings resolved."""
    command = job.command
    for binding, path in paths.items():
        command = command.replace("${{" + binding.replace("__", ".") + "}}", path)
    words = shlex.split(command)
    assert words[:3] == ["python", "-m", "onnxport.execution"]
    return parse_arguments(words[3:])


# ---------------------------------------------------------------- the training job's output


def test_checkpoint_input_addresses_the_training_jobs_output() -> None:
    checkpoint = get_checkpoint_output_from_training_job(training_job("train-7"))
    assert isinstance(checkpoint, Input)
    assert checkpoint.type == "uri_folder"
    assert checkpoint.path == "azureml://jobs/train-7/outputs/checkpoint"


def test_a_training_job_still_running_is_refused(make_job) -> None:
    running = training_job("train-2", status="Running", outputs=("checkpoint", "logs"))
    with pytest.raises(AzureMLError) as error:
        get_checkpoint_output_from_training_job(running)
    message = str(error.value)
    assert "train-2" in message and "Running" in message and "not Completed" in message
    assert "checkpoint, logs" in message
    assert error.value.exit_code == 2, "the caller can fix it: wait, or name another job"
    with pytest.raises(AzureMLError, match="train-2 is Running"):
        make_job(running)


def test_a_missing_output_is_named_with_the_outputs_the_job_has() -> None:
    job = training_job("train-3", outputs=("model", "logs"))
    with pytest.raises(AzureMLError) as error:
        get_checkpoint_output_from_training_job(job)
    message = str(error.value)
    assert "train-3 (Completed) has no output named 'checkpoint'" in message
    assert "its outputs: logs, model" in message
    assert error.value.exit_code == 2
    assert get_checkpoint_output_from_training_job(job, "model").path.endswith("/outputs/model")


# -------------------------------------------------------------------------------- the job


def test_the_job_runs_the_conversion_child_on_the_checkpoint(make_job) -> None:
    job = make_job(display_name="convert train-1", experiment_name="onnx-conversions")
    arguments = _child_arguments(
        job,
        inputs__checkpoint="/mnt/checkpoint",
        inputs__conversion_config="/mnt/conversion.yaml",
        outputs__onnx_model="/mnt/onnx_model",
    )
    assert arguments.checkpoint_path == Path("/mnt/checkpoint")
    assert arguments.config_dir == Path("/mnt/conversion.yaml")
    assert arguments.output_dir == Path("/mnt/onnx_model") / MODEL_SUBDIR
    assert arguments.opset_version == 18 and arguments.run_smoke_test
    assert arguments.backbone == "distilbert-base-uncased"

    assert set(job.inputs) == {CHECKPOINT_INPUT, CONFIG_INPUT}
    command_job = job._to_job()
    assert command_job.inputs[CHECKPOINT_INPUT].type == "uri_folder"
    assert command_job.inputs[CHECKPOINT_INPUT].path == "azureml://jobs/train-1/outputs/checkpoint"
    assert command_job.inputs[CONFIG_INPUT].type == "uri_file"
    assert command_job.outputs[MODEL_OUTPUT].type == "uri_folder"
    assert command_job.outputs[MODEL_OUTPUT].mode == "upload"
    assert job.compute == "cpu-cluster"
    assert job.experiment_name == "onnx-conversions"
    assert job.display_name == "convert train-1"
    assert (Path(job.code) / "onnxport" / "__init__.py").is_file()


def test_the_config_reaches_the_job_as_an_input_file(make_job) -> None:
    config = FAST.with_overrides(onnx={"quantization": "int8", "optimize": "basic"})
    job = make_job(conversion_config=config, opset_version=17)
    arguments = _child_arguments(job)
    assert arguments.opset_version == 17
    path = Path(job._to_job().inputs[CONFIG_INPUT].path)
    assert load_conversion_config(path) == config.with_overrides(onnx={"opset_version": 17})


def test_a_config_file_is_read_and_checked_before_the_job_is_built(make_job, tmp_path) -> None:
    good = tmp_path / "conversion.yaml"
    good.write_text("onnx: {quantization: dynamic}\n")
    job = make_job(conversion_config=good)
    assert job.tags["onnxport.quantization"] == "int8"
    bad = tmp_path / "bad.yaml"
    bad.write_text("onnx: {opset: 18}\n")
    with pytest.raises(ConfigError, match=r"onnx\.opset: unknown key"):
        make_job(conversion_config=bad)


def test_a_local_calibration_file_is_refused(make_job, tmp_path) -> None:
    samples = tmp_path / "samples.txt"
    samples.write_text("one line\n")
    config = FAST.with_overrides(quantize={"calibration_file": str(samples)})
    with pytest.raises(AzureMLError, match="calibration_file"):
        make_job(conversion_config=config)


def test_the_job_carries_the_lineage_of_a_local_conversion(make_job) -> None:
    job = make_job(parent_spec_fp=SPEC_FP.upper(), parent_exec_fp=EXEC_FP)
    conv_fp = conversion_fingerprint(SPEC_FP, EXEC_FP, FAST)
    lineage = {
        "parent_training_job": "train-1",
        "parent_training_run_id": "train-1",
        "platform": "azureml",
        "backbone": "distilbert-base-uncased",
        "parent_spec_fp": SPEC_FP,
        "parent_exec_fp": EXEC_FP,
        "conv_fp": conv_fp,
    }
    assert job.tags == {
        "code.lineage.parent_training_job": "train-1",
        "code.lineage.parent_training_run_id": "train-1",
        "code.lineage.platform": "azureml",
        "code.lineage.backbone": "distilbert-base-uncased",
        "code.lineage.parent_spec_fp": SPEC_FP,
        "code.lineage.parent_exec_fp": EXEC_FP,
        "code.lineage.conv_fp": conv_fp,
        "onnxport.version": __version__,
        "onnxport.conv_fp": conv_fp,
        "onnxport.quantization": "none",
        "onnxport.optimize": "none",
        "onnxport.opset": "18",
    }
    assert json.loads(job.environment_variables[LINEAGE_ENV]) == lineage
    assert _child_arguments(job).conv_fp == conv_fp
    with pytest.raises(AzureMLError, match="both"):
        make_job(parent_spec_fp=SPEC_FP)


def test_the_built_environment_pins_the_tested_versions(make_job) -> None:
    environment = make_job().environment
    assert isinstance(environment, Environment)
    assert environment.image.startswith("mcr.microsoft.com/azureml/")
    dependencies = environment.conda_file["dependencies"]
    python = f"python={sys.version_info.major}.{sys.version_info.minor}"
    assert dependencies[:2] == [python, "pip"]
    pip = dependencies[2]["pip"]
    assert pip[0].startswith("--extra-index-url https://download.pytorch.org/whl/cpu")
    assert pip[-1] == AZUREML_MLFLOW_REQUIREMENT
    assert pip[1:-1] == runtime_requirements()


def test_runtime_requirements_are_the_pinned_run_time_packages() -> None:
    pinned = {
        line.strip()
        for line in (REPO / "constraints.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    }
    requirements = runtime_requirements()
    assert set(requirements) <= pinned
    names = {r.split("==")[0].lower() for r in requirements}
    assert {"torch", "transformers", "onnx", "onnxruntime", "onnxscript", "mlflow"} <= names
    assert not names & {"pytest", "hypothesis", "ruff", "azure-ai-ml", "azure-identity", "pip"}


def test_stage_code_replaces_only_what_it_staged(tmp_path) -> None:
    staged = stage_code(tmp_path / "code")
    assert (staged / "onnxport" / "azureml" / "job.py").is_file()
    assert not list(staged.rglob("__pycache__"))
    assert (staged / f"onnxport-{__version__}.dist-info" / "METADATA").is_file()
    assert stage_code(staged) == staged  # again, over its own copy
    foreign = tmp_path / "src"
    (foreign / "onnxport").mkdir(parents=True)
    with pytest.raises(AzureMLError, match="not staged by onnxport"):
        stage_code(foreign)
    assert (foreign / "onnxport").is_dir()


def test_code_without_onnxport_needs_an_environment_that_has_it(tmp_path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(AzureMLError, match="does not hold the onnxport package"):
        create_conversion_job(empty, training_job("t"), None, "cpu", work_dir=tmp_path)
    job = create_conversion_job(
        empty, training_job("t"), "azureml:onnxport-env:3", "cpu", work_dir=tmp_path
    )
    assert job.environment == "azureml:onnxport-env:3"


def test_azure_ml_client_side_validation_accepts_the_job(make_job) -> None:
    job = make_job()
    assert job._validate().passed
    job._to_job()._validate()  # raises when compute, environment or an input is missing


def test_azure_ml_validation_failures_are_azureml_errors(code_dir) -> None:
    with pytest.raises(AzureMLError, match=r"azure-ai-ml rejects.*Docker image"):
        create_conversion_job(code_dir, training_job("t"), Environment(), "cpu")


# ------------------------------------------------------------------------ bindings, YAML


def test_an_undeclared_input_is_refused_before_submission(make_job) -> None:
    job = make_job()
    job.command += " --calibration ${{inputs.calibration}}"
    client = FakeMLClient()
    with pytest.raises(AzureMLError) as error:
        submit_conversion_job(client, job)
    assert "${{inputs.calibration}}" in str(error.value)
    assert "inputs: checkpoint, conversion_config" in str(error.value)
    assert client.jobs.submitted == {}
    with pytest.raises(AzureMLError, match=r"inputs\.calibration"):
        write_job_yaml(job, Path("unused.yaml"))


@pytest.mark.parametrize(
    ("command", "problem"),
    [
        ("run ${{outputs.model}}", "declares no output named 'model'"),
        ("run ${{ inputs.ckpt }}", "declares no input named 'ckpt'"),
        ("run ${{input.checkpoint}}", "cannot resolve"),
    ],
)
def test_command_bindings_must_be_declared(command: str, problem: str) -> None:
    with pytest.raises(AzureMLError, match=problem):
        check_command_bindings(command, {"checkpoint": None}, {"onnx_model": None})
    check_command_bindings(
        "run ${{inputs.checkpoint}} ${{outputs.onnx_model}}", {"checkpoint": 1}, {"onnx_model": 1}
    )


def test_yaml_round_trip_gives_back_an_equal_job(make_job, tmp_path) -> None:
    job = make_job(parent_spec_fp=SPEC_FP, parent_exec_fp=EXEC_FP)
    path = write_job_yaml(job, tmp_path / "job.yaml")
    assert yaml.safe_load(path.read_text())["$schema"].endswith("commandJob.schema.json")
    loaded = load_job(path)
    assert loaded._validate().passed
    original, again = job._to_job(), loaded._to_job()
    again._validate()
    assert again.command == original.command
    assert again.compute == original.compute
    assert again.tags == original.tags
    assert again.environment_variables == original.environment_variables
    assert (again.experiment_name, again.display_name) == ("conversion", original.display_name)
    assert again.environment.image == original.environment.image
    assert again.environment.conda_file == original.environment.conda_file
    assert set(again.inputs) == set(original.inputs)
    for name, value in original.inputs.items():
        assert again.inputs[name].type == value.type
        assert _resolved(again.inputs[name].path, path.parent) == _resolved(value.path, path.parent)
    assert {n: (o.type, o.mode) for n, o in again.outputs.items()} == {
        n: (o.type, o.mode) for n, o in original.outputs.items()
    }
    assert _resolved(again.code, path.parent) == _resolved(original.code, path.parent)


def _resolved(path: str, base: Path) -> str:
    if path.startswith("azureml://"):
        return path
    return str((base / path).resolve())


# ------------------------------------------------------------- submission and validation


@pytest.mark.parametrize("status", ["Failed", "Canceled", "NotResponding"])
def test_each_failure_status_is_a_clear_error(make_job, status: str) -> None:
    client = FakeMLClient(statuses=["Queued", "Running", status])
    seen = []
    finished = submit_conversion_job(
        client, make_job(), poll_seconds=0, on_status=lambda n, s: seen.append(s)
    )
    assert finished.status == status
    assert seen == ["Queued", "Running", status]
    with pytest.raises(AzureMLError) as error:
        validate_conversion_job(finished, client)
    assert f"conversion job {finished.name} ended {status}, not Completed" in str(error.value)
    assert error.value.hint
    assert client.jobs.downloads == []


def test_a_refused_submission_is_an_error_naming_the_job(make_job) -> None:
    refused = http_error(400, "Bad Request", "UserError", "Compute cpu-cluster not found.")
    client = FakeMLClient(failures={"create_or_update": [refused]})
    with pytest.raises(AzureMLError) as error:
        submit_conversion_job(client, make_job(display_name="convert train-1"))
    assert error.value.message == (
        "Azure ML did not accept the conversion job convert train-1: (UserError) Compute "
        "cpu-cluster not found. Code: UserError Message: Compute cpu-cluster not found."
    )
    assert "compute name" in error.value.hint
    assert error.value.__cause__ is refused
    assert client.jobs.submitted == {}
    assert [kind for kind, _ in client.jobs.requests] == ["create_or_update"]


def test_waiting_after_submission_rides_out_a_failed_poll(make_job) -> None:
    client = FakeMLClient(failures={"get": [None, ServiceRequestError("Connection aborted.")]})
    finished = submit_conversion_job(client, make_job(), poll_seconds=0)
    assert finished.status == "Completed"
    assert [kind for kind, _ in client.jobs.requests] == ["create_or_update"] + ["get"] * 4


def test_waiting_stops_at_the_timeout_and_names_the_running_jobs(make_job) -> None:
    client = FakeMLClient(statuses=["Running"])
    submitted = submit_conversion_job(client, make_job(), wait=False)
    assert submitted.status == "Starting"
    with pytest.raises(AzureMLError, match=f"still running: {submitted.name} Running"):
        wait_for_jobs(client, [submitted.name], poll_seconds=0, timeout_seconds=0)


def test_a_completed_job_without_an_output_is_refused(make_job, tmp_path) -> None:
    client = FakeMLClient(output=lambda name: None)
    finished = submit_conversion_job(client, make_job(), poll_seconds=0)
    with pytest.raises(AzureMLError, match="holds no onnxport output"):
        validate_conversion_job(finished, client, tmp_path / "downloads")


def test_training_job_names_come_from_the_line_and_the_file(tmp_path) -> None:
    names_file = tmp_path / "jobs.txt"
    names_file.write_text("# nightly\ntrain-2\n\ntrain-3  # retry\ntrain-1\n")
    assert read_training_job_names(["train-1"], names_file) == ["train-1", "train-2", "train-3"]
    with pytest.raises(ConfigError, match="no training job given"):
        read_training_job_names([], None)


# ------------------------------------------------------------------------------------ CLI


def test_dry_run_writes_yaml_that_load_job_loads(cli, tmp_path) -> None:
    config = tmp_path / "conversion.yaml"
    config.write_text("onnx: {quantization: int8}\n")
    output = tmp_path / "out" / "job.yaml"
    run = cli("azureml", "submit", "--training-job", "train-9", "--compute", "cpu-cluster",
              "--config", config, "--dry-run", "--output", output)  # fmt: skip
    assert run.code == 0, run.stderr
    assert str(output) in run.stdout
    job = load_job(output)
    assert job._validate().passed
    command_job = job._to_job()
    command_job._validate()
    assert command_job.inputs[CHECKPOINT_INPUT].path == "azureml://jobs/train-9/outputs/checkpoint"
    assert command_job.compute == "cpu-cluster"
    assert command_job.tags["onnxport.quantization"] == "int8"
    config_input = output.parent / command_job.inputs[CONFIG_INPUT].path
    assert load_conversion_config(config_input).onnx.quantization.value == "int8"
    assert (output.parent / command_job.code / "onnxport" / "execution" / "__main__.py").is_file()

    several = cli("azureml", "submit", "-t", "a", "-t", "b", "--compute", "c",
                  "--dry-run", "-o", tmp_path / "many.yaml")  # fmt: skip
    assert several.code == 0, several.stderr
    for name in ("a", "b"):
        assert (
            load_job(tmp_path / f"many-{name}.yaml")
            ._to_job()
            .inputs[CHECKPOINT_INPUT]
            .path.startswith(f"azureml://jobs/{name}/")
        )


def test_submitting_needs_a_workspace(cli) -> None:
    run = cli("azureml", "submit", "--training-job", "t", "--compute", "c")
    assert run.code == 2
    assert "no workspace given" in run.stderr
    assert "--workspace-config" in run.stderr


def test_without_azure_ml_only_the_azureml_command_is_disabled(tmp_path) -> None:
    script = """
import sys
sys.modules["azure.ai.ml"] = None  # as if the azureml extra were not installed
from onnxport.cli import main
from onnxport.azureml import AzureMLNotInstalledError, build_environment
assert main(["--help"]) == 0
print("azureml exit", main(["azureml", "submit", "-t", "x", "--compute", "c", "--dry-run"]))
try:
    build_environment()
except AzureMLNotInstalledError as e:
    print("library:", e.exit_code, e.hint)
"""
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "COLUMNS": "200"},
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "convert" in done.stdout and "azureml" in done.stdout  # the help lists both
    assert "azureml exit 2" in done.stdout
    assert "the azureml commands need azure-ai-ml" in done.stderr
    assert "pip install 'onnxport[azureml]'" in done.stderr
    assert "library: 2 pip install 'onnxport[azureml]'" in done.stdout
    assert "Traceback" not in done.stderr


# ---------------------------------------------- end to end: the job's command on a "node"


@pytest.fixture(scope="session")
def node(checkpoint, code_dir, tmp_path_factory):
    """The conversion job run as an Azure ML node runs it, on a tiny checkpoint."""
    root = root_with_store(tmp_path_factory, "azureml-node")  # the workspace's store
    job = create_conversion_job(
        code_dir,
        training_job("train-distilbert"),
        None,
        "cpu-cluster",
        conversion_config=FAST,
        parent_spec_fp=SPEC_FP,
        parent_exec_fp=EXEC_FP,
        work_dir=root / "files",
    )
    return job, run_like_azureml(job, {CHECKPOINT_INPUT: checkpoint("distilbert-token")}, root)


@pytest.fixture
def damaged_output(node, tmp_path) -> Path:
    copy = tmp_path / "damaged"
    shutil.copytree(node[1].outputs[MODEL_OUTPUT], copy)
    model = copy / MODEL_SUBDIR / "model_fp32.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    return copy


@pytest.mark.slow
def test_the_job_command_converts_and_tracks_on_the_node(node) -> None:
    from mlflow.tracking import MlflowClient

    job, run = node
    assert run.returncode == 0, run.log
    published = run.outputs[MODEL_OUTPUT] / MODEL_SUBDIR
    assert verify_directory(published) == []
    assert sorted(p.name for p in run.outputs[MODEL_OUTPUT].iterdir()) == [MODEL_SUBDIR]
    manifest = read_manifest(published)
    assert manifest.onnxport_version == __version__  # the staged code ran, with its version
    assert manifest.conv_fp == job.tags["onnxport.conv_fp"]
    assert manifest.lineage["platform"] == "azureml"
    assert manifest.lineage["parent_training_run_id"] == "train-distilbert"
    assert manifest.lineage["parent_spec_fp"] == SPEC_FP
    # The job's MLflow run: the job's lineage tags, and the figures a local run logs.
    tracked = MlflowClient(run.tracking_uri).get_run(run.run_id)
    for key in ("platform", "parent_spec_fp", "parent_exec_fp", "conv_fp", "backbone"):
        assert tracked.data.tags[f"code.lineage.{key}"] == manifest.lineage[key]
    assert tracked.data.params["conv_fp"] == manifest.conv_fp
    assert tracked.data.metrics["fp32.task_agreement"] >= 0.99
    assert tracked.info.status == "FINISHED"


@pytest.mark.slow
def test_submit_wait_and_validate_a_completed_job(node, make_job, tmp_path) -> None:
    output = node[1].outputs[MODEL_OUTPUT]
    client = FakeMLClient(statuses=["Queued", "Running", "Completed"], output=lambda n: output)
    finished = submit_conversion_job(client, make_job(), poll_seconds=0)
    assert finished.status == "Completed"
    directory = validate_conversion_job(finished, client, tmp_path / "downloads")
    assert directory == tmp_path / "downloads" / finished.name / "named-outputs" / MODEL_OUTPUT / (
        MODEL_SUBDIR
    )
    assert (directory / MANIFEST_FILENAME).is_file()
    assert verify_directory(directory) == []
    # Validating again replaces the earlier download.
    assert validate_conversion_job(finished, client, tmp_path / "downloads") == directory


@pytest.mark.slow
def test_a_download_whose_checksum_does_not_match_is_refused(
    make_job, damaged_output, tmp_path
) -> None:
    client = FakeMLClient(output=lambda name: damaged_output)
    finished = submit_conversion_job(client, make_job(), poll_seconds=0)
    with pytest.raises(AzureMLError) as error:
        validate_conversion_job(finished, client, tmp_path / "downloads")
    assert "is damaged: model_fp32.onnx does not match its checksum" in str(error.value)


@pytest.mark.slow
def test_an_output_that_failed_validation_is_refused(node, make_job, tmp_path) -> None:
    output = tmp_path / "failed"
    shutil.copytree(node[1].outputs[MODEL_OUTPUT], output)
    manifest_path = output / MODEL_SUBDIR / MANIFEST_FILENAME
    manifest = json.loads(manifest_path.read_text())
    manifest["outputs"][0]["validation"]["passed"] = False
    manifest_path.write_text(json.dumps(manifest))
    client = FakeMLClient(output=lambda name: output)
    finished = submit_conversion_job(client, make_job(), poll_seconds=0)
    with pytest.raises(AzureMLError, match=r"published model_fp32\.onnx without passing"):
        validate_conversion_job(finished, client, tmp_path / "downloads")


@pytest.mark.slow
@pytest.mark.parametrize("third", ["Completed", "Failed"])
def test_scale_out_one_job_per_training_job_and_a_summary(
    node, cli, monkeypatch, tmp_path, third: str
) -> None:
    names = ["train-a", "train-b", "train-c"]
    output = node[1].outputs[MODEL_OUTPUT]
    client = FakeMLClient(
        [training_job(n) for n in names],
        statuses_by_job={"onnxport_conversion_3": ["Queued", "Running", "Running", third]},
        output=lambda name: output,
    )
    clients = serve_jobs(monkeypatch, client)
    workspace = write_workspace_config(tmp_path / "config.json")
    jobs_file = tmp_path / "jobs.txt"
    jobs_file.write_text("train-b\ntrain-c\n")
    run = cli("azureml", "submit", "--training-job", "train-a", "--training-jobs-file", jobs_file,
              "--compute", "cpu-cluster", "--workspace-config", workspace,
              "--poll-seconds", "0", "--download-dir", tmp_path / "downloads")  # fmt: skip
    assert [c.workspace_name for c in clients] == ["ws-test"]  # one client, from the config
    assert len(client.jobs.submitted) == 3
    inputs = [job.inputs[CHECKPOINT_INPUT].path for job in client.jobs.submitted.values()]
    assert inputs == [f"azureml://jobs/{n}/outputs/checkpoint" for n in names]
    assert "Azure ML conversion jobs" in run.stdout
    for name in names:
        assert name in run.stdout
    rows = [line for line in run.stdout.splitlines() if "onnxport_conversion_" in line]
    assert len(rows) == 3
    if third == "Completed":
        assert run.code == 0, run.stderr
        assert all("Completed" in row for row in rows)
        assert sorted(p.name for p in (tmp_path / "downloads").iterdir()) == sorted(
            client.jobs.submitted
        )
    else:
        assert run.code == 1
        assert "Failed" in rows[2] and all("Completed" in row for row in rows[:2])
        assert "onnxport_conversion_3 ended Failed" in run.stderr
        assert "1 of 3 conversion job(s) published no validated model" in run.stderr


# --------------------------------------------------- script_path: the platform's CLI script

PLATFORM_ENVIRONMENT = Environment(
    image="mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu22.04:latest",
    conda_file={"name": "platform", "dependencies": ["python=3.11", "pip"]},
)


def test_the_platforms_cli_script_form_builds_the_directory_forms_job(tmp_path) -> None:
    """The platform passes its CLI script as `script_path` (its README's form); the job is
    the one the code directory that holds the package gives."""
    training = training_job("train-platform")
    jobs = {}
    for form, script_path in (
        ("script", REPO / "src" / "onnxport" / "cli.py"),
        ("directory", REPO / "src"),
    ):
        jobs[form] = create_conversion_job(
            script_path=script_path,
            training_job=training,
            environment=PLATFORM_ENVIRONMENT,
            compute_cluster="cpu-cluster",
            work_dir=tmp_path / "job-files",
        )
    script, directory = jobs["script"], jobs["directory"]
    assert Path(script.code) == REPO / "src"
    assert script.code == directory.code
    assert script.command == directory.command
    assert script.command.startswith("python -m onnxport.execution ")
    assert {n: (i.type, i.path) for n, i in script.inputs.items()} == {
        n: (i.type, i.path) for n, i in directory.inputs.items()
    }
    assert {n: (o.type, o.mode) for n, o in script.outputs.items()} == {
        n: (o.type, o.mode) for n, o in directory.outputs.items()
    }
    assert (
        script.inputs[CHECKPOINT_INPUT].path == "azureml://jobs/train-platform/outputs/checkpoint"
    )
    for form, job in jobs.items():
        path = write_job_yaml(job, tmp_path / f"{form}.yaml")
        loaded = load_job(path)
        assert loaded._validate().passed, form
        loaded._to_job()._validate()
        assert _resolved(loaded.code, path.parent) == str(REPO / "src")


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("missing", r"code directory or CLI script .*cli\.py \(script_path\) does not exist"),
        ("not-an-entry-point", r"pipeline\.py is a file, but not onnxport's CLI or execution"),
        ("not-in-the-package", r"README\.md is a file, but not onnxport's CLI or execution"),
    ],
)
def test_a_script_path_that_is_not_the_cli_is_refused_with_its_reason(
    tmp_path, name: str, message: str
) -> None:
    script_path = {
        "missing": tmp_path / "src" / "onnxport" / "cli.py",
        "not-an-entry-point": REPO / "src" / "onnxport" / "pipeline.py",
        "not-in-the-package": REPO / "README.md",
    }[name]
    with pytest.raises(AzureMLError, match=message) as raised:
        create_conversion_job(
            script_path, training_job("t"), PLATFORM_ENVIRONMENT, "cpu", work_dir=tmp_path
        )
    assert "\n" not in str(raised.value)
    assert raised.value.exit_code == 2
