"""Plain PyTorch sources: a torch.export program, a TorchScript module, and a state dict with
its factory and input spec convert and validate like a checkpoint; unsafe files are refused."""

from __future__ import annotations

import io
import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import yaml

from onnxport.artifact.manifest import read_manifest, sha256_file
from onnxport.errors import EXIT_BAD_INPUT, ConfigError, SourceError
from onnxport.request.config import parse_conversion_config
from onnxport.request.sections import SourceConfig
from onnxport.sources import load_source
from onnxport.sources.plain import DEFAULT_SHAPES, EXAMPLE_SHAPE, PositionalModule
from onnxport.tasks import Modality, Task
from plain_models import (
    CLASSES,
    FACTORY,
    FEATURES,
    SPEC,
    PlainFiles,
    build_model,
    example_args,
)
from support import convert_with, rewrite_member

TORCHSCRIPT_EXPORTER = {"exporter": "torchscript"}


def _settings(**values) -> SourceConfig:
    return SourceConfig(**values)


def _refused(path: Path, settings: SourceConfig | None = None) -> str:
    with pytest.raises(SourceError) as info:
        load_source(path, settings)
    assert info.value.exit_code == EXIT_BAD_INPUT
    return str(info.value)


def _check_converted(output: Path, path: Path, kind: str, outputs: tuple[str, ...]) -> None:
    """The manifest says what was converted, and the ONNX file computes what the model does
    on a shape validation did not use."""
    manifest = read_manifest(output)
    assert manifest.source.kind == kind
    assert manifest.source.architecture == "TinyEncoder"
    assert manifest.source.task == Task.FEATURE_EXTRACTION.value
    assert manifest.source.weights_sha256 == {path.name: sha256_file(path)}
    (fp32,) = manifest.outputs
    assert fp32.validation is not None and fp32.validation.passed
    assert set(fp32.validation.outputs) == set(outputs)
    assert fp32.validation.task_agreement.metric == "cosine_similarity"
    session = ort.InferenceSession(str(output / fp32.file), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["features", "mask"]
    features, mask = example_args(batch=3, length=29)
    mask[-1, 10:] = 0
    got = session.run(None, {"features": features.numpy(), "mask": mask.numpy()})
    with torch.no_grad():
        expected = build_model()(features, mask)
    for actual, reference in zip(got, expected):
        np.testing.assert_allclose(actual, reference.numpy(), atol=1e-5)


# --- each kind converts and validates -------------------------------------------------------


def test_torch_export_program_converts(plain: PlainFiles, tmp_path: Path) -> None:
    output = tmp_path / "out"
    convert_with(plain.program, output, onnx=TORCHSCRIPT_EXPORTER)
    _check_converted(output, plain.program, "torch-export", ("output_0", "output_1"))


def test_torchscript_module_converts_with_the_torchscript_exporter(
    plain: PlainFiles, tmp_path: Path
) -> None:
    output = tmp_path / "out"
    convert_with(plain.torchscript, output, source={"input_spec": plain.spec})
    _check_converted(output, plain.torchscript, "torchscript", ("logits", "hidden"))
    attempts = read_manifest(output).export.attempts
    assert [(a.exporter, a.ok) for a in attempts] == [("dynamo", False), ("torchscript", True)]
    assert "cannot trace a TorchScript module" in (attempts[0].error or "")


def test_state_dict_with_factory_and_spec_converts(plain: PlainFiles, tmp_path: Path) -> None:
    output = tmp_path / "out"
    convert_with(
        plain.safetensors,
        output,
        onnx=TORCHSCRIPT_EXPORTER,
        source={"factory": FACTORY, "input_spec": plain.spec},
    )
    _check_converted(output, plain.safetensors, "state-dict", ("logits", "hidden"))


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["program", "state-dict"])
def test_plain_sources_convert_with_the_dynamo_exporter(
    plain: PlainFiles, tmp_path: Path, kind: str
) -> None:
    output = tmp_path / "out"
    if kind == "program":
        convert_with(plain.program, output)
        _check_converted(output, plain.program, "torch-export", ("output_0", "output_1"))
    else:
        convert_with(
            plain.safetensors, output, source={"factory": FACTORY, "input_spec": plain.spec}
        )
        _check_converted(output, plain.safetensors, "state-dict", ("logits", "hidden"))
    assert read_manifest(output).export.exporter == "dynamo"


