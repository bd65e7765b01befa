"""The demo's whole story: a training output in the platform's layout, converted with
`execute_conversion`, and the converted variants scored on the held-out résumé lines."""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from onnxport.artifact.manifest import read_manifest
from onnxport.demo.training import (
    DEMO_VERSION,
    HELD_OUT_EXAMPLES,
    build_demo_checkpoint,
    held_out_f1,
)

DEMO_BACKBONE = "distilbert-resume-demo"
DEMO_CONVERSION_YAML = """\
# Written by `onnxport demo`. Edit and rerun to see a new conversion (a new conv_fp).
target: {format: onnx}
onnx: {opset_version: 18, quantization: int8, optimize: extended, run_smoke_test: true}
output: {filename_pattern: "model_{quantization}.onnx"}
# The gate is the task-level argmax agreement with PyTorch; int8 typically reaches 0.99.
validation: {min_task_agreement: 0.98}
"""


@dataclass(frozen=True)
class DemoProject:
    root: Path
    config_dir: Path
    training_dir: Path
    spec_fp: str
    exec_fp: str


def _fingerprint(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def prepare_demo_project(root: Path, cache_dir: Path | None = None) -> DemoProject:
    """Lay the trained demo checkpoint out as a training run's output, with a config dir."""
    checkpoint = build_demo_checkpoint(cache_dir)
    spec_fp = _fingerprint(f"demo-spec-v{DEMO_VERSION}")
    exec_fp = _fingerprint(f"demo-exec-local-cpu-v{DEMO_VERSION}")
    root = Path(root).absolute()
    training_dir = (
        root / "outputs" / "final_training" / "local" / DEMO_BACKBONE
        / f"spec_{spec_fp}_exec_{exec_fp}" / "v1"
    )  # fmt: skip
    if not (training_dir / "checkpoint" / "model.safetensors").is_file():
        shutil.rmtree(training_dir / "checkpoint", ignore_errors=True)
        shutil.copytree(checkpoint, training_dir / "checkpoint")
    metadata = {
        "backbone": DEMO_BACKBONE,
        "task": "token-classification",
        **json.loads((checkpoint / "training_metrics.json").read_text()),
    }
    (training_dir / "metadata.json").write_text(json.dumps(metadata, indent=2), encoding="utf-8")
    config_dir = root / "config"
    config_dir.mkdir(parents=True, exist_ok=True)
    conversion_yaml = config_dir / "conversion.yaml"
    if not conversion_yaml.exists():
        conversion_yaml.write_text(DEMO_CONVERSION_YAML, encoding="utf-8")
    return DemoProject(root, config_dir, training_dir, spec_fp, exec_fp)


def score_variants(output_dir: Path, training_dir: Path) -> dict[str, float]:
    """Held-out entity F1 of PyTorch (from training) and of every published ONNX variant."""
    from transformers import AutoTokenizer

    from onnxport.demo.data import generate
    from onnxport.verify.runtime import create_session

    metadata = json.loads((training_dir / "metadata.json").read_text(encoding="utf-8"))
    scores = {"pytorch": float(metadata["held_out_entity_f1"])}
    tokenizer = AutoTokenizer.from_pretrained(output_dir, local_files_only=True)
    held_out = generate(HELD_OUT_EXAMPLES, seed=10_000)
    for out in read_manifest(output_dir).published_outputs():
        session = create_session(output_dir / out.file)

        def run(inputs: dict[str, np.ndarray], session=session) -> np.ndarray:
            wanted = {i.name for i in session.get_inputs()}
            return session.run(["logits"], {k: v for k, v in inputs.items() if k in wanted})[0]

        scores[f"onnx {out.variant}"] = held_out_f1(tokenizer, held_out, run)
    return scores
