"""Run the conversion as an Azure Machine Learning job, fed by a training job's checkpoint.

`create_conversion_job` builds a command job that runs the same child process as a local
conversion (`python -m onnxport.execution`) on the training job's `checkpoint` output and
publishes into the job's `onnx_model` output; `submit_conversion_job` submits and polls it;
`validate_conversion_job` downloads that output and checks it as a local one is checked.

azure-ai-ml is an optional dependency (`pip install 'onnxport[azureml]'`), imported only
inside these functions: without it the rest of onnxport works.
"""

from __future__ import annotations

import atexit
import hashlib
import importlib.util
import json
import logging
import os
import re
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

import onnxport
from onnxport import __version__
from onnxport.config import ConversionConfig, load_conversion_config
from onnxport.errors import EXIT_BAD_INPUT, AzureMLError
from onnxport.execution import LINEAGE_ENV, ChildArguments
from onnxport.fingerprints import check_fingerprint, conversion_fingerprint
from onnxport.manifest import MANIFEST_FILENAME, read_manifest, verify_directory
from onnxport.tracking import lineage_tags

if TYPE_CHECKING:
    from azure.ai.ml import Input, MLClient
    from azure.ai.ml.entities import Command, Environment, Job

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'onnxport[azureml]'"
CHECKPOINT_OUTPUT = "checkpoint"
"""The training job's output that holds the Hugging Face checkpoint directory."""
CHECKPOINT_INPUT = "checkpoint"
CONFIG_INPUT = "conversion_config"
MODEL_OUTPUT = "onnx_model"
MODEL_SUBDIR = "onnx"
"""Publishing renames a finished sibling into place, so it works below the output's root."""
DEFAULT_EXPERIMENT_NAME = "conversion"
COMPLETED = "Completed"
# azure-ai-ml's RunHistoryConstants.TERMINAL_STATUSES: a job in these states never moves on.
TERMINAL_STATUSES = ("Completed", "Failed", "Canceled", "NotResponding", "Paused")
DEFAULT_POLL_SECONDS = 30.0
GET_ATTEMPTS = 3
DEFAULT_IMAGE = "mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu22.04:latest"
"""Azure ML's standard CPU base image; the conda file adds onnxport's pinned packages."""
TORCH_CPU_INDEX_URL = "https://download.pytorch.org/whl/cpu"
AZUREML_MLFLOW_REQUIREMENT = "azureml-mlflow==1.60.0"
"""MLflow's plugin for the workspace tracking server: the newest release that pip resolves
together with constraints.txt. Only the remote job needs it."""
JOB_YAML_SCHEMA = "https://azuremlschemas.azureedge.net/latest/commandJob.schema.json"
_REMOTE_PREFIXES = ("azureml:", "http://", "https://", "wasb://", "wasbs://", "abfs://")
_REMOTE_PREFIXES += ("abfss://", "adl://", "git+", "file:")
_BINDING = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")
_INPUT_OR_OUTPUT = re.compile(r"(inputs|outputs)\.([A-Za-z0-9_.-]+)")
_STAGED_MARKER = ".onnxport-staged"
# Installer tools come with the environment's pip; pip freeze (so constraints.txt) omits them.
_INSTALLER_TOOLS = frozenset({"pip", "setuptools", "wheel"})
_STATUS_HINTS = {
    "Failed": "read its log: az ml job stream --name {name} (or open it in Azure ML studio)",
    "Canceled": "it was canceled before it finished; submit it again",
    "NotResponding": "its compute stopped answering; check the cluster, then submit it again",
    "Paused": "resume it in Azure ML studio, or submit it again",
}


class AzureMLNotInstalledError(AzureMLError):
    """azure-ai-ml (the `azureml` extra) is missing or cannot be imported."""

    exit_code = EXIT_BAD_INPUT


def azure_ml_available() -> bool:
    """Whether azure-ai-ml is installed, without paying for its import (several seconds)."""
    try:
        return importlib.util.find_spec("azure.ai.ml") is not None
    except (ImportError, ValueError):
        return False


def require_azure_ml():
    """The `azure.ai.ml` module, or an `AzureMLNotInstalledError` with the install hint."""
    try:
        import azure.ai.ml
    except ImportError as e:
        raise AzureMLNotInstalledError(
            f"Azure Machine Learning support needs azure-ai-ml, which cannot be imported ({e})",
            hint=INSTALL_HINT,
        ) from e
    return azure.ai.ml


def _one_line(error: BaseException, limit: int = 300) -> str:
    return " ".join(str(error).split())[:limit] or type(error).__name__


# ------------------------------------------------------------------------------ the input