def test_cli_converts_a_state_dict(cli, plain: PlainFiles, tmp_path: Path) -> None:
    run = cli(
        "convert", plain.safetensors, "-o", tmp_path / "out", "--exporter", "torchscript",
        "--factory", FACTORY, "--input-spec", plain.spec,
    )  # fmt: skip
    assert run.code == 0, run.stderr
    assert read_manifest(tmp_path / "out").source.kind == "state-dict"


# --- what a plain source yields -------------------------------------------------------------


def test_program_inputs_come_from_the_program(plain: PlainFiles) -> None:
    source = load_source(plain.program)
    assert source.kind == "torch-export"
    assert source.modality is Modality.TENSOR
    assert source.input_names == ("features", "mask")
    assert source.output_names == ("output_0", "output_1")
    assert source.dynamic_axes == {
        "features": {0: "batch", 1: "size"},
        "mask": {0: "batch", 1: "size"},
    }
    inputs = source.make_inputs(3, 7, 0)
    assert inputs["features"].shape == (3, 7, FEATURES)
    assert inputs["features"].dtype == torch.float32
    assert inputs["mask"].dtype == torch.int64


def test_spec_inputs_follow_shapes_dtypes_and_ranges(plain: PlainFiles) -> None:
    source = load_source(plain.safetensors, _settings(factory=FACTORY, input_spec=plain.spec))
    assert source.input_names == ("features", "mask")
    assert source.output_names == ("logits", "hidden")
    assert source.dynamic_axes == {
        "features": {0: "batch", 1: "sequence"},
        "mask": {0: "batch", 1: "sequence"},
    }
    assert source.example_shape == EXAMPLE_SHAPE
    assert source.default_shapes == DEFAULT_SHAPES
    inputs = source.make_inputs(4, 21, 5)
    assert inputs["features"].shape == (4, 21, FEATURES)
    assert set(inputs["mask"].unique().tolist()) <= {0, 1}
    again = source.make_inputs(4, 21, 5)
    assert all(torch.equal(inputs[k], again[k]) for k in inputs)
    with torch.no_grad():
        logits, _ = source.module(**inputs)
    assert logits.shape == (4, CLASSES)


def test_spec_task_decides_the_metric(plain: PlainFiles, tmp_path: Path) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({**SPEC, "task": "sequence-classification"}), encoding="utf-8")
    source = load_source(plain.safetensors, _settings(factory=FACTORY, input_spec=spec))
    assert source.task is Task.SEQUENCE_CLASSIFICATION
    overridden = _settings(factory=FACTORY, input_spec=spec, task=Task.FEATURE_EXTRACTION)
    assert load_source(plain.safetensors, overridden).task is Task.FEATURE_EXTRACTION


def test_positional_module_flattens_outputs_and_keeps_its_model_in_eval_mode() -> None:
    model = build_model()
    wrapper = PositionalModule(model, ("features", "mask")).train()
    features, mask = example_args()
    logits, hidden = wrapper(mask=mask, features=features)
    assert logits.shape == (2, CLASSES)
    assert hidden.shape == (2, 13, 32)
    assert not model.training


# --- pickles ------------------------------------------------------------------------------


def test_pickled_state_dict_is_refused_without_the_opt_in(plain: PlainFiles) -> None:
    message = _refused(plain.pickle, _settings(factory=FACTORY, input_spec=plain.spec))
    assert "is a pickle (torch.save)" in message
    assert "source.allow_pickle: true" in message

    allowed = _settings(factory=FACTORY, input_spec=plain.spec, allow_pickle=True)
    source = load_source(plain.pickle, allowed)
    assert source.weight_files == (plain.pickle,)
    reference = build_model().state_dict()
    loaded = source.module.model.state_dict()
    assert all(torch.equal(loaded[k], reference[k]) for k in reference)


