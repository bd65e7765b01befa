"""The smoke test: a published file loads on its own and answers sanely, or says why not."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from models import NUM_LABELS
from onnxport.errors import SmokeTestError
from onnxport.request.export_config import Exporter
from onnxport.testing import DEFAULT_DIM_VALUES, generate_inputs, smoke_test_onnx_model
from onnxport.verify.references import compute_references
from onnxport.verify.runtime import create_session


def _poison(model_path: Path, target: Path) -> Path:
    """A copy whose classifier bias is NaN: it loads and runs, and answers NaN."""
    model = onnx.load(str(model_path))
    (bias,) = [i for i in model.graph.initializer if i.name.endswith("classifier.bias")]
    poisoned = np.full(tuple(bias.dims), np.nan, dtype=np.float32)
    bias.CopyFrom(numpy_helper.from_array(poisoned, bias.name))
    onnx.save(model, str(target))
    return target


def test_a_good_model_passes_with_generated_inputs(exported) -> None:
    path = exported("distilbert-token", Exporter.TORCHSCRIPT).path
    result = smoke_test_onnx_model(path)
    assert result.passed, result.problems
    assert result.problems == []
    batch, sequence = DEFAULT_DIM_VALUES["batch"], DEFAULT_DIM_VALUES["sequence"]
    assert result.output_shapes == {"logits": [batch, sequence, NUM_LABELS]}
    assert result.seconds > 0


def test_a_good_model_passes_with_sample_inputs(exported, source) -> None:
    (reference,) = compute_references(source("bert-token"), [(3, 19)])
    result = smoke_test_onnx_model(
        exported("bert-token", Exporter.TORCHSCRIPT).path, reference.inputs
    )
    assert result.passed, result.problems
    assert result.output_shapes == {"logits": [3, 19, NUM_LABELS]}


def test_a_vision_model_gets_float_pixels(exported) -> None:
    path = exported("vit-image", Exporter.TORCHSCRIPT).path
    inputs = generate_inputs(create_session(path))
    assert inputs["pixel_values"].dtype == np.float32
    assert inputs["pixel_values"].shape == (DEFAULT_DIM_VALUES["batch"], 3, 32, 32)
    assert smoke_test_onnx_model(path).passed


def test_generated_text_inputs_are_ids_ones_and_zeros(exported) -> None:
    inputs = generate_inputs(create_session(exported("bert-token", Exporter.TORCHSCRIPT).path))
    assert set(inputs) == {"input_ids", "attention_mask", "token_type_ids"}
    assert all(v.dtype == np.int64 for v in inputs.values())
    assert (inputs["attention_mask"] == 1).all()
    assert (inputs["token_type_ids"] == 0).all()
    assert inputs["input_ids"].min() >= 1


def test_a_model_answering_nan_fails(exported, tmp_path: Path) -> None:
    path = _poison(exported("distilbert-token", Exporter.TORCHSCRIPT).path, tmp_path / "nan.onnx")
    result = smoke_test_onnx_model(path)
    assert not result.passed
    assert result.problems == ["output 'logits' has NaN or infinite values"]
    with pytest.raises(SmokeTestError, match=r"smoke test failed for nan\.onnx: .*NaN"):
        smoke_test_onnx_model(path, raise_on_failure=True)


def test_an_output_longer_than_its_declared_axis_fails(tmp_path: Path) -> None:
    """`logits` declares the input's `sequence` axis but comes out twice as long."""
    graph = helper.make_graph(
        [helper.make_node("Concat", ["scores", "scores"], ["logits"], axis=1)],
        "doubled",
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", "sequence", 3])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "sequence", 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "doubled.onnx"))
    result = smoke_test_onnx_model(tmp_path / "doubled.onnx")
    assert not result.passed
    sequence = DEFAULT_DIM_VALUES["sequence"]
    assert result.problems == [
        f"output 'logits' axis 1 (sequence) is {2 * sequence}, expected {sequence}"
    ]


def test_sample_inputs_missing_a_declared_input_fail(exported) -> None:
    path = exported("bert-token", Exporter.TORCHSCRIPT).path
    inputs = {"input_ids": np.ones((1, 4), dtype=np.int64)}
    result = smoke_test_onnx_model(path, inputs)
    assert not result.passed
    assert result.problems == ["sample inputs lack ['attention_mask', 'token_type_ids']"]


def test_sample_inputs_of_the_wrong_type_fail_as_a_finding(exported) -> None:
    path = exported("distilbert-token", Exporter.TORCHSCRIPT).path
    inputs = {
        "input_ids": np.ones((1, 4), dtype=np.float32),
        "attention_mask": np.ones((1, 4), dtype=np.int64),
    }
    result = smoke_test_onnx_model(path, inputs)
    assert not result.passed
    (problem,) = result.problems
    assert problem.startswith("inference failed: ")
    assert "\n" not in problem


def test_a_file_that_is_not_onnx_fails_to_load(tmp_path: Path) -> None:
    path = tmp_path / "model_fp32.onnx"
    path.write_bytes(b"definitely not protobuf")
    result = smoke_test_onnx_model(path)
    assert not result.passed
    assert result.problems[0].startswith("cannot load: ")
    with pytest.raises(SmokeTestError):
        smoke_test_onnx_model(path, raise_on_failure=True)


def test_the_smoke_test_imports_no_torch(exported) -> None:
    """It runs beside a deployment, where torch is not installed."""
    path = exported("distilbert-token", Exporter.TORCHSCRIPT).path
    code = (
        "import sys\n"
        "from onnxport.testing import smoke_test_onnx_model\n"
        f"assert smoke_test_onnx_model({str(path)!r}).passed\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
