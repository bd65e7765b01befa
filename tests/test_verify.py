"""`onnxport verify`: a published directory, and ONNX files onnxport did not make, proven
again against their checkpoint in real ONNX Runtime sessions (exit 0 proven, 1 refused,
2 bad input)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import onnx
import pytest
import torch

from models import HIDDEN, INTERMEDIATE
from support import edit_initializer, identity_model

TINY = "distilbert-token"


@pytest.fixture(scope="module")
def their_export(checkpoint, tmp_path_factory) -> Path:
    """The tiny checkpoint exported by `torch.onnx.export(..., dynamo=True)` itself, as a
    user would, batch and sequence dynamic: not by onnxport."""
    import transformers

    model = transformers.AutoModelForTokenClassification.from_pretrained(checkpoint(TINY))
    ids = torch.randint(1, 400, (2, 16))
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    program = torch.onnx.export(
        model.eval(),
        (ids, torch.ones_like(ids)),
        input_names=["input_ids", "attention_mask"],
        dynamo=True,
        dynamic_shapes=({0: batch, 1: sequence}, {0: batch, 1: sequence}),
    )
    path = tmp_path_factory.mktemp("their-export") / "model.onnx"
    program.save(str(path))
    return path


def test_a_published_directory_is_proven(cli, converted) -> None:
    directory = converted(TINY).directory
    run = cli("verify", directory)
    assert run.code == 0, run.stderr
    assert "checksums: ✓" in run.stdout
    assert "✓ proven" in run.stdout

    result = json.loads(cli("verify", directory, "--json").stdout)
    assert result["proven"] is True
    assert result["checksum_problems"] == []
    (model,) = result["models"]
    assert (model["file"], model["variant"], model["proven"]) == ("model_fp32.onnx", "fp32", True)
    validation = model["validation"]
    assert validation["yardstick"]["mode"] == "budget"
    logits = validation["outputs"]["logits"]
    assert logits["max_error_ratio"] == 4.0
    ratios = [b["ratio"] for b in logits["budget"]]
    assert len(ratios) == len(validation["shapes"]) and max(ratios) <= 4.0


def test_a_changed_byte_refuses_the_directory_without_running_its_models(cli, copy_output) -> None:
    """Decision: a directory whose files are not the ones its manifest proved is refused
    (exit 1), like a model that does not compute the same thing: it must not be promoted.
    Exit 2 is for what cannot be checked at all (no manifest, a missing path)."""
    directory = copy_output(TINY)
    model = directory / "model_fp32.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))

    run = cli("verify", directory)
    assert run.code == 1
    assert "model_fp32.onnx does not match its checksum" in run.stderr
    assert "its models were not run" in run.stderr
    result = json.loads(cli("verify", directory, "--json").stdout)
    assert result["proven"] is False
    assert result["checksum_problems"] == ["model_fp32.onnx does not match its checksum"]
    assert result["models"] == []


@pytest.mark.slow
def test_a_file_exported_by_torch_onnx_is_proven(cli, checkpoint, their_export) -> None:
    run = cli("verify", their_export, "--against", checkpoint(TINY), "--json")
    assert run.code == 0, run.stderr
    result = json.loads(run.stdout)
    (model,) = result["models"]
    assert model["proven"] is True
    # torch.onnx names the output after its node; the checkpoint calls it logits.
    (name,) = model["validation"]["outputs"]
    assert result["notes"] == [f"outputs matched by order: logits as {name}"]
    assert model["validation"]["outputs"][name]["max_error_ratio"] == 4.0


@pytest.mark.slow
def test_the_same_file_with_one_weight_scaled_is_refused(
    cli, checkpoint, their_export, tmp_path: Path
) -> None:
    """One weight matrix (the first feed-forward layer's, as the exporter transposed it)
    times 1 + 1e-3: the task agreement stays at 1, the error budget refuses it."""
    graph = onnx.load(str(their_export))
    (weight, *_) = [i for i in graph.graph.initializer if list(i.dims) == [HIDDEN, INTERMEDIATE]]
    broken = tmp_path / "scaled.onnx"
    edit_initializer(their_export, broken, weight.name, lambda w: w * (1 + 1e-3))

    run = cli("verify", broken, "--against", checkpoint(TINY))
    assert run.code == 1, run.stderr
    refusal = re.search(
        r"error \(verify\): refused: scaled\.onnx \(fp32\): output '(\w+)' at shape "
        r"\[1, 8\]: its error against PyTorch in float64 is ([\d.]+)x PyTorch's own",
        run.stderr,
    )
    assert refusal, run.stderr
    assert float(refusal[2]) > 4.0
    assert "✗ refused" in run.stdout
    result = json.loads(cli("verify", broken, "--against", checkpoint(TINY), "--json").stdout)
    (model,) = result["models"]
    assert model["proven"] is False
    assert model["validation"]["task_agreement"]["value"] == 1.0  # the task cannot see it


@pytest.mark.slow
def test_a_graph_with_a_fixed_sequence_length_is_validated_at_it(
    cli, checkpoint, tmp_path: Path
) -> None:
    """Exported with every dimension fixed (batch 2, 16 tokens): the default validation
    shapes are fitted to the graph, and a shape the config names is refused."""
    import transformers

    model = transformers.AutoModelForTokenClassification.from_pretrained(checkpoint(TINY))
    ids = torch.randint(1, 400, (2, 16))
    fixed = tmp_path / "fixed.onnx"
    torch.onnx.export(
        model.eval(),
        (ids, torch.ones_like(ids)),
        str(fixed),
        input_names=["input_ids", "attention_mask"],
        output_names=["logits"],
        dynamo=False,
    )

    run = cli("verify", fixed, "--against", checkpoint(TINY), "--json")
    assert run.code == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["models"][0]["validation"]["shapes"] == [[2, 16]]
    assert result["notes"] == [
        "validated at [[2, 16]]: input_ids dimension 0 is fixed at 2; input_ids dimension 1 "
        "is fixed at 16 in the graph"
    ]

    config = tmp_path / "conversion.yaml"
    config.write_text("validation:\n  shapes: [[1, 8]]\n", encoding="utf-8")
    run = cli("verify", fixed, "--against", checkpoint(TINY), "--config", config)
    assert run.code == 2
    assert "the graph does not take validation.shapes [[1, 8]]" in run.stderr


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing", "does not exist"),
        ("not onnx", "is not an ONNX model ONNX Runtime can load"),
        ("no checkpoint", "verifying it needs the checkpoint it was exported from"),
        ("checkpoint missing", "source not found"),
        ("other names", "the graph's inputs (scores) are not the checkpoint's"),
        ("config for a directory", "--config is for an ONNX file"),
        ("no manifest", "holds no manifest.json"),
    ],
)
def test_bad_input_is_one_clear_line_and_exit_2(
    cli, checkpoint, converted, tmp_path: Path, case: str, message: str
) -> None:
    text = tmp_path / "model.onnx"
    text.write_text("not a model", encoding="utf-8")
    args = {
        "missing": [tmp_path / "nowhere.onnx", "--against", checkpoint(TINY)],
        "not onnx": [text, "--against", checkpoint(TINY)],
        "no checkpoint": [identity_model(tmp_path / "identity.onnx")],
        "checkpoint missing": [
            identity_model(tmp_path / "identity.onnx"),
            "--against",
            tmp_path / "no-checkpoint",
        ],
        "other names": [identity_model(tmp_path / "identity.onnx"), "--against", checkpoint(TINY)],
        "config for a directory": [converted(TINY).directory, "--config", text],
        "no manifest": [tmp_path],
    }[case]
    run = cli("verify", *args)
    assert run.code == 2, run.stderr
    assert run.stderr.startswith("error ("), run.stderr
    assert message in run.stderr
    assert "hint:" in run.stderr
    assert "Traceback" not in run.stderr
