"""Validation against PyTorch: real ONNX Runtime sessions on real and deliberately broken files."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from models import NUM_LABELS
from onnxport.artifact.records.export import AttemptRecord, ExportCacheRecord, ExportRecord
from onnxport.request.export_config import Exporter
from onnxport.request.sections import SourceConfig
from onnxport.sources import load_source
from onnxport.tasks import Task
from onnxport.verify.compare import Tolerance
from onnxport.verify.references import compute_references
from onnxport.verify.runtime import create_session, run_session, session_options
from onnxport.verify.shapes import export_origin
from onnxport.verify.validate import (
    DEFAULT_TOLERANCES,
    Judging,
    Reference,
    validate_model,
)
from support import edit_initializer, identity_model

SHAPES = [(1, 8), (2, 37), (4, 128)]
RECORDED = Judging(DEFAULT_TOLERANCES["fp32"], elementwise=False)
"""The values recorded, not judged: the task-level gate alone decides."""


@pytest.fixture(scope="module")
def token_references(source) -> list[Reference]:
    return compute_references(source("distilbert-token"), SHAPES)


def largest_float_initializer(model_path: Path) -> str:
    model = onnx.load(str(model_path))
    floats = [i for i in model.graph.initializer if i.data_type == TensorProto.FLOAT]
    return max(floats, key=lambda i: int(np.prod(i.dims))).name


# --- real exported models -----------------------------------------------------------------


def test_references_are_pytorch_outputs_per_shape(token_references, source) -> None:
    assert [r.shape for r in token_references] == SHAPES
    for ref, (batch, length) in zip(token_references, SHAPES, strict=True):
        assert set(ref.inputs) == {"input_ids", "attention_mask"}
        assert ref.outputs["logits"].shape == (batch, length, NUM_LABELS)
        assert ref.outputs["logits"].dtype == np.float32


def test_exported_model_passes_with_figures(exported, token_references) -> None:
    result = validate_model(
        exported("distilbert-token", Exporter.TORCHSCRIPT).path,
        token_references,
        task=Task.TOKEN_CLASSIFICATION,
    )
    assert result.passed, result.failures
    assert result.failures == []
    assert result.shapes == [list(s) for s in SHAPES]
    logits = result.outputs["logits"]
    assert 0 < logits.max_abs_diff < 1e-4  # a real comparison: float noise, not identity
    assert logits.passed
    assert (logits.atol, logits.rtol) == (1e-4, 1e-3)
    assert tuple(logits.worst_shape) in SHAPES
    agreement = result.task_agreement
    assert (agreement.metric, agreement.value, agreement.passed) == ("argmax_agreement", 1.0, True)


def test_a_corrupted_initializer_fails_naming_the_output_and_figures(
    exported, token_references, tmp_path: Path
) -> None:
    good = exported("distilbert-token", Exporter.TORCHSCRIPT).path
    name = largest_float_initializer(good)
    broken = tmp_path / "broken.onnx"
    edit_initializer(good, broken, name, lambda w: -w)

    result = validate_model(broken, token_references, task=Task.TOKEN_CLASSIFICATION)
    assert not result.passed
    logits = result.outputs["logits"]
    assert not logits.passed
    assert logits.max_abs_diff > 1e-2
    assert result.failures, "a failed validation says why"
    first = result.failures[0]
    assert first.startswith("output 'logits' at shape [1, 8]: max abs diff ")
    assert "exceed atol 0.0001 / rtol 0.001" in first
    figures = [f for f in result.failures if f.startswith("output 'logits'")]
    assert len(figures) == len(SHAPES)  # one per shape, each with its own figures
    assert f"{logits.max_abs_diff:.3g}" in " ".join(figures)


def test_a_model_wrong_only_on_long_sequences_fails_at_the_largest_shape(
    exported, token_references, tmp_path: Path
) -> None:
    """Positions 64 and up damaged: only the 128-token shape reaches them, so a validation
    that left out its largest shape would pass this model."""
    broken = tmp_path / "long.onnx"
    good = exported("distilbert-token", Exporter.TORCHSCRIPT).path
    # Not a constant shift of those rows, which the LayerNorm after them would remove.
    edit_initializer(
        good, broken, "position_embeddings.weight", lambda t: np.concatenate([t[:64], -3 * t[64:]])
    )

    result = validate_model(broken, token_references, task=Task.TOKEN_CLASSIFICATION)
    assert not result.passed
    assert result.outputs["logits"].worst_shape == [4, 128]
    (elementwise,) = [f for f in result.failures if f.startswith("output ")]
    assert elementwise.startswith("output 'logits' at shape [4, 128]: ")
    assert not result.task_agreement.passed


def test_shifted_logits_keep_the_argmax_but_fail_elementwise(
    exported, token_references, tmp_path: Path
) -> None:
    broken = tmp_path / "shifted.onnx"
    good = exported("distilbert-token", Exporter.TORCHSCRIPT).path
    edit_initializer(good, broken, "classifier.bias", lambda b: b + 0.75)

    result = validate_model(broken, token_references, task=Task.TOKEN_CLASSIFICATION)
    assert result.task_agreement.value == 1.0
    assert result.outputs["logits"].max_abs_diff == pytest.approx(0.75, abs=1e-4)
    assert not result.passed
    assert all("max abs diff 0.75" in f for f in result.failures)

    # Quantized variants are gated on agreement alone; the elementwise figures stay recorded.
    gated = validate_model(
        broken,
        token_references,
        task=Task.TOKEN_CLASSIFICATION,
        judging=Judging(DEFAULT_TOLERANCES["int8"], elementwise=False),
    )
    assert gated.passed
    assert not gated.outputs["logits"].passed
    assert gated.outputs["logits"].atol == DEFAULT_TOLERANCES["int8"].atol


def test_a_changed_argmax_fails_the_agreement_gate(
    exported, token_references, tmp_path: Path
) -> None:
    broken = tmp_path / "label0.onnx"
    good = exported("distilbert-token", Exporter.TORCHSCRIPT).path
    edit_initializer(good, broken, "classifier.bias", lambda b: b + np.eye(len(b))[0] * 100)

    result = validate_model(
        broken, token_references, task=Task.TOKEN_CLASSIFICATION, judging=RECORDED
    )
    assert not result.passed
    assert result.task_agreement.value < 0.99
    assert not result.task_agreement.passed
    (failure,) = result.failures
    assert failure.startswith(f"argmax_agreement {result.task_agreement.value:.4f} is below")
    assert "[[1, 8], [2, 37], [4, 128]]" in failure


def test_feature_extraction_is_judged_by_cosine_similarity(exported, source) -> None:
    references = compute_references(source("bert-encoder"), [(1, 8), (3, 21)])
    result = validate_model(
        exported("bert-encoder", Exporter.TORCHSCRIPT).path,
        references,
        task=Task.FEATURE_EXTRACTION,
    )
    assert result.passed, result.failures
    assert result.task_agreement.metric == "cosine_similarity"
    assert result.task_agreement.value == pytest.approx(1.0, abs=1e-6)
    assert set(result.outputs) == {"last_hidden_state", "pooler_output"}


def test_vision_model_validates_on_its_batches(exported, source) -> None:
    references = compute_references(source("vit-image"), [(1, 32), (3, 32)])
    result = validate_model(
        exported("vit-image", Exporter.TORCHSCRIPT).path,
        references,
        task=Task.IMAGE_CLASSIFICATION,
    )
    assert result.passed, result.failures
    assert result.task_agreement.value == 1.0
    # The full shape of every input, and the graph's own declaration (its resolution fixed).
    assert result.shapes == [[1, 32], [3, 32]]
    assert result.input_shapes == [
        {"pixel_values": [1, 3, 32, 32]},
        {"pixel_values": [3, 3, 32, 32]},
    ]
    (declared,) = result.graph_inputs
    assert (declared.name, declared.dtype, declared.shape) == (
        "pixel_values",
        "float",
        ["batch", 3, 32, 32],
    )


def test_tolerance_is_respected(exported, token_references) -> None:
    path = exported("distilbert-token", Exporter.TORCHSCRIPT).path
    strict = Tolerance(atol=1e-12, rtol=0.0)
    result = validate_model(
        path, token_references, task=Task.TOKEN_CLASSIFICATION, judging=Judging(strict)
    )
    assert not result.passed
    assert result.outputs["logits"].atol == 1e-12


# --- models whose outputs the test chooses ------------------------------------------------


def _reference(scores: np.ndarray, expected: np.ndarray, mask: np.ndarray | None = None):
    inputs = {"scores": scores}
    if mask is not None:
        inputs["attention_mask"] = mask
    return Reference(shape=scores.shape[:2], inputs=inputs, outputs={"logits": expected})


def test_token_agreement_ignores_padded_positions(tmp_path: Path) -> None:
    model = identity_model(tmp_path / "id.onnx")
    scores = np.random.default_rng(0).standard_normal((2, 4, 3)).astype(np.float32)
    mask = np.array([[1, 1, 1, 1], [1, 1, 0, 0]])
    expected = scores.copy()
    expected[1, 2:] = scores[1, 2:][..., ::-1] * 10  # different argmax, padded positions only
    refs = [_reference(scores, expected, mask)]

    token = validate_model(model, refs, task=Task.TOKEN_CLASSIFICATION, judging=RECORDED)
    assert token.task_agreement.value == 1.0
    whole = validate_model(model, refs, task=Task.MASKED_LM, judging=RECORDED)
    assert whole.task_agreement.value == 1.0  # masked LM is token-level too
    sequence = validate_model(model, refs, task=Task.SEQUENCE_CLASSIFICATION, judging=RECORDED)
    assert sequence.task_agreement.value < 1.0  # not token-level: every position counts


def test_cosine_ignores_scale_but_not_direction(tmp_path: Path) -> None:
    scores = np.random.default_rng(1).standard_normal((2, 5, 3)).astype(np.float32)
    mask = np.ones((2, 5), dtype=np.int64)
    refs = [_reference(scores, scores, mask)]

    doubled = identity_model(tmp_path / "double.onnx", scale=2.0)
    result = validate_model(doubled, refs, task=Task.FEATURE_EXTRACTION)
    assert result.task_agreement.value == pytest.approx(1.0)
    assert not result.passed  # fp32 is still gated elementwise
    assert result.outputs["logits"].max_abs_diff == pytest.approx(np.abs(scores).max(), rel=1e-6)

    negated = identity_model(tmp_path / "neg.onnx", scale=-1.0)
    result = validate_model(negated, refs, task=Task.FEATURE_EXTRACTION, judging=RECORDED)
    assert result.task_agreement.value == pytest.approx(-1.0)
    assert not result.passed


def test_nan_in_the_onnx_output_fails(tmp_path: Path) -> None:
    scores = np.ones((1, 2, 3), dtype=np.float32)
    model = identity_model(tmp_path / "nan.onnx", scale=float("nan"))
    result = validate_model(model, [_reference(scores, scores)], task=Task.TOKEN_CLASSIFICATION)
    assert not result.passed
    assert result.outputs["logits"].max_abs_diff == float("inf")


@pytest.mark.parametrize("task", [Task.TOKEN_CLASSIFICATION, Task.FEATURE_EXTRACTION])
@pytest.mark.parametrize("gate", [True, False])
def test_an_output_of_the_wrong_shape_fails_without_crashing(
    tmp_path: Path, task: Task, gate: bool
) -> None:
    scores = np.ones((1, 2, 3), dtype=np.float32)
    model = identity_model(tmp_path / "id.onnx")
    ref = _reference(scores, np.ones((1, 2, 4), dtype=np.float32))
    result = validate_model(
        model, [ref], task=task, judging=Judging(DEFAULT_TOLERANCES["fp32"], elementwise=gate)
    )
    assert not result.passed
    assert result.outputs["logits"].max_abs_diff == float("inf")
    assert result.task_agreement.value < result.task_agreement.minimum


@pytest.mark.parametrize("task", [Task.TOKEN_CLASSIFICATION, Task.FEATURE_EXTRACTION])
def test_a_primary_output_missing_from_the_onnx_model_is_named(tmp_path: Path, task) -> None:
    scores = np.ones((1, 2, 3), dtype=np.float32)
    ref = Reference((1, 2), {"scores": scores}, {"start_logits": scores, "logits": scores})
    result = validate_model(identity_model(tmp_path / "id.onnx"), [ref], task=task)
    assert not result.passed
    assert "output 'start_logits' is missing from the ONNX model" in result.failures
    assert not result.task_agreement.passed


def test_an_output_missing_from_the_onnx_model_is_named(tmp_path: Path) -> None:
    scores = np.ones((1, 2, 3), dtype=np.float32)
    ref = Reference((1, 2), {"scores": scores}, {"logits": scores, "hidden": scores})
    result = validate_model(
        identity_model(tmp_path / "id.onnx"), [ref], task=Task.TOKEN_CLASSIFICATION
    )
    assert not result.passed
    assert "output 'hidden' is missing from the ONNX model" in result.failures
    assert result.task_agreement.passed  # 'logits' is there and agrees


def test_run_session_feeds_only_the_declared_inputs(tmp_path: Path) -> None:
    session = create_session(
        identity_model(tmp_path / "id.onnx", scale=3.0), session_options(threads=1)
    )
    scores = np.ones((1, 2, 3), dtype=np.float32)
    out = run_session(session, {"scores": scores, "attention_mask": np.ones((1, 2))})
    assert list(out) == ["logits"]
    np.testing.assert_array_equal(out["logits"], scores * 3)


def test_constant_reference_outputs_are_warned_about(checkpoint, caplog) -> None:
    """Zeroed classifier weights: the logits are the bias everywhere, which any ONNX model
    returning that constant would match."""
    source = load_source(checkpoint("distilbert-token"), SourceConfig())
    with torch.no_grad():
        source.module.classifier.weight.zero_()
        source.module.classifier.bias.fill_(0.25)
    with caplog.at_level(logging.WARNING, logger="onnxport.verify.validate"):
        compute_references(source, [(1, 8), (2, 11)])
    said = [r.getMessage() for r in caplog.records]
    assert any("'logits' is the same value (0.25) everywhere" in m for m in said), said


def test_varying_reference_outputs_are_not_warned_about(source, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="onnxport.verify.validate"):
        compute_references(source("distilbert-token"), [(1, 8)])
    assert not [r for r in caplog.records if "same value" in r.getMessage()]


def _fixed_size_model(path: Path, *, declared: tuple) -> Path:
    """`logits = scores * weight`, the weight of shape [1, 4, 3]: a sequence length of 4 fixed
    inside the graph, whatever its input declares."""
    graph = helper.make_graph(
        [helper.make_node("Mul", ["scores", "weight"], ["logits"], name="/model/scale/Mul_1")],
        "fixed",
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, list(declared))],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "sequence", 3])],
        [numpy_helper.from_array(np.ones((1, 4, 3), dtype=np.float32), "weight")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize(
    ("declared", "reason"),
    [
        (
            ("batch", "sequence", 3),
            "a size inside the graph was fixed at export: ONNX Runtime stopped in Mul node "
            "/model/scale/Mul_1",
        ),
        (
            ("batch", 4, 3),
            "the graph declares scores with sizes fixed at export (dimension 1 is 4)",
        ),
    ],
)
def test_a_graph_that_refuses_a_shape_fails_in_the_users_terms_and_quietly(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], declared: tuple, reason: str
) -> None:
    """ONNX Runtime refuses the input: the validation fails saying which shape and why, keeps
    the runtime's words in the record, and ONNX Runtime itself writes nothing to stderr."""
    model = _fixed_size_model(tmp_path / "fixed.onnx", declared=declared)
    rng = np.random.default_rng(0)
    fits, longer, longest = (rng.standard_normal((1, n, 3)).astype(np.float32) for n in (4, 5, 7))
    refs = [_reference(fits, fits), _reference(longer, longer), _reference(longest, longest)]
    capfd.readouterr()
    result = validate_model(model, refs, task=Task.TOKEN_CLASSIFICATION)
    assert not result.passed
    assert result.failures == [
        f"the graph does not accept inputs of shape [1, 5, 3] or [1, 7, 3]: {reason}"
    ]
    assert [e.split(": ", 1)[0] for e in result.runtime_errors] == [
        "at shape [1, 5, 3]",
        "at shape [1, 7, 3]",
    ]
    assert all("[ONNXRuntimeError]" in e for e in result.runtime_errors)
    assert result.outputs["logits"].max_abs_diff == float("inf")
    assert [i.shape for i in result.graph_inputs] == [list(declared)]
    assert capfd.readouterr().err == ""


