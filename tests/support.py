"""Training outputs for the orchestration tests, around a checkpoint from `models.py`.

Laid out as the platform's training output:
`outputs/final_training/local/<backbone>/spec_<fp>_exec_<fp>/v1/{checkpoint/, metadata.json}`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from suite import build_once

SPEC_FP = "abc123"
EXEC_FP = "def456"
BACKBONE = "distilbert-base-uncased"

# The TorchScript exporter: a few seconds faster per conversion than the dynamo exporter,
# and the orchestration does not depend on which exporter runs.
CONVERSION_YAML = """\
target:
  format: onnx
onnx:
  opset_version: 18
  quantization: none
  run_smoke_test: true
  exporter: torchscript
output:
  filename_pattern: "model_{quantization}.onnx"
validation:
  shapes: [[1, 8], [2, 13]]
"""


def training_output_dir(
    root: Path,
    *,
    backbone: str = BACKBONE,
    spec_fp: str = SPEC_FP,
    exec_fp: str = EXEC_FP,
    variant: int = 1,
) -> Path:
    return (
        root
        / "outputs"
        / "final_training"
        / "local"
        / backbone
        / f"spec_{spec_fp}_exec_{exec_fp}"
        / f"v{variant}"
    )


def lay_out_training_output(
    root: Path,
    checkpoint: Path,
    *,
    backbone: str = BACKBONE,
    spec_fp: str = SPEC_FP,
    exec_fp: str = EXEC_FP,
    metadata: dict | str | None = None,
) -> Path:
    """Copy `checkpoint` into a training output under `root`; return the `v1` directory."""
    parent = training_output_dir(root, backbone=backbone, spec_fp=spec_fp, exec_fp=exec_fp)
    parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(checkpoint, parent / "checkpoint", dirs_exist_ok=True)
    if metadata is None:
        metadata = {"backbone": backbone}
    if isinstance(metadata, str):
        (parent / "metadata.json").write_text(metadata, encoding="utf-8")
    else:
        (parent / "metadata.json").write_text(json.dumps(metadata), encoding="utf-8")
    return parent


def write_config_dir(
    directory: Path,
    *,
    conversion: str = CONVERSION_YAML,
    experiment: str | None = None,
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "conversion.yaml").write_text(conversion, encoding="utf-8")
    if experiment is not None:
        (directory / "experiment.yaml").write_text(experiment, encoding="utf-8")
    return directory


def corrupt_byte(path: Path, offset: int | None = None) -> None:
    """Flip one byte of `path` (in the middle unless told where)."""
    data = bytearray(path.read_bytes())
    index = len(data) // 2 if offset is None else offset
    data[index] ^= 0xFF
    path.write_bytes(bytes(data))


def migrated_store(tmp_path_factory) -> Path:
    """A new SQLite MLflow store made by `prepare_store` in a directory that did not exist.

    Created once per test run (the schema migration takes seconds); tests that need a
    store of their own get a copy of it from `root_with_store`.
    """
    from onnxport.request.config import ExperimentConfig
    from onnxport.tracking import prepare_store, resolve_tracking_uri

    def migrate(directory: Path) -> None:
        prepare_store(resolve_tracking_uri(directory / "not-yet-created", ExperimentConfig()))

    return build_once(tmp_path_factory, "mlflow-store", migrate) / "not-yet-created" / "mlflow.db"


def root_with_store(tmp_path_factory, name: str) -> Path:
    """A new project root holding a copy of the migrated store as its `mlflow.db`."""
    root = tmp_path_factory.mktemp(name)
    shutil.copyfile(migrated_store(tmp_path_factory), root / "mlflow.db")
    return root