def _job_output_input(job_name: str, output_name: str) -> Input:
    aml = require_azure_ml()
    return aml.Input(type="uri_folder", path=f"azureml://jobs/{job_name}/outputs/{output_name}")


def get_checkpoint_output_from_training_job(
    training_job: Job, output_name: str = CHECKPOINT_OUTPUT
) -> Input:
    """The training job's `output_name` output as a `uri_folder` input for the conversion.

    Args:
        training_job: the job as the service returns it (`ml_client.jobs.get(name)`); it must
            have Completed.
        output_name: the output that holds the checkpoint directory.
    """
    name = getattr(training_job, "name", None)
    if not name:
        raise AzureMLError(
            "the training job has no name, so its outputs cannot be addressed",
            hint="pass the job as the service returns it: ml_client.jobs.get(NAME)",
        )
    status = getattr(training_job, "status", None) or "in an unknown state"
    outputs = sorted((getattr(training_job, "outputs", None) or {}).keys())
    available = ", ".join(outputs) or "none"
    if status != COMPLETED:
        raise AzureMLError(
            f"training job {name} is {status}, not Completed, so its {output_name!r} output is "
            f"not final (its outputs: {available})",
            hint=f"wait until it completes (az ml job show --name {name}), then convert",
        )
    if output_name not in outputs:
        raise AzureMLError(
            f"training job {name} ({status}) has no output named {output_name!r}; "
            f"its outputs: {available}",
            hint="name the output that holds the checkpoint (output_name=, --checkpoint-output)",
        )
    return _job_output_input(name, output_name)


# -------------------------------------------------------------------------- the environment


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _runtime_distributions(root: str = "onnxport") -> dict[str, str]:
    """Every installed distribution `root` needs at run time (no extras): key -> name."""
    from packaging.requirements import Requirement

    found: dict[str, str] = {}
    visited: set[tuple[str, str]] = set()
    pending = [(root, "")]
    while pending:
        name, extra = pending.pop()
        if (_normalize(name), extra) in visited:
            continue
        visited.add((_normalize(name), extra))
        try:
            distribution = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # a dependency of another platform or Python, not installed here
        if name != root and _normalize(name) not in _INSTALLER_TOOLS:
            found[_normalize(name)] = distribution.metadata["Name"]
        for spec in distribution.requires or []:
            requirement = Requirement(spec)
            if requirement.marker and not requirement.marker.evaluate({"extra": extra}):
                continue
            pending.append((requirement.name, ""))
            pending.extend((requirement.name, e) for e in requirement.extras)
    return found


def _source_constraints() -> Path | None:
    """constraints.txt of the source checkout onnxport runs from, if it does."""
    candidate = Path(onnxport.__file__).resolve().parents[2] / "constraints.txt"
    return candidate if candidate.is_file() else None


def _read_constraints(path: Path) -> dict[str, str]:
    pins = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line and not line.startswith("-"):
            name, version = line.split("==", 1)
            pins[_normalize(name.strip())] = version.strip()
    return pins


def runtime_requirements(constraints_file: Path | None = None) -> list[str]:
    """`name==version` for every package onnxport needs at run time, as tested.

    Args:
        constraints_file: the pins; None uses the source checkout's `constraints.txt`, or the
            installed versions when onnxport runs from an installed wheel.
    """
    try:
        metadata.distribution("onnxport")
    except metadata.PackageNotFoundError as e:
        raise AzureMLError(
            "onnxport's own package metadata is missing, so its requirements are unknown",
            hint="install onnxport (pip install -e .) before building an environment",
        ) from e
    distributions = _runtime_distributions()
    constraints = constraints_file or _source_constraints()
    pins = _read_constraints(constraints) if constraints else {}
    requirements = []
    for key, name in sorted(distributions.items()):
        version = pins.get(key)
        if version is None:
            version = metadata.version(name)
            if constraints:
                logger.warning("%s is not pinned in %s; using %s", name, constraints, version)
        requirements.append(f"{name}=={version}")
    return requirements


def conda_specification(
    requirements: Sequence[str],
    *,
    python_version: str | None = None,
    torch_index_url: str | None = TORCH_CPU_INDEX_URL,
) -> dict[str, Any]:
    """A conda environment file (as a dict) that pip-installs `requirements`."""
    python_version = python_version or f"{sys.version_info.major}.{sys.version_info.minor}"
    pip = [f"--extra-index-url {torch_index_url}"] if torch_index_url else []
    pip += [*requirements, AZUREML_MLFLOW_REQUIREMENT]
    return {
        "name": "onnxport",
        "channels": ["conda-forge"],
        "dependencies": [f"python={python_version}", "pip", {"pip": pip}],
    }


