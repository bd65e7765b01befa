"""Lineage and its run tags, built once for local and Azure ML conversions: the names the
platform reads (`code.lineage.*`, `onnxport.*`) exactly, and no secret ever made a tag."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from onnxport import __version__
from onnxport.request.config import ConversionConfig
from onnxport.request.lineage import (
    azureml_lineage,
    is_secret,
    lineage_tags,
    local_lineage,
    run_tags,
)
from onnxport.request.paths import ParentTrainingOutput

INT8 = ConversionConfig().with_overrides(
    onnx={"quantization": "int8", "optimize": "basic", "opset_version": 17}
)
TRAINING = Path("/outputs/final_training/local/distilbert/spec_abc123_exec_def456/v2")


def _parent() -> ParentTrainingOutput:
    return ParentTrainingOutput(
        path=TRAINING,
        checkpoint=TRAINING / "checkpoint",
        backbone="distilbert-base-uncased",
        version="2",
        metadata={},
    )


def test_a_local_conversion_names_its_training_output() -> None:
    lineage = local_lineage(
        _parent(),
        parent_spec_fp="abc123",
        parent_exec_fp="def456",
        conv_fp="0123456789abcdef",
        platform="local",
        parent_training_run_id="run-42",
    )
    assert lineage == {
        "parent_spec_fp": "abc123",
        "parent_exec_fp": "def456",
        "parent_training_id": "spec_abc123_exec_def456/v2",
        "parent_training_dir": str(TRAINING),
        "conv_fp": "0123456789abcdef",
        "platform": "local",
        "backbone": "distilbert-base-uncased",
        "parent_training_run_id": "run-42",
    }
    without_run = local_lineage(
        _parent(), parent_spec_fp="abc123", parent_exec_fp="def456", conv_fp="ff", platform="x"
    )
    assert "parent_training_run_id" not in without_run


def test_a_local_run_is_tagged_with_the_users_tags_the_lineage_and_the_settings() -> None:
    lineage = local_lineage(
        _parent(),
        parent_spec_fp="abc123",
        parent_exec_fp="def456",
        conv_fp="ff00",
        platform="local",
    )
    user_tags = {"team": "nlp", "hf_token": "s3cr3t", "code.lineage.platform": "spoofed"}
    assert run_tags(lineage, INT8, user_tags=user_tags) == {
        "team": "nlp",
        "code.lineage.parent_spec_fp": "abc123",
        "code.lineage.parent_exec_fp": "def456",
        "code.lineage.parent_training_id": "spec_abc123_exec_def456/v2",
        "code.lineage.parent_training_dir": str(TRAINING),
        "code.lineage.conv_fp": "ff00",
        "code.lineage.platform": "local",
        "code.lineage.backbone": "distilbert-base-uncased",
        "onnxport.conv_fp": "ff00",
        "onnxport.quantization": "int8",
        "onnxport.optimize": "basic",
        "onnxport.opset": "17",
    }


def test_an_azureml_job_names_its_training_job_and_its_fingerprints_when_known() -> None:
    assert azureml_lineage("train-1", backbone="bert") == {
        "parent_training_job": "train-1",
        "parent_training_run_id": "train-1",
        "platform": "azureml",
        "backbone": "bert",
    }
    known = azureml_lineage(
        "train-1", backbone="bert", parent_spec_fp="abc123", parent_exec_fp="def456", conv_fp="ff"
    )
    assert known == {
        **azureml_lineage("train-1", backbone="bert"),
        "parent_spec_fp": "abc123",
        "parent_exec_fp": "def456",
        "conv_fp": "ff",
    }


def test_an_azureml_job_is_tagged_with_the_version_and_a_fingerprint_only_when_known() -> None:
    unknown = run_tags(azureml_lineage("train-1", backbone="bert"), INT8, version=__version__)
    assert unknown == {
        "code.lineage.parent_training_job": "train-1",
        "code.lineage.parent_training_run_id": "train-1",
        "code.lineage.platform": "azureml",
        "code.lineage.backbone": "bert",
        "onnxport.version": __version__,
        "onnxport.quantization": "int8",
        "onnxport.optimize": "basic",
        "onnxport.opset": "17",
    }
    lineage = azureml_lineage(
        "train-1", backbone="bert", parent_spec_fp="abc123", parent_exec_fp="def456", conv_fp="ff"
    )
    known = run_tags(lineage, INT8, version=__version__)
    assert known["onnxport.conv_fp"] == known["code.lineage.conv_fp"] == "ff"


def test_lineage_tags_are_prefixed_and_secrets_dropped() -> None:
    tags = lineage_tags(
        {"parent_spec_fp": "abc123", "conv_fp": "ff00", "api_key": "s3cr3t", "sas_url": "x"}
    )
    assert tags == {"code.lineage.parent_spec_fp": "abc123", "code.lineage.conv_fp": "ff00"}


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("AZURE_STORAGE_KEY", True),
        ("hf_token", True),
        ("db_password", True),
        ("connection_string", True),
        ("parent_spec_fp", False),
        ("backbone", False),
    ],
)
def test_is_secret(name: str, secret: bool) -> None:
    assert is_secret(name) is secret


def test_building_lineage_loads_neither_torch_nor_mlflow() -> None:
    """Checked in a fresh interpreter: the Azure ML submitter and the parent need neither."""
    code = "import sys, onnxport.request.lineage; "
    code += "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'mlflow'}))"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.strip() == "[]"