def test_cli_refuses_a_pickle_without_the_opt_in(cli, plain: PlainFiles, tmp_path: Path) -> None:
    run = cli(
        "convert", plain.pickle, "-o", tmp_path / "out",
        "--factory", FACTORY, "--input-spec", plain.spec,
    )  # fmt: skip
    assert run.code == EXIT_BAD_INPUT
    assert "source.allow_pickle: true (--allow-pickle)" in run.stderr
    assert not (tmp_path / "out").exists()


def test_a_pickled_module_is_refused_even_with_the_opt_in(plain: PlainFiles) -> None:
    settings = _settings(factory=FACTORY, input_spec=plain.spec, allow_pickle=True)
    message = _refused(plain.pickled_module, settings)
    assert "weights_only=True" in message
    assert "state_dict()" in message
    # Why it was refused, in one line, and never torch's advice to load it unrestricted.
    assert "which is not a tensor or a plain container" in message
    assert "weights_only=False" not in message and "set to `False`" not in message
    assert "\x1b[" not in message and "\n" not in message


class _NotATensor:
    pass


def test_program_with_pickled_example_inputs_is_refused(plain: PlainFiles, tmp_path: Path) -> None:
    # torch.export.load retries such inputs with an unrestricted torch.load: onnxport must not.
    buffer = io.BytesIO()
    torch.save({"x": _NotATensor()}, buffer)
    tampered = rewrite_member(
        plain.program, tmp_path / "tampered.pt2", "sample_inputs/model.pt", buffer.getvalue()
    )
    message = _refused(tampered)
    assert "example inputs that are not plain tensors" in message
    assert "source.allow_pickle: true" in message


def test_program_with_pickled_weights_is_refused(plain: PlainFiles, tmp_path: Path) -> None:
    with zipfile.ZipFile(plain.program) as archive:
        name = next(n for n in archive.namelist() if n.endswith("_weights_config.json"))
        config = json.loads(archive.read(name))
    for meta in config["config"].values():
        meta["use_pickle"] = True
    content = json.dumps(config).encode()
    tampered = rewrite_member(
        plain.program, tmp_path / "tampered.pt2", "_weights_config.json", content
    )
    assert "holds pickled data" in _refused(tampered)


def test_a_plain_pickle_is_not_taken_for_an_archive(tmp_path: Path) -> None:
    file = tmp_path / "weights.bin"
    file.write_bytes(pickle.dumps({"w": [1.0]}, protocol=2))
    message = _refused(file)
    assert "without the model's code" in message
    assert "source.factory" in message


# --- what a plain source needs --------------------------------------------------------------


def test_torchscript_needs_an_input_spec_and_names_its_arguments(plain: PlainFiles) -> None:
    message = _refused(plain.torchscript)
    assert "does not record its input shapes" in message
    assert "features, mask" in message
    assert "source.input_spec" in message


def test_weights_need_a_factory_and_a_spec(plain: PlainFiles) -> None:
    message = _refused(plain.safetensors)
    assert "needs source.factory and source.input_spec" in message
    assert "needs source.input_spec" in _refused(plain.safetensors, _settings(factory=FACTORY))


def test_factory_with_a_directory_is_refused(tmp_path: Path) -> None:
    assert "is a directory" in _refused(tmp_path, _settings(factory=FACTORY))


@pytest.mark.parametrize("kind", ["program", "torchscript"])
def test_factory_with_a_program_is_refused(plain: PlainFiles, kind: str) -> None:
    path = plain.program if kind == "program" else plain.torchscript
    message = _refused(path, _settings(factory=FACTORY, input_spec=plain.spec))
    assert "holds its model's code" in message
    assert "leave source.factory out" in message


def test_an_unknown_file_is_refused_listing_what_onnxport_loads(tmp_path: Path) -> None:
    file = tmp_path / "model.onnx"
    file.write_bytes(b"\x08\x07")
    message = _refused(file)
    assert "does not know how to load" in message
    assert ".pt2" in message


