"""`conv_fp`: stable under YAML formatting and key order, sensitive to every setting."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from onnxport.errors import ConfigError
from onnxport.request.config import (
    ConversionConfig,
    load_conversion_config,
    parse_conversion_config,
)
from onnxport.request.fingerprints import CONV_FP_LENGTH, check_fingerprint, conversion_fingerprint

SPEC, EXEC = "abc123", "def456"


def _fp(config: ConversionConfig, spec: str = SPEC, exec_: str = EXEC, variant: str = "1") -> str:
    return conversion_fingerprint(spec, exec_, config, version=variant)


def _from_yaml(tmp_path: Path, text: str, name: str) -> ConversionConfig:
    directory = tmp_path / name
    directory.mkdir()
    (directory / "conversion.yaml").write_text(text, encoding="utf-8")
    return load_conversion_config(directory)


BLOCK_YAML = """\
target:
  format: onnx
onnx:
  opset_version: 18
  quantization: none
  run_smoke_test: true
output:
  filename_pattern: "model_{quantization}.onnx"
"""

# The same settings: other key order, flow style, comments, other quoting and spacing.
REORDERED_YAML = """\
# written by hand
output: {filename_pattern: 'model_{quantization}.onnx'}
onnx:   {run_smoke_test: yes, quantization: "none",   opset_version: 18}   # flow style
target:
    format: "onnx"
"""


def test_conv_fp_is_hex_of_fixed_length() -> None:
    fp = _fp(ConversionConfig())
    assert len(fp) == CONV_FP_LENGTH
    int(fp, 16)


def test_conv_fp_is_deterministic() -> None:
    assert _fp(ConversionConfig()) == _fp(ConversionConfig())


def test_conv_fp_ignores_yaml_formatting_and_key_order(tmp_path: Path) -> None:
    block = _from_yaml(tmp_path, BLOCK_YAML, "block")
    reordered = _from_yaml(tmp_path, REORDERED_YAML, "reordered")
    assert _fp(block) == _fp(reordered)


def test_conv_fp_depends_on_the_resolved_config_not_on_what_was_spelled_out(
    tmp_path: Path,
) -> None:
    """Leaving a setting at its default and writing the default give the same conversion."""
    minimal = _from_yaml(tmp_path, "onnx: {opset_version: 18}\n", "minimal")
    assert _fp(minimal) == _fp(_from_yaml(tmp_path, BLOCK_YAML, "block"))
    assert _fp(minimal) == _fp(ConversionConfig())


def test_conv_fp_treats_quantization_aliases_alike() -> None:
    int8 = parse_conversion_config({"onnx": {"quantization": "int8"}}, origin="a")
    dynamic = parse_conversion_config({"onnx": {"quantization": "dynamic"}}, origin="b")
    assert _fp(int8) == _fp(dynamic)


def test_conv_fp_ignores_fingerprint_case() -> None:
    assert _fp(ConversionConfig(), "ABC123", "DEF456") == _fp(ConversionConfig())


def test_conv_fp_ignores_the_execution_timeout() -> None:
    """How long the child may run cannot change the model, so it must not change conv_fp."""
    default = ConversionConfig()
    patient = default.with_overrides(execution={"timeout_seconds": 2})
    assert patient.execution.timeout_seconds == 2
    assert _fp(patient) == _fp(default)


@pytest.mark.parametrize(
    ("section", "values"),
    [
        ("onnx", {"opset_version": 17}),
        ("onnx", {"quantization": "int8"}),
        ("onnx", {"quantization": "fp16"}),
        ("onnx", {"optimize": "basic"}),
        ("onnx", {"run_smoke_test": False}),
        ("onnx", {"exporter": "torchscript"}),
        ("output", {"filename_pattern": "tagger_{quantization}.onnx"}),
        ("validation", {"shapes": [[1, 4]]}),
        ("validation", {"atol": 0.5}),
        ("validation", {"rtol": 0.5}),
        ("validation", {"min_task_agreement": 0.5}),
        ("validation", {"seed": 7}),
        ("source", {"task": "sequence-classification"}),
        ("source", {"allow_pickle": True}),
        ("source", {"trust_remote_code": True}),
    ],
)
def test_conv_fp_changes_with_any_setting(section: str, values: dict) -> None:
    default = ConversionConfig()
    changed = default.with_overrides(**{section: values})
    assert changed != default
    assert _fp(changed) != _fp(default)


def _leaf_settings() -> list[tuple[str, str]]:
    config = ConversionConfig()
    return [
        (section, name)
        for section in ConversionConfig.model_fields
        if section != "execution"
        for name in type(getattr(config, section)).model_fields
    ]


@pytest.mark.parametrize(("section", "name"), _leaf_settings())
def test_conv_fp_covers_every_setting_outside_execution(section: str, name: str) -> None:
    """Whatever settings the config gains, each one takes part in the fingerprint."""
    default = ConversionConfig()
    part = getattr(default, section).model_copy(update={name: "__changed__"})
    changed = default.model_copy(update={section: part})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydantic warns that the sentinel has the wrong type
        assert _fp(changed) != _fp(default)


@pytest.mark.parametrize(
    ("spec", "exec_", "variant"),
    [("abc124", EXEC, "1"), (SPEC, "def457", "1"), (SPEC, EXEC, "2")],
)
def test_conv_fp_changes_with_the_parent(spec: str, exec_: str, variant: str) -> None:
    assert _fp(ConversionConfig(), spec, exec_, variant) != _fp(ConversionConfig())


def test_check_fingerprint_accepts_hex_and_lowercases() -> None:
    assert check_fingerprint("abc123", "parent_spec_fp") == "abc123"
    assert check_fingerprint("ABC123", "parent_spec_fp") == "abc123"
    assert check_fingerprint("0" * 64, "parent_spec_fp") == "0" * 64


@pytest.mark.parametrize(
    "value",
    [
        "xyz123",
        "abc-123",
        "abc 123",
        "",
        "abc",
        "0" * 65,
        "../abc1",
        "abc123\n",
        "ｆｆｆｆ",
        None,
        123,
    ],
)
def test_malformed_fingerprint_is_a_config_error_naming_it(value: object) -> None:
    with pytest.raises(ConfigError) as raised:
        check_fingerprint(value, "parent_exec_fp")  # type: ignore[arg-type]
    assert "parent_exec_fp" in str(raised.value)
    assert raised.value.exit_code == 2


def test_conversion_fingerprint_rejects_malformed_parent_fingerprints() -> None:
    with pytest.raises(ConfigError, match="parent_spec_fp"):
        conversion_fingerprint("not-hex!", EXEC, ConversionConfig())


@pytest.mark.parametrize(
    ("section", "key"), [("quantize", "calibration_file"), ("validation", "eval_file")]
)
def test_conv_fp_changes_with_the_contents_of_a_named_data_file(
    tmp_path: Path, section: str, key: str
) -> None:
    data = tmp_path / "data.jsonl"
    data.write_text('{"text": "Senior engineer at Contoso"}\n', encoding="utf-8")
    config = ConversionConfig().with_overrides(**{section: {key: str(data)}})
    original = _fp(config)
    data.write_text('{"text": "Data scientist at Fabrikam"}\n', encoding="utf-8")
    assert _fp(config) != original, "new samples under the same name reused the old result"
    data.write_text('{"text": "Senior engineer at Contoso"}\n', encoding="utf-8")
    assert _fp(config) == original  # the contents count, not when they were written