def _export(*attempts: AttemptRecord, cache: ExportCacheRecord | None = None) -> ExportRecord:
    return ExportRecord(
        exporter="torchscript", opset=18, seconds=1.0, attempts=list(attempts), cache=cache
    )


def _static(dimension: str) -> AttemptRecord:
    error = f"Found a static shape of 2 for dimension inputs['args'][0].shape[{dimension}]"
    return AttemptRecord(exporter="dynamo", ok=False, error=error)


def test_a_length_fixed_when_traced_suggests_validating_at_that_length() -> None:
    origin = export_origin(_export(_static("1")), ["input_ids"])
    assert origin.sentence == (
        "the torchscript exporter made the graph, because the dynamo exporter found that the "
        "model's code fixes input_ids dimension 1 at 2 when traced"
    )
    assert origin.remedies[0].startswith("validation.shapes: [[1, 2], [2, 2]] if every input")


def test_a_batch_fixed_when_traced_does_not_suggest_shapes_that_fix_the_length() -> None:
    (remedy,) = export_origin(_export(_static("0")), ["input_ids"]).remedies
    assert remedy == "changing the model code that fixes the batch size at 2"


def test_a_graph_from_the_export_cache_says_so_and_suggests_exporting_again() -> None:
    hit = ExportCacheRecord(status="hit", key="ab" * 16)
    origin = export_origin(_export(cache=hit), ["input_ids"])
    assert origin.sentence.endswith(f"(taken from export cache entry {'ab' * 16})")
    assert origin.remedies[0].startswith("execution.export_cache: false to export the graph")