def build_environment(
    *,
    image: str = DEFAULT_IMAGE,
    constraints_file: Path | None = None,
    torch_index_url: str | None = TORCH_CPU_INDEX_URL,
) -> Environment:
    """An Azure ML environment with onnxport's run-time packages at the tested versions.

    Anonymous (no name), so Azure ML reuses the image it built for the same specification.

    Args:
        image: the base Docker image.
        constraints_file: the pins (see `runtime_requirements`).
        torch_index_url: an extra package index for torch; the default takes the CPU build,
            None takes PyPI's (CUDA) build.
    """
    aml = require_azure_ml()
    specification = conda_specification(
        runtime_requirements(constraints_file), torch_index_url=torch_index_url
    )
    return aml.entities.Environment(
        image=image,
        conda_file=specification,
        description=f"onnxport {__version__} run time, pinned as tested",
    )


def stage_code(destination: Path) -> Path:
    """Copy the onnxport package into `destination`, to upload as a job's code directory.

    A version record goes with it, so that the remote manifest names the version that ran.
    """
    destination = Path(destination).absolute()
    package = Path(onnxport.__file__).resolve().parent
    target = destination / "onnxport"
    if target.exists():
        if not (destination / _STAGED_MARKER).is_file():
            raise AzureMLError(
                f"{target} exists and was not staged by onnxport; refusing to replace it",
                hint="stage the code into a new or empty directory",
            )
        shutil.rmtree(target)
        for old in destination.glob("onnxport-*.dist-info"):
            shutil.rmtree(old)
    destination.mkdir(parents=True, exist_ok=True)
    (destination / _STAGED_MARKER).write_text("staged by onnxport.azureml.stage_code\n")
    shutil.copytree(package, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    dist_info = destination / f"onnxport-{__version__}.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: onnxport\nVersion: {__version__}\n", encoding="utf-8"
    )
    return destination


# --------------------------------------------------------------------------------- the job


def _binding(kind: str, name: str) -> str:
    return "${{" + f"{kind}.{name}" + "}}"


def check_command_bindings(command: str, inputs: Mapping, outputs: Mapping) -> None:
    """Every `${{inputs.x}}` and `${{outputs.y}}` in `command` must be declared.

    azure-ai-ml checks only some of them, and only at submission; the service would run the
    command with the placeholder left in.
    """
    for match in _BINDING.finditer(command):
        reference = match.group(1)
        parsed = _INPUT_OR_OUTPUT.fullmatch(reference)
        if parsed is None:
            raise AzureMLError(
                f"the command uses {match.group(0)}, which a command job cannot resolve",
                hint="write ${{inputs.NAME}} or ${{outputs.NAME}}",
            )
        kind, name = parsed.groups()
        declared = inputs if kind == "inputs" else outputs
        if name not in (declared or {}):
            listed = ", ".join(sorted(declared or {})) or "none"
            raise AzureMLError(
                f"the command uses {_binding(kind, name)} but the job declares no "
                f"{kind[:-1]} named {name!r} (its {kind}: {listed})",
                hint=f"declare it in the job's {kind}, or take it out of the command",
            )


def _resolve_config(
    conversion_config: ConversionConfig | Path | None, opset_version: int | None
) -> ConversionConfig:
    if conversion_config is None:
        config = ConversionConfig()
    elif isinstance(conversion_config, ConversionConfig):
        config = conversion_config
    else:
        config = load_conversion_config(Path(conversion_config))
    if opset_version is not None:
        config = config.with_overrides(onnx={"opset_version": opset_version})
    if config.quantize.calibration_file is not None:
        raise AzureMLError(
            f"quantize.calibration_file ({config.quantize.calibration_file}) is a local file "
            "that the Azure ML job cannot read",
            hint="leave it out to calibrate on the built-in samples, or convert locally",
        )
    return config


def _owned_temp_dir() -> Path:
    path = Path(tempfile.mkdtemp(prefix="onnxport-azureml-"))
    # The SDK uploads the job's local files when it is submitted, in this process.
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def _write_config(config: ConversionConfig, work_dir: Path) -> Path:
    text = yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    path = Path(work_dir).absolute() / f"conversion-{digest}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _sdk_validate(job: Command) -> None:
    """azure-ai-ml's own client-side checks, as a clear error instead of at submission."""
    from azure.ai.ml.exceptions import ValidationException

    result = job._validate()
    problems = [f"{path}: {message}" for path, message in result.error_messages.items()]
    try:
        job._to_job()._validate()
    except ValidationException as e:
        problems.append(_one_line(e))
    if problems:
        raise AzureMLError("azure-ai-ml rejects the conversion job: " + "; ".join(problems))


