"""The conversion job: a command job that runs `python -m onnxport.execution` on a training
job's checkpoint output, its bindings checked, and its YAML for `az ml job create -f`."""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import os
import re
import shlex
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from onnxport import __version__
from onnxport.azureml.environment import build_environment
from onnxport.azureml.sdk import COMPLETED, require_azure_ml
from onnxport.errors import AzureMLError, AzureMLInputError, one_line
from onnxport.execution import LINEAGE_ENV, ChildArguments
from onnxport.request.config import ConversionConfig, load_conversion_config
from onnxport.request.fingerprints import check_fingerprint, conversion_fingerprint
from onnxport.request.lineage import azureml_lineage, run_tags

if TYPE_CHECKING:
    from azure.ai.ml import Input
    from azure.ai.ml.entities import Command, Environment, Job


logger = logging.getLogger(__name__)

CHECKPOINT_OUTPUT = "checkpoint"
"""The training job's output that holds the Hugging Face checkpoint directory."""
CHECKPOINT_INPUT = "checkpoint"
CONFIG_INPUT = "conversion_config"
MODEL_SUBDIR = "onnx"
"""Publishing renames a finished sibling into place, so it works below the output's root."""
MODEL_OUTPUT = "onnx_model"
"""The conversion job's output that holds the published directory."""
DEFAULT_EXPERIMENT_NAME = "conversion"
JOB_YAML_SCHEMA = "https://azuremlschemas.azureedge.net/latest/commandJob.schema.json"
ENTRY_POINTS = ("cli.py", "cli/__main__.py", "execution.py", "execution/__main__.py")
"""Files of the onnxport package that `script_path` may name: the CLI the platform passes
(and the conversion child the job's command runs), in the flat and the package layout."""
_REMOTE_PREFIXES = ("azureml:", "http://", "https://", "wasb://", "wasbs://", "abfs://")
_REMOTE_PREFIXES += ("abfss://", "adl://", "git+", "file:")
_BINDING = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")
_INPUT_OR_OUTPUT = re.compile(r"(inputs|outputs)\.([A-Za-z0-9_.-]+)")


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
        raise AzureMLInputError(
            "the training job has no name, so its outputs cannot be addressed",
            hint="pass the job as the service returns it: ml_client.jobs.get(NAME)",
        )
    status = getattr(training_job, "status", None) or "in an unknown state"
    outputs = sorted((getattr(training_job, "outputs", None) or {}).keys())
    available = ", ".join(outputs) or "none"
    if status != COMPLETED:
        raise AzureMLInputError(
            f"training job {name} is {status}, not Completed, so its {output_name!r} output is "
            f"not final (its outputs: {available})",
            hint=f"wait until it completes (az ml job show --name {name}), then convert",
        )
    if output_name not in outputs:
        raise AzureMLInputError(
            f"training job {name} ({status}) has no output named {output_name!r}; "
            f"its outputs: {available}",
            hint="name the output that holds the checkpoint (output_name=, --checkpoint-output)",
        )
    return _job_output_input(name, output_name)


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
        raise AzureMLInputError(
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


def code_directory(script_path: Path) -> Path:
    """The directory uploaded as a job's code: `script_path` itself when it is a directory;
    for onnxport's CLI or execution entry point (the platform passes its CLI script), the
    directory that holds the onnxport package, so that `python -m onnxport.execution` runs."""
    path = Path(script_path).absolute()
    if not path.exists():
        raise AzureMLInputError(
            f"the code directory or CLI script {path} (script_path) does not exist",
            hint="pass onnxport's CLI script (src/onnxport/cli.py) or a code directory "
            "(see onnxport.azureml.stage_code)",
        )
    if path.is_dir():
        return path
    package = next(
        (p for p in path.parents if p.name == "onnxport" and (p / "__init__.py").is_file()), None
    )
    if package is None or path.relative_to(package).as_posix() not in ENTRY_POINTS:
        raise AzureMLInputError(
            f"script_path {path} is a file, but not onnxport's CLI or execution entry point "
            f"({', '.join('onnxport/' + e for e in ENTRY_POINTS)})",
            hint="pass src/onnxport/cli.py, or the directory to upload with the job",
        )
    if package.parent.name in ("site-packages", "dist-packages"):
        raise AzureMLInputError(
            f"script_path {path} belongs to an installed onnxport: its code directory would be "
            f"{package.parent}, every installed package",
            hint="stage the code with onnxport.azureml.stage_code(DIR) and pass DIR",
        )
    return package.parent


def _sdk_validate(job: Command) -> None:
    """azure-ai-ml's own client-side checks, as a clear error instead of at submission."""
    from azure.ai.ml.exceptions import MlException

    result = job._validate()
    problems = [f"{path}: {message}" for path, message in result.error_messages.items()]
    try:
        job._to_job()._validate()
    except MlException as e:  # ValidationException and the environment's own checks
        problems.append(one_line(e))
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
        script_path: onnxport's CLI script, as the platform passes it
            (`Path("src/onnxport/cli.py")`): the directory that holds the onnxport package
            is uploaded. Or the code directory to upload itself, which must hold the
            onnxport package (see `stage_code`) unless `environment` has onnxport installed.
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
    code = code_directory(script_path)
    if environment is None:
        if not (code / "onnxport" / "__init__.py").is_file():
            raise AzureMLInputError(
                f"the code directory {code} does not hold the onnxport package, and the "
                "environment built for the job does not install it",
                hint="stage it with onnxport.azureml.stage_code(DIR), or pass an environment",
            )
        environment = build_environment()
    if not compute_cluster or not compute_cluster.strip():
        raise AzureMLInputError("no compute cluster given", hint="name the cluster (--compute)")

    if isinstance(training_job, str):
        training_name, training_tags = training_job, {}
        checkpoint = _job_output_input(training_name, checkpoint_output)
    else:
        checkpoint = get_checkpoint_output_from_training_job(training_job, checkpoint_output)
        training_name, training_tags = training_job.name, dict(training_job.tags or {})

    config = _resolve_config(conversion_config, opset_version)
    if (parent_spec_fp is None) != (parent_exec_fp is None):
        raise AzureMLInputError("give both parent_spec_fp and parent_exec_fp, or neither")
    backbone = backbone or training_tags.get("backbone") or "unknown"
    spec_fp = exec_fp = conv_fp = None
    if parent_spec_fp is not None and parent_exec_fp is not None:
        spec_fp = check_fingerprint(parent_spec_fp, "parent_spec_fp")
        exec_fp = check_fingerprint(parent_exec_fp, "parent_exec_fp")
        conv_fp = conversion_fingerprint(spec_fp, exec_fp, config)
    lineage = azureml_lineage(
        training_name,
        backbone=backbone,
        parent_spec_fp=spec_fp,
        parent_exec_fp=exec_fp,
        conv_fp=conv_fp,
    )
    tags = run_tags(lineage, config, version=__version__)

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
        code=str(code),
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
