"""Checks shared by the tests: what every published conversion must pass (the pipeline and
CLI tests), and what every refused command must look like."""

from __future__ import annotations

import os
import site
import sys
import sysconfig
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from google.protobuf.message import Message

from models import MODELS
from onnxport import __version__
from onnxport.artifact.manifest import (
    MANIFEST_FILENAME,
    REPORT_FILENAME,
    Manifest,
    read_manifest,
    sha256_file,
    verify_directory,
)
from onnxport.export.strategies import adapter_for
from onnxport.sources import Source
from onnxport.sources.huggingface_inputs import TEXT_EXAMPLE_SHAPE
from onnxport.tasks import Modality

FP32_ATOL = 1e-4
REPO = Path(__file__).resolve().parents[1]


def _machine_directories() -> list[str]:
    """Directories of this machine that a stack trace or source location would name."""
    found = {
        str(REPO),
        sys.prefix,
        sys.base_prefix,
        sysconfig.get_paths()["purelib"],
        *site.getsitepackages(),
        str(Path.home()),
        tempfile.gettempdir(),  # checkpoints and outputs of the tests live there
    }
    return sorted(d for d in found if len(Path(d).parts) > 1)


def machine_traces(model_file: Path) -> list[str]:
    """Every doc string and metadata value anywhere in the model (nodes, subgraphs,
    functions, values, graph, model) that names a directory of this machine or quotes a
    Python stack trace, as `where: text`; empty for a model that leaks none."""
    directories = _machine_directories()
    found: list[str] = []

    def visit(message: Message, where: str) -> None:
        texts = [("doc_string", getattr(message, "doc_string", ""))]
        texts += [(p.key, p.value) for p in getattr(message, "metadata_props", ())]
        for key, text in texts:
            if 'File "' in text or any(d in text for d in directories):
                found.append(f"{where}.{key}: {text[:120]}")
        for field, value in message.ListFields():
            if field.message_type is None:
                continue
            if not field.is_repeated:
                visit(value, f"{where}.{field.name}")
            for i, item in enumerate(value if field.is_repeated else ()):
                visit(item, f"{where}.{field.name}[{i}]")

    visit(onnx.load(str(model_file), load_external_data=False), model_file.name)
    return found


def check_published(directory: Path, manifest: Manifest, name: str, checkpoint: Path) -> None:
    """What every published conversion must satisfy, whichever way it was made."""
    expected = MODELS[name]
    assert manifest.onnxport_version == __version__
    assert manifest.source.task == expected.task.value
    assert manifest.source.architecture == expected.architecture
    assert manifest.source.weights_sha256 == {
        "model.safetensors": sha256_file(checkpoint / "model.safetensors")
    }
    assert manifest.export.opset == 18

    (fp32,) = manifest.outputs
    assert (fp32.variant, fp32.file, fp32.published) == ("fp32", "model_fp32.onnx", True)
    validation = fp32.validation
    assert validation is not None and validation.passed, validation
    assert validation.failures == []
    assert set(validation.outputs) == set(expected.output_names)
    for output, comparison in validation.outputs.items():
        assert comparison.max_abs_diff < FP32_ATOL, output
        assert comparison.passed
    agreement = validation.task_agreement
    if agreement.metric == "argmax_agreement":
        assert agreement.value == 1.0
    else:
        assert agreement.metric == "cosine_similarity"
        assert agreement.value > 0.9999
    shapes = [tuple(s) for s in validation.shapes]
    assert len(shapes) >= 3
    assert any(batch == 1 for batch, _ in shapes), "batch 1 proves the batch axis"
    assert any(batch > 2 for batch, _ in shapes), "a batch above the export example's"
    if expected.task.value != "image-classification":
        assert any(size != TEXT_EXAMPLE_SHAPE[1] for _, size in shapes), "another sequence"
    assert fp32.smoke_test is not None and fp32.smoke_test.passed

    files = {p.name for p in directory.iterdir()}
    assert files == set(manifest.files) | {MANIFEST_FILENAME}
    assert {"model_fp32.onnx", "config.json", REPORT_FILENAME} <= files
    assert ("tokenizer.json" in files) is expected.has_tokenizer
    for file, digest in manifest.files.items():
        assert sha256_file(directory / file) == digest, file
    assert fp32.sha256 == sha256_file(directory / fp32.file)
    assert fp32.size_bytes == (directory / fp32.file).stat().st_size
    assert (directory / "config.json").read_bytes() == (checkpoint / "config.json").read_bytes()
    assert verify_directory(directory) == []
    assert read_manifest(directory) == manifest
    for out in manifest.published_outputs():
        assert machine_traces(directory / out.file) == [], out.file
    assert [p.name for p in directory.parent.iterdir() if p.name.startswith(".")] == []


def check_agrees_on_a_new_shape(model_file: Path, loaded_source: Source) -> None:
    """Independent of the manifest: the published file answers like PyTorch on a shape that
    neither the export nor the validation used (for images of any size: not square)."""
    size = 32 if loaded_source.modality is Modality.VISION else 23
    inputs = loaded_source.make_inputs(3, size, 99)
    if 3 in loaded_source.dynamic_axes.get("pixel_values", {}):
        channels = inputs["pixel_values"].shape[1]
        inputs = {"pixel_values": torch.randn(3, channels, 48, 80)}
    with torch.no_grad():
        expected = adapter_for(loaded_source)(*(inputs[n] for n in loaded_source.input_names))
    session = ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    actual = session.run(
        list(loaded_source.output_names), {k: v.numpy() for k, v in inputs.items()}
    )
    for want, got in zip(expected, actual, strict=True):
        np.testing.assert_allclose(got, want.numpy(), atol=FP32_ATOL, rtol=1e-3)


def assert_clean_failure(code: int, stdout: str, stderr: str, expected_code: int, says) -> None:
    """A refused command: exit `expected_code`, every fragment of `says` on stderr, and no
    traceback or internal error (`SHOW_ERRORS=1` prints what it said)."""
    if os.environ.get("SHOW_ERRORS"):
        print(f"\n---- exit {code}\n{stderr}")
    assert code == expected_code, stderr
    for fragment in says:
        assert fragment in stderr, f"{fragment!r} not in:\n{stderr}"
    assert "Traceback" not in stderr and "Traceback" not in stdout, stderr
    assert "internal error" not in stderr, stderr