def create_conversion_job(
    script_path: Path,
    training_job: Job | str,
    environment: Environment | str | None,
    compute_cluster: str,
    *,
    conversion_config: ConversionConfig | Path | None = None,
    parent_spec_fp: str | None = None,
    parent_exec_fp: str | None = None,
    experiment_name: str = DEFAULT_EXPERIMENT_NAME,
    display_name: str | None = None,
    opset_version: int | None = None,
    backbone: str | None = None,
    checkpoint_output: str = CHECKPOINT_OUTPUT,
    work_dir: Path | None = None,
) -> Command:
    """An Azure ML command job that converts a training job's checkpoint.

    The job runs `python -m onnxport.execution` on `${{inputs.checkpoint}}` and publishes a
    complete onnxport directory into `${{outputs.onnx_model}}/onnx`. Its tags (the MLflow run
    tags in the workspace) carry the same lineage as a local conversion, platform `azureml`.

    Args:
        script_path: the code directory uploaded with the job; it must hold the onnxport
            package (see `stage_code`) unless `environment` has onnxport installed.
        training_job: the Completed training job, as `ml_client.jobs.get` returns it; or its
            name alone, trusted to have Completed with a `checkpoint_output` output.
        environment: an Azure ML environment (object or `azureml:name:version`); None builds
            one from onnxport's pinned requirements (`build_environment`).
        compute_cluster: the compute target's name.
        conversion_config: the settings (a `ConversionConfig` or a conversion.yaml path);
            None uses the defaults. They reach the job as an input file.
        parent_spec_fp, parent_exec_fp: the training run's fingerprints (both or neither);
            with them the job also records the conversion's `conv_fp`.
        experiment_name, display_name: how the job appears in the workspace.
        opset_version: overrides the config's opset.
        backbone: recorded as lineage; default the training job's `backbone` tag.
        checkpoint_output: the training job's output that holds the checkpoint.
        work_dir: where the config input file is written; None: a temporary directory that
            lives as long as this process (the SDK uploads it at submission).
    """
    aml = require_azure_ml()
    script_path = Path(script_path).absolute()
    if not script_path.is_dir():
        raise AzureMLError(
            f"the code directory {script_path} does not exist",
            hint="pass the directory to upload with the job (see onnxport.azureml.stage_code)",
        )
    if environment is None:
        if not (script_path / "onnxport" / "__init__.py").is_file():
            raise AzureMLError(
                f"the code directory {script_path} does not hold the onnxport package, and the "
                "environment built for the job does not install it",
                hint="stage it with onnxport.azureml.stage_code(DIR), or pass an environment",
            )
        environment = build_environment()
    if not compute_cluster or not compute_cluster.strip():
        raise AzureMLError("no compute cluster given", hint="name the cluster (--compute)")

    if isinstance(training_job, str):
        training_name, training_tags = training_job, {}
        checkpoint = _job_output_input(training_name, checkpoint_output)
    else:
        checkpoint = get_checkpoint_output_from_training_job(training_job, checkpoint_output)
        training_name, training_tags = training_job.name, dict(training_job.tags or {})

    config = _resolve_config(conversion_config, opset_version)
    if (parent_spec_fp is None) != (parent_exec_fp is None):
        raise AzureMLError("give both parent_spec_fp and parent_exec_fp, or neither")
    backbone = backbone or training_tags.get("backbone") or "unknown"
    lineage = {
        "parent_training_job": training_name,
        # An Azure ML job's name is its MLflow run id.
        "parent_training_run_id": training_name,
        "platform": "azureml",
        "backbone": backbone,
    }
    conv_fp = None
    if parent_spec_fp is not None and parent_exec_fp is not None:
        spec_fp = check_fingerprint(parent_spec_fp, "parent_spec_fp")
        exec_fp = check_fingerprint(parent_exec_fp, "parent_exec_fp")
        conv_fp = conversion_fingerprint(spec_fp, exec_fp, config)
        lineage.update(parent_spec_fp=spec_fp, parent_exec_fp=exec_fp, conv_fp=conv_fp)
    tags = {
        **lineage_tags(lineage),
        "onnxport.version": __version__,
        "onnxport.quantization": config.onnx.quantization.value,
        "onnxport.optimize": config.onnx.optimize.value,
        "onnxport.opset": str(config.onnx.opset_version),
    }
    if conv_fp:
        tags["onnxport.conv_fp"] = conv_fp

    child = ChildArguments(
        checkpoint_path=Path(_binding("inputs", CHECKPOINT_INPUT)),
        config_dir=Path(_binding("inputs", CONFIG_INPUT)),
        backbone=backbone,
        output_dir=Path(_binding("outputs", MODEL_OUTPUT)) / MODEL_SUBDIR,
        opset_version=config.onnx.opset_version,
        run_smoke_test=config.onnx.run_smoke_test,
        conv_fp=conv_fp,
    )
    config_file = _write_config(config, work_dir or _owned_temp_dir())
    job = aml.command(
        command="python -m onnxport.execution " + shlex.join(child.argv()),
        code=str(script_path),
        inputs={
            CHECKPOINT_INPUT: checkpoint,
            CONFIG_INPUT: aml.Input(type="uri_file", path=str(config_file)),
        },
        # Written on the node's disk and uploaded at the end: the atomic rename of the
        # published directory stays a local rename.
        outputs={MODEL_OUTPUT: aml.Output(type="uri_folder", mode="upload")},
        environment=environment,
        environment_variables={
            LINEAGE_ENV: json.dumps(lineage, sort_keys=True),
            "HF_HUB_OFFLINE": "1",
            "MLFLOW_DISABLE_TELEMETRY": "true",
        },
        compute=compute_cluster,
        experiment_name=experiment_name,
        display_name=display_name or f"onnxport-{training_name}",
        description=f"onnxport {__version__}: ONNX conversion of {training_name}'s checkpoint",
        tags=tags,
    )
    check_command_bindings(job.command, job.inputs, job.outputs)
    _sdk_validate(job)
    return job


