"""conversion.yaml and experiment.yaml: what is accepted, and what is refused with a message."""

from __future__ import annotations

from pathlib import Path

import pydantic
import pytest
import yaml

from onnxport.errors import EXIT_BAD_INPUT, ConfigError
from onnxport.request.config import (
    CONVERSION_CONFIG_FILENAME,
    EXPERIMENT_CONFIG_FILENAME,
    ConversionConfig,
    ExperimentConfig,
    load_conversion_config,
    load_experiment_config,
    parse_conversion_config,
)
from onnxport.request.export_config import (
    DEFAULT_OPSET,
    MAX_OPSET,
    MIN_OPSET,
    Exporter,
    OptimizeLevel,
    Quantization,
)
from onnxport.tasks import Task

README = Path(__file__).parents[1] / "README.md"
# The README shows the text models' validation defaults, which a config leaves unset (null:
# the source's defaults); every other value it shows is the default.
README_SHOWS_SOURCE_DEFAULTS = {"validation": {"shapes"}}


def readme_conversion_yaml() -> str:
    """The yaml block under the README's `### conversion.yaml` heading."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("### conversion.yaml") :]
    return section.split("```yaml\n", 1)[1].split("```", 1)[0]


def _config_file(tmp_path: Path, text: str | bytes) -> Path:
    path = tmp_path / CONVERSION_CONFIG_FILENAME
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def _refused(tmp_path: Path, text: str | bytes) -> str:
    path = _config_file(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_conversion_config(path)
    assert info.value.exit_code == EXIT_BAD_INPUT
    return str(info.value)


def test_defaults_are_the_documented_ones() -> None:
    config = ConversionConfig()
    assert config.target.format == "onnx"
    assert config.onnx.opset_version == DEFAULT_OPSET == 18
    assert config.onnx.quantization is Quantization.NONE
    assert config.onnx.optimize is OptimizeLevel.NONE
    assert config.onnx.exporter is Exporter.AUTO
    assert config.onnx.run_smoke_test is True
    assert config.output.filename("fp32") == "model_fp32.onnx"
    assert config.output.keep_debug_metadata is False
    assert config.validation.shapes is None
    assert config.validation.min_task_agreement == 0.99
    assert config.source.allow_pickle is False
    assert config.source.trust_remote_code is False


def test_the_readme_conversion_yaml_loads_and_shows_every_setting_at_its_default(
    tmp_path: Path,
) -> None:
    data = yaml.safe_load(readme_conversion_yaml())
    config = load_conversion_config(_config_file(tmp_path, readme_conversion_yaml()))
    assert config.validation.shapes == [(1, 8), (2, 37), (4, 128)]
    defaults = ConversionConfig().model_dump(mode="json")
    assert data.keys() == defaults.keys(), "a section is missing from the README"
    for section, values in defaults.items():
        shown = data[section]
        assert shown.keys() == values.keys(), f"README's {section}: not every setting shown"
        differ = {
            key
            for key, value in config.model_dump(mode="json")[section].items()
            if value != values[key]
        }
        assert differ == README_SHOWS_SOURCE_DEFAULTS.get(section, set()), section


def test_design_minimal_example_loads_from_its_directory(tmp_path: Path) -> None:
    _config_file(
        tmp_path,
        "target:   {format: onnx}\n"
        "onnx:     {opset_version: 17, quantization: none, run_smoke_test: false}\n"
        'output:   {filename_pattern: "resume_ner_{quantization}.onnx"}\n',
    )
    config = load_conversion_config(tmp_path)
    assert config.onnx.opset_version == 17
    assert config.onnx.run_smoke_test is False
    assert config.output.filename("int8") == "resume_ner_int8.onnx"


def test_keep_debug_metadata_is_read_from_yaml(tmp_path: Path) -> None:
    config = load_conversion_config(_config_file(tmp_path, "output: {keep_debug_metadata: true}\n"))
    assert config.output.keep_debug_metadata is True
    message = _refused(tmp_path, "output: {keep_debug_metadata: sometimes}\n")
    assert "output.keep_debug_metadata: Input should be a valid boolean" in message


def test_strings_become_enums(tmp_path: Path) -> None:
    config = load_conversion_config(
        _config_file(
            tmp_path,
            "onnx: {exporter: torchscript, optimize: basic}\n"
            "source: {task: token-classification}\n",
        )
    )
    assert config.onnx.exporter is Exporter.TORCHSCRIPT
    assert config.onnx.optimize is OptimizeLevel.BASIC
    assert config.source.task is Task.TOKEN_CLASSIFICATION


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("onnx: {opset_versoin: 18}\n", "onnx.opset_versoin"),
        ("outputs: {filename_pattern: 'model_{quantization}.onnx'}\n", "outputs"),
        ("validation: {tolerance: 0.1}\n", "validation.tolerance"),
        ("source: {allow_pickles: true}\n", "source.allow_pickles"),
    ],
)
def test_unknown_key_is_refused_naming_file_and_key(tmp_path: Path, text: str, key: str) -> None:
    message = _refused(tmp_path, text)
    assert f"{key}: unknown key" in message
    assert str(tmp_path / CONVERSION_CONFIG_FILENAME) in message


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("onnx: {opset_version: eighteen}\n", "onnx.opset_version"),
        ("onnx: {run_smoke_test: maybe}\n", "onnx.run_smoke_test"),
        ("onnx: {exporter: tensorrt}\n", "onnx.exporter"),
        ("onnx: [18]\n", "onnx"),
        ("target: {format: tflite}\n", "target.format"),
        ("validation: {shapes: [[1, two]]}\n", "validation.shapes"),
        ("source: {task: translation}\n", "source.task"),
        ("execution: {timeout_seconds: -1}\n", "execution.timeout_seconds"),
    ],
)
def test_wrong_type_or_value_is_refused_naming_the_key(tmp_path: Path, text: str, key: str) -> None:
    message = _refused(tmp_path, text)
    assert f"{key}" in message
    assert "unknown key" not in message


@pytest.mark.parametrize("opset", [MIN_OPSET - 1, MAX_OPSET + 1, 0, -3, 99])
def test_opset_outside_the_exporters_range_is_refused(tmp_path: Path, opset: int) -> None:
    message = _refused(tmp_path, f"onnx: {{opset_version: {opset}}}\n")
    assert f"opset {opset} is not supported" in message
    assert "installed exporters (dynamo: 18-23, torchscript: 7-20)" in message


@pytest.mark.parametrize(
    ("exporter", "opset", "allowed"), [("torchscript", 21, "7-20"), ("dynamo", 17, "18-23")]
)
def test_an_opset_the_chosen_exporter_does_not_support_is_refused_when_read(
    tmp_path: Path, exporter: str, opset: int, allowed: str
) -> None:
    message = _refused(tmp_path, f"onnx: {{exporter: {exporter}, opset_version: {opset}}}\n")
    assert f"opset {opset} is not supported by the {exporter} exporter ({allowed})" in message
    with pytest.raises(ConfigError, match=f"the {exporter} exporter"):
        ConversionConfig().with_overrides(onnx={"exporter": exporter, "opset_version": opset})


@pytest.mark.parametrize("opset", [MIN_OPSET, 17, 18, MAX_OPSET])
def test_opsets_inside_the_range_are_accepted(tmp_path: Path, opset: int) -> None:
    config = load_conversion_config(_config_file(tmp_path, f"onnx: {{opset_version: {opset}}}\n"))
    assert config.onnx.opset_version == opset


@pytest.mark.parametrize("text", ["", "   \n\n", "\t\n"])
def test_empty_file_is_refused(tmp_path: Path, text: str) -> None:
    assert "is empty" in _refused(tmp_path, text)


@pytest.mark.parametrize(("text", "kind"), [("- onnx\n- output\n", "list"), ("42\n", "int")])
def test_a_document_that_is_not_a_mapping_is_refused(tmp_path: Path, text: str, kind: str) -> None:
    message = _refused(tmp_path, text)
    assert "expected a mapping" in message
    assert kind in message


def test_invalid_yaml_is_refused_on_one_line(tmp_path: Path) -> None:
    message = _refused(tmp_path, "onnx: {opset_version: 18\noutput: [\n")
    assert "is not valid YAML" in message
    assert "\n" not in message


def test_undecodable_file_is_refused(tmp_path: Path) -> None:
    assert "cannot read" in _refused(tmp_path, b"onnx: {quantization: \xff\xfe}\n")


def test_missing_file_is_refused_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="conversion config not found") as info:
        load_conversion_config(tmp_path / "nope.yaml")
    assert "nope.yaml" in str(info.value)


def test_directory_without_conversion_yaml_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=CONVERSION_CONFIG_FILENAME):
        load_conversion_config(tmp_path)


@pytest.mark.parametrize(
    ("spelling", "expected"),
    [
        ("dynamic", Quantization.INT8),
        ("DYNAMIC", Quantization.INT8),
        (" int8-dynamic ", Quantization.INT8),
        ("int8", Quantization.INT8),
        ("static", Quantization.INT8_STATIC),
        ("int8-static", Quantization.INT8_STATIC),
        ("fp16", Quantization.FP16),
        ("none", Quantization.NONE),
    ],
)
def test_quantization_spellings(tmp_path: Path, spelling: str, expected: Quantization) -> None:
    config = load_conversion_config(
        _config_file(tmp_path, f"onnx: {{quantization: '{spelling}'}}\n")
    )
    assert config.onnx.quantization is expected


def test_unknown_quantization_is_refused(tmp_path: Path) -> None:
    assert "onnx.quantization" in _refused(tmp_path, "onnx: {quantization: int2}\n")


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [
        ("../model_{quantization}.onnx", "plain file name"),
        ("sub/model_{quantization}.onnx", "plain file name"),
        ("/tmp/model_{quantization}.onnx", "plain file name"),
        ("sub\\\\model_{quantization}.onnx", "plain file name"),
        ("~model_{quantization}.onnx", "plain file name"),
        ("model.onnx", "{quantization}"),
        ("model_fp32.onnx", "{quantization}"),
        ("model_{quantization}.bin", "must end with '.onnx'"),
        ("model_{quantization}_{seed}.onnx", "placeholder other than"),
        ("model_{quantization}_{0}.onnx", "placeholder other than"),
    ],
)
def test_filename_pattern_must_be_a_plain_name_per_variant(
    tmp_path: Path, pattern: str, reason: str
) -> None:
    message = _refused(tmp_path, f'output: {{filename_pattern: "{pattern}"}}\n')
    assert "output.filename_pattern" in message
    assert reason in message


def test_filename_pattern_gives_each_variant_its_own_file(tmp_path: Path) -> None:
    config = load_conversion_config(
        _config_file(tmp_path, 'output: {filename_pattern: "ner-{quantization}.onnx"}\n')
    )
    names = {config.output.filename(v) for v in ("fp32", "int8", "fp16")}
    assert names == {"ner-fp32.onnx", "ner-int8.onnx", "ner-fp16.onnx"}


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("validation: {shapes: []}\n", "at least one shape"),
        ("validation: {shapes: [[0, 8]]}\n", "outside 1..65536"),
        ("validation: {shapes: [[1, 70000]]}\n", "outside 1..65536"),
        ("validation: {shapes: [[1, 8, 3]]}\n", "validation.shapes"),
        ("validation: {atol: 0}\n", "validation.atol"),
        ("validation: {rtol: -0.1}\n", "validation.rtol"),
        ("validation: {min_task_agreement: 1.5}\n", "validation.min_task_agreement"),
    ],
)
def test_validation_settings_are_range_checked(tmp_path: Path, text: str, fragment: str) -> None:
    assert fragment in _refused(tmp_path, text)


def test_several_problems_are_reported_together(tmp_path: Path) -> None:
    message = _refused(tmp_path, "onnx: {opset_version: 99, typo: 1}\n")
    assert "onnx.opset_version" in message
    assert "onnx.typo: unknown key" in message


def test_relative_files_are_read_from_the_directory_of_the_conversion_yaml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    absolute = tmp_path / "shared" / "samples.txt"
    (config_dir / CONVERSION_CONFIG_FILENAME).write_text(
        "validation: {eval_file: data/eval.jsonl}\n"
        f"quantize: {{calibration_file: {absolute}}}\n"
        "source: {input_spec: spec.yaml}\n",
        encoding="utf-8",
    )
    monkeypatch.chdir(elsewhere)  # the working directory plays no part
    config = load_conversion_config(Path("..") / "config")
    assert config.validation.eval_file == str(config_dir.resolve() / "data" / "eval.jsonl")
    assert config.source.input_spec == config_dir.resolve() / "spec.yaml"
    assert config.quantize.calibration_file == absolute
    # Built in code, without a file: the working directory's, when the file is read.
    assert (
        ConversionConfig()
        .with_overrides(validation={"eval_file": "eval.jsonl"})
        .validation.eval_file
        == "eval.jsonl"
    )


def test_parse_accepts_none_as_all_defaults() -> None:
    assert parse_conversion_config(None, origin="test") == ConversionConfig()


def test_config_is_frozen() -> None:
    config = ConversionConfig()
    with pytest.raises(pydantic.ValidationError):
        config.onnx.opset_version = 17  # type: ignore[misc]


def test_overrides_replace_only_given_values_and_are_validated() -> None:
    base = ConversionConfig().with_overrides(onnx={"opset_version": 17})
    changed = base.with_overrides(
        onnx={"opset_version": None, "exporter": "torchscript", "quantization": "dynamic"},
        source={"task": "feature-extraction"},
    )
    assert changed.onnx.opset_version == 17
    assert changed.onnx.exporter is Exporter.TORCHSCRIPT
    assert changed.onnx.quantization is Quantization.INT8
    assert changed.source.task is Task.FEATURE_EXTRACTION
    assert base.onnx.exporter is Exporter.AUTO  # the original is untouched
    with pytest.raises(ConfigError, match=r"command-line options: onnx\.opset_version"):
        base.with_overrides(onnx={"opset_version": 99})


def test_experiment_config_defaults_when_the_file_is_absent(tmp_path: Path) -> None:
    assert load_experiment_config(tmp_path) == ExperimentConfig()


def test_experiment_config_is_read_and_checked(tmp_path: Path) -> None:
    path = tmp_path / EXPERIMENT_CONFIG_FILENAME
    path.write_text("experiment_name: ner\ntags: {team: search}\n", encoding="utf-8")
    config = load_experiment_config(tmp_path)
    assert config.experiment_name == "ner"
    assert config.tags == {"team": "search"}

    path.write_text("experiment_name: ner\ntracking: x\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="tracking: unknown key"):
        load_experiment_config(tmp_path)
    path.write_text("experiment_name: '  '\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="experiment_name: must not be empty"):
        load_experiment_config(tmp_path)
    path.write_text("- ner\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_experiment_config(tmp_path)