@pytest.mark.parametrize("factory", ["no_colon", "a:b:c", ":build", "mod:"])
def test_factory_must_be_module_and_callable(factory: str) -> None:
    with pytest.raises(ConfigError, match="module:callable"):
        parse_conversion_config({"source": {"factory": factory}}, origin="test")


@pytest.mark.parametrize(
    ("factory", "fragment"),
    [
        ("no_such_module_for_onnxport:build", "cannot import 'no_such_module_for_onnxport'"),
        ("plain_models:missing", "has no 'missing'"),
        ("plain_models:not_a_module", "returned a str, not a torch.nn.Module"),
        ("plain_models:FEATURES", "names a int, not a callable"),
    ],
)
def test_factory_errors_name_the_problem(plain: PlainFiles, factory: str, fragment: str) -> None:
    message = _refused(plain.safetensors, _settings(factory=factory, input_spec=plain.spec))
    assert fragment in message


def test_factory_module_is_imported_from_the_current_directory(
    plain: PlainFiles, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "onnxport_user_project.py").write_text(
        "from plain_models import build_model\n", encoding="utf-8"
    )
    monkeypatch.chdir(tmp_path)
    source = load_source(
        plain.safetensors,
        _settings(factory="onnxport_user_project:build_model", input_spec=plain.spec),
    )
    assert source.architecture == "TinyEncoder"


def test_weights_that_do_not_fit_the_factory_are_refused(plain: PlainFiles, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    state = build_model().state_dict()
    state.pop("head.bias")
    state["extra.weight"] = torch.zeros(1)
    file = tmp_path / "other.safetensors"
    save_file(state, file)
    message = _refused(file, _settings(factory=FACTORY, input_spec=plain.spec))
    assert "1 missing and 1 unexpected" in message
    assert "head.bias" in message


def _spec_file(tmp_path: Path, spec: object) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ({"inputs": []}, "inputs"),
        ({"inputs": [{"name": "x", "dtype": "complex64", "shape": [1]}]}, "dtype"),
        ({"inputs": [{"name": "x", "shape": [0]}]}, "at least 1"),
        ({"inputs": [{"name": "x", "shape": ["a b"]}]}, "identifiers"),
        ({"inputs": [{"name": "x", "shape": [1], "range": [3, 1]}]}, "low < high"),
        ({"inputs": [{"name": "x", "shape": [1]}, {"name": "x", "shape": [1]}]}, "unique"),
        ({"inputs": [{"name": "x", "shape": [1]}], "typo": 1}, "typo"),
        ([1, 2], "input spec"),
    ],
)
def test_invalid_input_spec_is_refused(
    plain: PlainFiles, tmp_path: Path, spec: object, fragment: str
) -> None:
    path = _spec_file(tmp_path, spec)
    message = _refused(plain.safetensors, _settings(factory=FACTORY, input_spec=path))
    assert "is invalid" in message
    assert fragment in message


def test_a_spec_that_does_not_fit_the_model_says_so(plain: PlainFiles, tmp_path: Path) -> None:
    wrong = {"inputs": [{**SPEC["inputs"][0], "shape": ["batch", "sequence", FEATURES + 1]}]}
    wrong["inputs"].append(SPEC["inputs"][1])
    path = _spec_file(tmp_path, wrong)
    message = _refused(plain.safetensors, _settings(factory=FACTORY, input_spec=path))
    assert "fails on inputs built from its input spec" in message
    assert "range: [low, high]" in message


def test_a_spec_naming_too_many_outputs_is_refused(plain: PlainFiles, tmp_path: Path) -> None:
    path = _spec_file(tmp_path, {**SPEC, "outputs": ["a", "b", "c"]})
    message = _refused(plain.safetensors, _settings(factory=FACTORY, input_spec=path))
    assert "names 3 outputs" in message
    assert "returns 2 tensors" in message


def test_a_spec_with_another_input_count_than_the_program(
    plain: PlainFiles, tmp_path: Path
) -> None:
    path = _spec_file(tmp_path, {"inputs": SPEC["inputs"][:1]})
    message = _refused(plain.program, _settings(input_spec=path))
    assert "takes 2 (features, mask)" in message
