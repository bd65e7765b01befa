"""The lineage that ties a conversion to the training run it converts, and the MLflow run tags
made of it, built once for both ways a conversion starts: `execute_conversion` on a training
output directory (`local_lineage`) and an Azure ML job fed by a training job
(`azureml_lineage`).

The lineage goes to the conversion child, which records it in the manifest; the tags
(`run_tags`) carry it as `code.lineage.<key>` beside onnxport's own `onnxport.*` tags. A name
that looks like a secret is never made a tag.
"""

from __future__ import annotations

from collections.abc import Mapping

from onnxport.request.config import ConversionConfig
from onnxport.request.paths import ParentTrainingOutput

LINEAGE_PREFIX = "code.lineage."
AZUREML_PLATFORM = "azureml"
# Values never recorded, whatever environment or config they came from.
_SECRET_WORDS = ("token", "secret", "password", "key", "connection_string", "sas", "credential")


def is_secret(name: str) -> bool:
    lowered = name.lower()
    return any(word in lowered for word in _SECRET_WORDS)


def lineage_tags(lineage: Mapping[str, str]) -> dict[str, str]:
    """The lineage as `code.lineage.<key>` tags, secrets left out."""
    return {f"{LINEAGE_PREFIX}{k}": str(v) for k, v in lineage.items() if not is_secret(k)}


def local_lineage(
    parent: ParentTrainingOutput,
    *,
    parent_spec_fp: str,
    parent_exec_fp: str,
    conv_fp: str,
    platform: str,
    parent_training_run_id: str | None = None,
) -> dict[str, str]:
    """The lineage of a conversion of the training output `parent` (checked fingerprints)."""
    lineage = {
        "parent_spec_fp": parent_spec_fp,
        "parent_exec_fp": parent_exec_fp,
        "parent_training_id": parent.training_id,
        "parent_training_dir": str(parent.path),
        "conv_fp": conv_fp,
        "platform": platform,
        "backbone": parent.backbone,
    }
    if parent_training_run_id:
        lineage["parent_training_run_id"] = parent_training_run_id
    return lineage


def azureml_lineage(
    training_job: str,
    *,
    backbone: str,
    parent_spec_fp: str | None = None,
    parent_exec_fp: str | None = None,
    conv_fp: str | None = None,
) -> dict[str, str]:
    """The lineage of an Azure ML conversion job fed by the job `training_job`; the
    fingerprints (checked) and `conv_fp` when the caller knows them."""
    lineage = {
        "parent_training_job": training_job,
        # An Azure ML job's name is its MLflow run id.
        "parent_training_run_id": training_job,
        "platform": AZUREML_PLATFORM,
        "backbone": backbone,
    }
    fingerprints = ("parent_spec_fp", parent_spec_fp), ("parent_exec_fp", parent_exec_fp)
    for key, value in (*fingerprints, ("conv_fp", conv_fp)):
        if value:
            lineage[key] = value
    return lineage


def run_tags(
    lineage: Mapping[str, str],
    config: ConversionConfig,
    *,
    user_tags: Mapping[str, str] | None = None,
    version: str | None = None,
) -> dict[str, str]:
    """The conversion run's tags: `user_tags` (experiment.yaml's `tags`), the lineage, the
    conversion's fingerprint and settings, and `onnxport.version` when given (an Azure ML
    job's tags are all that describe it before it runs). Secrets are left out."""
    tags = {k: str(v) for k, v in (user_tags or {}).items() if not is_secret(k)}
    tags.update(lineage_tags(lineage))
    if version:
        tags["onnxport.version"] = version
    if lineage.get("conv_fp"):
        tags["onnxport.conv_fp"] = lineage["conv_fp"]
    tags["onnxport.quantization"] = config.onnx.quantization.value
    tags["onnxport.optimize"] = config.onnx.optimize.value
    tags["onnxport.opset"] = str(config.onnx.opset_version)
    return tags