def _is_local(path: Any) -> bool:
    return isinstance(path, (str, os.PathLike)) and not str(path).startswith(_REMOTE_PREFIXES)


def _portable(path: str | os.PathLike, base: Path) -> str:
    absolute = Path(path).absolute()
    try:
        return "./" + absolute.relative_to(base).as_posix()
    except ValueError:
        return absolute.as_posix()


def write_job_yaml(job: Command, path: Path) -> Path:
    """Write `job` as the YAML that `az ml job create -f` and `azure.ai.ml.load_job` accept.

    Local files (the code directory, the config input) are written relative to the YAML's
    directory when they lie below it, so the YAML and its files can move together.
    """
    check_command_bindings(job.command, job.inputs, job.outputs)
    path = Path(path).absolute()
    command_job = job._to_job()
    # The SDK dumps local paths as `azureml:<path>`; the loader reads them back, people not.
    data = json.loads(json.dumps(command_job._to_dict()))
    if _is_local(command_job.code):
        data["code"] = _portable(command_job.code, path.parent)
    for name, value in (command_job.inputs or {}).items():
        if _is_local(getattr(value, "path", None)):
            data["inputs"][name]["path"] = _portable(value.path, path.parent)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        yaml.safe_dump({"$schema": JOB_YAML_SCHEMA, **data}, sort_keys=False), encoding="utf-8"
    )
    return path


# ------------------------------------------------------------------------ the service side


def _get_job(ml_client: MLClient, name: str, poll_seconds: float) -> Job:
    for attempt in range(GET_ATTEMPTS):
        try:
            return ml_client.jobs.get(name)
        except Exception as e:  # the SDK raises many types for one failed request
            if attempt == GET_ATTEMPTS - 1:
                raise AzureMLError(
                    f"cannot read the state of job {name}: {_one_line(e)}",
                    hint="check the workspace and your access (az login); the job is unaffected",
                ) from e
            logger.warning("reading job %s failed (%s); retrying", name, _one_line(e, 120))
            time.sleep(poll_seconds)
    raise AssertionError("unreachable")


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
            f"Azure ML did not accept the conversion job {job.display_name}: {_one_line(e)}",
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
    temporary directory, left for the caller) and checks it: a manifest, every checksum
    matching, and validation passed for every published model.
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
        ml_client.jobs.download(name, output_name=MODEL_OUTPUT, download_path=str(target))
    except Exception as e:  # the SDK raises many types for one failed download
        raise AzureMLError(
            f"cannot download the {MODEL_OUTPUT} output of conversion job {name}: {_one_line(e)}",
            hint="check your access to the workspace's datastore, then validate again",
        ) from e
    directory = _find_output_dir(target, name)
    problems = verify_directory(directory)
    if problems:
        raise AzureMLError(
            f"the {MODEL_OUTPUT} output of conversion job {name} is damaged: "
            + "; ".join(problems),
            hint="download it again; if it stays damaged, convert again",
        )
    manifest = read_manifest(directory)
    published = manifest.published_outputs()
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
