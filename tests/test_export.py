"""Export strategies: which one ran, what the ONNX graph looks like, and refusals."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from checks import machine_traces
from models import NUM_LABELS
from onnxport.errors import EXIT_BAD_INPUT, ConfigError, ExportError, SourceError
from onnxport.export import export_to_onnx
from onnxport.export.strategies import EXPORT_STRATEGIES, adapter_for
from onnxport.request.export_config import MAX_OPSET, MIN_OPSET, Exporter, ExternalData
from onnxport.request.sections import SourceConfig
from plain_models import FACTORY


def _dims(values) -> dict[str, list]:
    return {
        v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in values
    }


def _opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def _agrees_with_pytorch(path: Path, source, batch: int, size: int) -> None:
    """The exported file answers like PyTorch on a shape it was not traced with."""
    inputs = source.make_inputs(batch, size, 5)
    with torch.no_grad():
        expected = adapter_for(source)(*(inputs[n] for n in source.input_names))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    actual = session.run(None, {k: v.numpy() for k, v in inputs.items()})
    for want, got in zip(expected, actual, strict=True):
        np.testing.assert_allclose(got, want.numpy(), atol=1e-4, rtol=1e-3)


_WRITES: list[list[Path]] = []


def _count_writes(event: str, args: tuple) -> None:
    """An audit hook (installed once per process): files opened for writing, and renames
    onto a file, while `_written` records."""
    if not _WRITES:
        return
    if event == "open" and isinstance(args[0], str | Path) and args[1] and "w" in args[1]:
        _WRITES[-1].append(Path(args[0]))
    elif event == "os.rename":
        _WRITES[-1].append(Path(args[1]))


sys.addaudithook(_count_writes)


@contextlib.contextmanager
def _written() -> Iterator[list[Path]]:
    names: list[Path] = []
    _WRITES.append(names)
    try:
        yield names
    finally:
        _WRITES.remove(names)


@pytest.mark.parametrize("external", [ExternalData.NEVER, ExternalData.ALWAYS])
def test_the_dynamo_export_writes_the_model_file_once(source, tmp_path, external) -> None:
    """Traces stripped in memory, weights written where they go: one write of each file
    (there were three of the model file: the export, the stripping, the inlining)."""
    path = tmp_path / "model.onnx"
    with _written() as written:
        export_to_onnx(
            source("distilbert-token"), path, exporter=Exporter.DYNAMO, external_data=external
        )
    data = external is ExternalData.ALWAYS
    names = sorted(p.name for p in written if p.parent == tmp_path)
    assert names == ["model.onnx"] + ["model.onnx.data"] * data
    assert path.with_name("model.onnx.data").exists() == data
    assert machine_traces(path) == []
    _agrees_with_pytorch(path, source("distilbert-token"), 2, 21)


def test_torchscript_when_asked(exported, source) -> None:
    result = exported("bert-token", Exporter.TORCHSCRIPT)
    assert result.record.exporter == "torchscript"
    assert [a.exporter for a in result.record.attempts] == ["torchscript"]
    model = onnx.load(str(result.path))
    onnx.checker.check_model(model, full_check=True)
    assert _dims(model.graph.input) == {
        name: ["batch", "sequence"] for name in ("input_ids", "attention_mask", "token_type_ids")
    }
    assert _dims(model.graph.output)["logits"][:2] == ["batch", "sequence"]
    _agrees_with_pytorch(result.path, source("bert-token"), 3, 50)


def test_vision_model_has_a_dynamic_batch_only(exported, source) -> None:
    result = exported("vit-image", Exporter.TORCHSCRIPT)
    model = onnx.load(str(result.path))
    assert _dims(model.graph.input) == {"pixel_values": ["batch", 3, 32, 32]}
    assert _dims(model.graph.output) == {"logits": ["batch", 4]}
    _agrees_with_pytorch(result.path, source("vit-image"), 5, 32)


def test_feature_extraction_exports_every_output(exported) -> None:
    model = onnx.load(str(exported("bert-encoder", Exporter.TORCHSCRIPT).path))
    outputs = _dims(model.graph.output)
    assert outputs == {
        "last_hidden_state": ["batch", "sequence", 32],
        "pooler_output": ["batch", 32],
    }


def _signature(path: Path) -> tuple[dict[str, list], dict[str, list]]:
    model = onnx.load(str(path), load_external_data=False)
    return _dims(model.graph.input), _dims(model.graph.output)


def test_a_checkpoint_path_exports_as_its_loaded_source(exported, checkpoint, tmp_path) -> None:
    """A platform caller holding a training output passes the checkpoint directory itself."""
    loaded = exported("bert-token", Exporter.TORCHSCRIPT)
    out = tmp_path / "out" / "model.onnx"
    record = export_to_onnx(Path(checkpoint("bert-token")), out, exporter=Exporter.TORCHSCRIPT)
    assert record.exporter == "torchscript"
    assert _signature(out) == _signature(loaded.path)
    onnx.checker.check_model(str(out))


def test_a_weights_file_exports_with_the_source_config_given(plain, tmp_path: Path) -> None:
    settings = SourceConfig(factory=FACTORY, input_spec=plain.spec)
    out = tmp_path / "model.onnx"
    record = export_to_onnx(
        plain.safetensors, out, source_config=settings, exporter=Exporter.TORCHSCRIPT
    )
    assert record.exporter == "torchscript"
    inputs, outputs = _signature(out)
    assert list(inputs) == ["features", "mask"]
    assert list(outputs) == ["logits", "hidden"]
    # The default SourceConfig has no factory: the weights alone are refused, as load_source
    # refuses them.
    with pytest.raises(SourceError, match="weights without the model's code"):
        export_to_onnx(plain.safetensors, tmp_path / "default" / "model.onnx")


def test_a_source_config_beside_a_loaded_source_is_refused(source, tmp_path: Path) -> None:
    """It would have no effect: the Source was loaded by its own settings."""
    with pytest.raises(ConfigError, match="given a loaded Source"):
        export_to_onnx(source("bert-token"), tmp_path / "m.onnx", source_config=SourceConfig())
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("where", "message", "hint"),
    [
        ("missing", "source not found: ", "check the path"),
        ("training-output", "looks like a training output, not a checkpoint", "checkpoint"),
    ],
)
def test_a_bad_checkpoint_path_is_a_source_error(
    tmp_path: Path, where: str, message: str, hint: str
) -> None:
    (tmp_path / "training-output" / "checkpoint").mkdir(parents=True)
    out = tmp_path / "out" / "model.onnx"
    with pytest.raises(SourceError, match=message) as info:
        export_to_onnx(tmp_path / where, out)
    assert hint in (info.value.hint or "")
    assert info.value.exit_code == EXIT_BAD_INPUT
    assert not out.parent.exists()


def test_an_opset_below_dynamo_falls_back_to_torchscript(source, tmp_path: Path) -> None:
    record = export_to_onnx(source("roberta-sequence"), tmp_path / "m.onnx", opset_version=17)
    assert record.exporter == "torchscript"
    dynamo, torchscript = record.attempts
    assert (dynamo.exporter, dynamo.ok) == ("dynamo", False)
    assert dynamo.error == "opset 17 is not supported by the dynamo exporter (18-23)"
    assert (torchscript.exporter, torchscript.ok) == ("torchscript", True)
    assert _opset(onnx.load(str(tmp_path / "m.onnx"))) == 17


@pytest.mark.parametrize(
    ("opset", "exporter", "allowed"),
    [
        (MIN_OPSET - 1, Exporter.AUTO, "installed exporters (dynamo: 18-23, torchscript: 7-20)"),
        (MAX_OPSET + 1, Exporter.AUTO, "installed exporters (dynamo: 18-23, torchscript: 7-20)"),
        (21, Exporter.TORCHSCRIPT, "the torchscript exporter (7-20)"),
        (17, Exporter.DYNAMO, "the dynamo exporter (18-23)"),
    ],
)
def test_an_opset_no_chosen_exporter_supports_is_bad_input(
    source, tmp_path: Path, opset: int, exporter: Exporter, allowed: str
) -> None:
    with pytest.raises(ConfigError) as info:
        export_to_onnx(
            source("bert-encoder"), tmp_path / "m.onnx", opset_version=opset, exporter=exporter
        )
    assert f"opset {opset} is not supported" in str(info.value)
    assert allowed in str(info.value)
    assert info.value.exit_code == EXIT_BAD_INPUT
    assert list(tmp_path.iterdir()) == []


def test_every_exporter_failing_is_an_export_error_that_leaves_no_files(
    source, tmp_path: Path
) -> None:
    # Opset 9 has no dynamic Slice, which BERT's position ids need.
    with pytest.raises(ExportError) as info:
        export_to_onnx(
            source("roberta-sequence"),
            tmp_path / "m.onnx",
            opset_version=9,
            exporter=Exporter.TORCHSCRIPT,
        )
    message = str(info.value)
    assert "no exporter could convert RobertaForSequenceClassification" in message
    assert "torchscript:" in message
    assert "\n" not in message
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_an_operator_no_exporter_converts_is_named_with_a_workaround(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from onnxport.request.sections import SourceConfig
    from onnxport.sources import load_source

    save_file({}, tmp_path / "no_weights.safetensors")
    spec = tmp_path / "spec.yaml"
    spec.write_text("inputs: [{name: features, shape: [batch, 4]}]", encoding="utf-8")
    settings = SourceConfig(factory="plain_models:build_unsupported", input_spec=spec)
    bessel = load_source(tmp_path / "no_weights.safetensors", settings)
    with pytest.raises(ExportError) as info:
        export_to_onnx(bessel, tmp_path / "out" / "m.onnx")
    message = str(info.value)
    assert "no exporter could convert Bessel: unsupported operators aten::i0" in message
    # The dynamo exporter's summary, not its generic next steps, is what the message keeps.
    assert "No ONNX function found" in message
    assert "\x1b[" not in message
    assert "onnx.exporter: torchscript" in (info.value.hint or "")


def test_strategies_are_ordered_dynamo_first() -> None:
    assert [s.name for s in EXPORT_STRATEGIES] == ["dynamo", "torchscript"]
    assert {s.name for s in EXPORT_STRATEGIES} == {e.value for e in Exporter} - {"auto"}


@pytest.mark.parametrize(
    "exporter",
    [
        # The dynamo exporter takes ~10 s on 2 cores; the TorchScript one about 1 s.
        pytest.param(Exporter(s.name), marks=[pytest.mark.slow] if s.name == "dynamo" else [])
        for s in EXPORT_STRATEGIES
    ],
)
def test_each_strategy_exports_a_checked_model_with_named_dynamic_axes(
    exported, source, exporter: Exporter
) -> None:
    """Parametrized over the registry: a new strategy is tested without a new test."""
    result = exported("distilbert-token", exporter)
    record = result.record
    assert record.exporter == exporter.value
    assert [(a.exporter, a.ok, a.error) for a in record.attempts] == [(exporter.value, True, None)]
    assert record.opset == 18
    assert not result.path.with_name(result.path.name + ".data").exists()
    assert record.seconds > 0
    model = onnx.load(str(result.path))
    onnx.checker.check_model(model, full_check=True)
    assert _opset(model) == 18
    assert _dims(model.graph.input) == {
        "input_ids": ["batch", "sequence"],
        "attention_mask": ["batch", "sequence"],
    }
    assert _dims(model.graph.output) == {"logits": ["batch", "sequence", NUM_LABELS]}
    assert machine_traces(result.path) == [], "stack traces hold this machine's paths"
    _agrees_with_pytorch(result.path, source("distilbert-token"), 1, 29)
    _agrees_with_pytorch(result.path, source("distilbert-token"), 4, 64)


def test_adapter_returns_outputs_in_the_sources_order(source) -> None:
    loaded = source("bert-qa")
    inputs = loaded.example_inputs()
    with torch.no_grad():
        start, end = adapter_for(loaded)(*(inputs[n] for n in loaded.input_names))
        direct = loaded.module(**inputs)
    assert torch.equal(start, direct.start_logits)
    assert torch.equal(end, direct.end_logits)
