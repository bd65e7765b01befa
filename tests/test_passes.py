"""Each pass on a tiny model: what it changes, and that the result still computes the same."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from onnxport.errors import PassError
from onnxport.passes import (
    DynamicInt8Pass,
    Fp16Pass,
    OptimizePass,
    PassContext,
    StaticInt8Pass,
    apply_pass,
    apply_sequence,
    optimize_passes,
    quantization_pass,
)
from onnxport.passes.calibration import Calibration
from onnxport.request.config import ConversionConfig
from onnxport.request.export_config import Exporter, OptimizeLevel
from onnxport.request.quantize_config import QuantizeConfig
from onnxport.verify.references import compute_references
from onnxport.verify.runtime import create_session, run_session

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model(exported, source, tmp_path_factory):
    """A dynamo export of the tiny DistilBERT, its source and PyTorch references."""
    result = exported("distilbert-token", Exporter.DYNAMO)
    src = source("distilbert-token")
    references = compute_references(src, [(1, 8), (2, 37)])
    return result, src, references


def _context(src, exporter: Exporter = Exporter.DYNAMO, **settings) -> PassContext:
    return PassContext(
        exporter=exporter,
        model_type=src.model_type,
        num_heads=src.facts.num_heads,
        hidden_size=src.facts.hidden_size,
        settings=QuantizeConfig(**settings),
    )


def _max_diff(path: Path, references) -> float:
    session = create_session(path)
    worst = 0.0
    for ref in references:
        got = run_session(session, ref.inputs)["logits"]
        worst = max(worst, float(np.abs(got - ref.outputs["logits"]).max()))
    return worst


def _relative_error(path: Path, references) -> float:
    """The error's RMS as a fraction of the reference logits' RMS, worst over the shapes: 0 for
    an exact copy, 1.0 for a model that answers zeros. The tiny models' logits are ~0.1 in
    size, so an absolute bound near 1 would pass a quantizer that wrote zeros."""
    session = create_session(path)
    worst = 0.0
    for ref in references:
        want = ref.outputs["logits"].astype(np.float64)
        got = run_session(session, ref.inputs)["logits"].astype(np.float64)
        error = np.sqrt(np.mean((got - want) ** 2)) / np.sqrt(np.mean(want**2))
        worst = max(worst, float(error))
    return worst


def _op_types(path: Path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node}


def test_optimize_extended_fuses_attention_and_keeps_the_numbers(model, tmp_path):
    result, src, references = model
    out = apply_pass(
        OptimizePass(OptimizeLevel.EXTENDED), result.path, tmp_path / "m.onnx", _context(src)
    )
    assert out.nodes_after < out.nodes_before
    assert out.details["engine"] == "onnxscript.rewriter.ort_fusions"
    assert out.details["fusions"].get("skip_layer_normalization", 0) > 0
    # What the graph holds, counted: the fusions the report shows.
    assert out.details["fused_operators"]["SkipLayerNormalization"] > 0
    assert {"SkipLayerNormalization"} <= _op_types(tmp_path / "m.onnx")
    assert _max_diff(tmp_path / "m.onnx", references) < 1e-4


def test_optimize_basic_runs_onnxruntime_offline(model, tmp_path):
    result, src, references = model
    out = apply_pass(
        OptimizePass(OptimizeLevel.BASIC), result.path, tmp_path / "m.onnx", _context(src)
    )
    assert out.details == {"level": "basic", "engine": "onnxruntime", "fused_operators": {}}
    assert out.nodes_after <= out.nodes_before
    assert _max_diff(tmp_path / "m.onnx", references) < 1e-4


def test_optimize_extended_on_a_torchscript_export_uses_the_ort_transformers_optimizer(
    exported, source, tmp_path
):
    result = exported("distilbert-token", Exporter.TORCHSCRIPT)
    src = source("distilbert-token")
    out = apply_pass(
        OptimizePass(OptimizeLevel.EXTENDED),
        result.path,
        tmp_path / "m.onnx",
        _context(src, exporter=Exporter.TORCHSCRIPT),
    )
    assert out.details["engine"] == "onnxruntime.transformers.optimizer"
    assert out.nodes_after < out.nodes_before
    assert _max_diff(tmp_path / "m.onnx", compute_references(src, [(2, 37)])) < 1e-4


def test_dynamic_int8_quantizes_matmuls_and_shrinks_the_file(model, tmp_path):
    result, src, references = model
    out = apply_pass(DynamicInt8Pass(), result.path, tmp_path / "q.onnx", _context(src))
    quantized = out.details["quantized_nodes"]
    assert quantized.get("MatMulInteger", 0) + quantized.get("DynamicQuantizeMatMul", 0) > 0
    assert (tmp_path / "q.onnx").stat().st_size < 0.8 * result.path.stat().st_size
    # Int8 moves the numbers a little (~1% of the logits here), not a lot.
    assert 0 < _relative_error(tmp_path / "q.onnx", references) < 0.05
    assert not list(tmp_path.glob(".*shapes*")), "the shape-inference intermediate is removed"


def test_nodes_to_exclude_stay_in_float(model, tmp_path):
    result, src, _ = model
    full = apply_pass(DynamicInt8Pass(), result.path, tmp_path / "a.onnx", _context(src))
    matmuls = [n.name for n in onnx.load(str(result.path)).graph.node if n.op_type == "MatMul"]
    excluded = apply_pass(
        DynamicInt8Pass(),
        result.path,
        tmp_path / "b.onnx",
        _context(src, nodes_to_exclude=matmuls[:2]),
    )
    count = sum(full.details["quantized_nodes"].values())
    assert sum(excluded.details["quantized_nodes"].values()) < count
    kept = {n.name for n in onnx.load(str(tmp_path / "b.onnx")).graph.node if n.op_type == "MatMul"}
    assert set(matmuls[:2]) <= kept


def test_static_int8_writes_qdq_with_calibration(model, tmp_path):
    result, src, references = model
    samples = tuple({k: v.numpy() for k, v in src.make_inputs(1, 16, i).items()} for i in range(4))
    context = PassContext(
        exporter=Exporter.DYNAMO,
        calibration=Calibration(samples, "test samples"),
        settings=QuantizeConfig(per_channel=True),
    )
    out = apply_pass(StaticInt8Pass(), result.path, tmp_path / "s.onnx", context)
    assert out.details["format"] == "QDQ"
    assert out.details["calibration_samples"] == 4
    assert {"QuantizeLinear", "DequantizeLinear"} <= _op_types(tmp_path / "s.onnx")
    # Int8 activations too: ~4% of the logits here, on four calibration samples.
    assert 0 < _relative_error(tmp_path / "s.onnx", references) < 0.1


def test_static_int8_without_samples_is_a_pass_error(model, tmp_path):
    result, src, _ = model
    with pytest.raises(PassError, match="quantize-int8-static"):
        apply_pass(StaticInt8Pass(), result.path, tmp_path / "s.onnx", _context(src))


def test_fp16_keeps_float32_inputs_and_outputs(model, tmp_path):
    result, src, references = model
    apply_pass(Fp16Pass(), result.path, tmp_path / "h.onnx", _context(src))
    proto = onnx.load(str(tmp_path / "h.onnx"))
    float_inits = [i for i in proto.graph.initializer if i.data_type in (1, 10)]
    assert float_inits and all(i.data_type == onnx.TensorProto.FLOAT16 for i in float_inits)
    assert proto.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert 0 < _relative_error(tmp_path / "h.onnx", references) < 0.01


def test_a_broken_input_file_is_a_pass_error_naming_the_pass(tmp_path):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx model")
    with pytest.raises(PassError, match="optimize-basic"):
        apply_pass(OptimizePass(OptimizeLevel.BASIC), broken, tmp_path / "o.onnx", PassContext())


def test_a_pass_that_raises_becomes_a_pass_error_naming_it(model, tmp_path):
    result, _, _ = model
    valid_copy = tmp_path / "in.onnx"
    shutil.copy(result.path, valid_copy)
    context = PassContext(
        exporter=Exporter.DYNAMO, calibration=Calibration(({"nonsense": np.zeros(1)},), "nonsense")
    )
    with pytest.raises(PassError) as info:
        apply_pass(StaticInt8Pass(), valid_copy, tmp_path / "out.onnx", context)
    assert "pass 'quantize-int8-static' failed" in str(info.value)


def test_sequence_quantizes_an_optimized_model(model, tmp_path):
    result, src, references = model
    results = apply_sequence(
        [OptimizePass(OptimizeLevel.EXTENDED), DynamicInt8Pass()],
        result.path,
        tmp_path / "model_int8.onnx",
        _context(src),
    )
    assert [r.name for r in results] == ["optimize-extended", "quantize-int8"]
    assert results[1].nodes_before == results[0].nodes_after
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model_int8.onnx"]
    assert 0 < _relative_error(tmp_path / "model_int8.onnx", references) < 0.05


def test_the_config_decides_which_passes_run():
    assert optimize_passes(ConversionConfig()) == []
    config = ConversionConfig().with_overrides(
        onnx={"optimize": "extended", "quantization": "dynamic"}
    )
    assert [p.name for p in optimize_passes(config)] == ["optimize-extended"]
    assert quantization_pass(config).name == "quantize-int8"
    assert quantization_pass(ConversionConfig()) is None


def test_dynamic_int8_without_the_quantizers_second_copy_makes_the_same_model(model, tmp_path):
    """The pass keeps onnxruntime's quantizer from reloading a deep copy of a model without
    Gemm nodes (memory); the model it writes is the one the quantizer writes by itself."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    result, src, _ = model
    assert not [n for n in onnx.load(str(result.path)).graph.node if n.op_type == "Gemm"]
    apply_pass(DynamicInt8Pass(), result.path, tmp_path / "ours.onnx", _context(src))
    quantize_dynamic(result.path, tmp_path / "theirs.onnx", weight_type=QuantType.QInt8)
    ours, theirs = (onnx.load(str(tmp_path / f"{n}.onnx")) for n in ("ours", "theirs"))
    assert [(n.op_type, list(n.input)) for n in ours.graph.node] == [
        (n.op_type, list(n.input)) for n in theirs.graph.node
    ]
    theirs_weights = {i.name: onnx.numpy_helper.to_array(i) for i in theirs.graph.initializer}
    for initializer in ours.graph.initializer:
        np.testing.assert_array_equal(
            onnx.numpy_helper.to_array(initializer), theirs_weights[initializer.name]
        )
    assert len(ours.graph.initializer) == len(theirs.graph.initializer)
