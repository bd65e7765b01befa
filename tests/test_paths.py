"""Training outputs in, conversion output directories out; names that cannot escape."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from onnxport.errors import ConfigError, SourceError
from onnxport.request.config import (
    ConversionConfig,
    load_conversion_config,
    parse_conversion_config,
)
from onnxport.request.paths import (
    ParentTrainingOutput,
    conversion_output_dir,
    read_parent_training_output,
    safe_segment,
)

SPEC, EXEC = "abc123", "def456"
BACKBONE = "distilbert-base-uncased"


def _training_output(
    root: Path,
    *,
    backbone: str = BACKBONE,
    training_id: str = f"spec_{SPEC}_exec_{EXEC}",
    variant: str = "v1",
    metadata: object = None,
    checkpoint: bool = True,
) -> Path:
    """A training output skeleton: enough for the path logic, no real checkpoint needed."""
    path = root / "outputs" / "final_training" / "local" / backbone / training_id / variant
    path.mkdir(parents=True)
    if checkpoint:
        (path / "checkpoint").mkdir()
    if metadata is None:
        metadata = {"backbone": backbone, "epochs": 3}
    if isinstance(metadata, str):
        (path / "metadata.json").write_text(metadata, encoding="utf-8")
    elif metadata is not False:
        (path / "metadata.json").write_text(json.dumps(metadata), encoding="utf-8")
    return path


def _read(path: Path, spec: str = SPEC, exec_: str = EXEC) -> ParentTrainingOutput:
    return read_parent_training_output(path, parent_spec_fp=spec, parent_exec_fp=exec_)


# --------------------------------------------------------------------- the output directory


def test_output_dir_layout(tmp_path: Path) -> None:
    out = conversion_output_dir(
        tmp_path,
        platform="local",
        backbone=BACKBONE,
        parent_spec_fp=SPEC,
        parent_exec_fp=EXEC,
        version="1",
        conv_fp="0123456789abcdef",
    )
    assert out == (
        tmp_path
        / "outputs/conversion/local/distilbert-base-uncased/spec_abc123_exec_def456/v1"
        / "conv_0123456789abcdef"
    )


def test_output_dir_is_absolute_for_a_relative_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    out = conversion_output_dir(
        Path("."),
        platform="azureml",
        backbone=BACKBONE,
        parent_spec_fp=SPEC,
        parent_exec_fp=EXEC,
        version="3",
        conv_fp="ff00",
    )
    assert out.is_absolute()
    assert out.relative_to(tmp_path.absolute()).parts == (
        "outputs",
        "conversion",
        "azureml",
        BACKBONE,
        "spec_abc123_exec_def456",
        "v3",
        "conv_ff00",
    )


@pytest.mark.parametrize(
    ("backbone", "segment"),
    [
        ("distilbert-base-uncased", "distilbert-base-uncased"),
        ("google/bert_uncased_L-2_H-128", "google--bert_uncased_L-2_H-128"),
        ("../../etc", "etc"),
        ("..", "model"),
        ("a b:c", "a-b-c"),
    ],
)
def test_backbone_names_become_one_safe_path_segment(backbone: str, segment: str) -> None:
    assert safe_segment(backbone) == segment


def test_a_hostile_backbone_cannot_leave_the_conversion_tree(tmp_path: Path) -> None:
    out = conversion_output_dir(
        tmp_path,
        platform="local",
        backbone="../../../../tmp/evil",
        parent_spec_fp=SPEC,
        parent_exec_fp=EXEC,
        version="1",
        conv_fp="ff00",
    )
    assert out.resolve().is_relative_to((tmp_path / "outputs" / "conversion").resolve())
    assert len(out.relative_to(tmp_path).parts) == 7


# ----------------------------------------------------------------- filename_pattern escaping


@pytest.mark.parametrize(
    "pattern",
    [
        "../x_{quantization}.onnx",
        "../../x_{quantization}.onnx",
        "sub/x_{quantization}.onnx",
        "/tmp/x_{quantization}.onnx",
        "..\\x_{quantization}.onnx",
        "C:\\temp\\x_{quantization}.onnx",
        "~/x_{quantization}.onnx",
        "x_{quantization}.onnx/..",
    ],
)
def test_filename_pattern_that_escapes_the_output_dir_is_a_config_error(
    tmp_path: Path, pattern: str
) -> None:
    (tmp_path / "conversion.yaml").write_text(
        f"output:\n  filename_pattern: {json.dumps(pattern)}\n", encoding="utf-8"
    )
    with pytest.raises(ConfigError) as raised:
        load_conversion_config(tmp_path)
    message = str(raised.value)
    assert "filename_pattern" in message
    assert "conversion.yaml" in message


@pytest.mark.parametrize("pattern", ["model_{quantization}.onnx", "tagger.{quantization}.onnx"])
def test_plain_filename_patterns_are_accepted(pattern: str) -> None:
    config = parse_conversion_config({"output": {"filename_pattern": pattern}}, origin="test")
    name = config.output.filename("fp32")
    assert "/" not in name
    assert name.endswith(".onnx")


def test_default_filename_pattern() -> None:
    assert ConversionConfig().output.filename("fp32") == "model_fp32.onnx"


# ----------------------------------------------------------------- reading the training output


def test_reads_a_training_output(tmp_path: Path) -> None:
    path = _training_output(tmp_path, variant="v2")
    parent = _read(path)
    assert parent.path == path.absolute()
    assert parent.checkpoint == path / "checkpoint"
    assert parent.backbone == BACKBONE
    assert parent.version == "2"
    assert parent.training_id == f"spec_{SPEC}_exec_{EXEC}/v2"
    assert parent.metadata["epochs"] == 3


def test_backbone_comes_from_metadata_not_from_the_path(tmp_path: Path) -> None:
    path = _training_output(tmp_path, metadata={"backbone": "google/bert-tiny"})
    assert _read(path).backbone == "google/bert-tiny"


def test_fingerprints_are_compared_case_insensitively(tmp_path: Path) -> None:
    path = _training_output(tmp_path, training_id="spec_ABC123_exec_def456")
    assert _read(path, "abc123", "DEF456").backbone == BACKBONE


def test_relative_path_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _training_output(tmp_path)
    monkeypatch.chdir(tmp_path)
    parent = _read(path.relative_to(tmp_path))
    assert parent.path.is_absolute()
    assert parent.checkpoint == path / "checkpoint"


@pytest.mark.parametrize(
    ("metadata", "why"),
    [
        (False, "no metadata.json"),
        ("{not json", "not valid JSON"),
        ("", "not valid JSON"),
        ('["a", "list"]', "not a JSON object"),
        ({"epochs": 3}, "no backbone key"),
        ({"backbone": ""}, "empty backbone"),
        ({"backbone": 42}, "backbone not a string"),
    ],
)
def test_missing_or_invalid_metadata_falls_back_to_the_paths_backbone_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, metadata: object, why: str
) -> None:
    path = _training_output(tmp_path, backbone="bert-from-path", metadata=metadata)
    with caplog.at_level(logging.WARNING, logger="onnxport.request.paths"):
        parent = _read(path)
    assert parent.backbone == "bert-from-path", why
    records = [r for r in caplog.records if r.name == "onnxport.request.paths"]
    assert records, f"{why}: the fallback was not logged"
    assert any("bert-from-path" in r.getMessage() for r in records), why
    assert all(r.levelno >= logging.WARNING for r in records)


def test_metadata_in_another_encoding_falls_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = _training_output(tmp_path, backbone="bert-from-path", metadata=False)
    (path / "metadata.json").write_bytes(b'{"backbone": "\xff\xfe"}')
    with caplog.at_level(logging.WARNING, logger="onnxport.request.paths"):
        assert _read(path).backbone == "bert-from-path"
    assert "metadata.json" in caplog.text


def test_missing_parent_dir_is_a_source_error_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "outputs" / "final_training" / "nope"
    with pytest.raises(SourceError) as raised:
        _read(missing)
    assert str(missing) in str(raised.value)
    assert raised.value.exit_code == 2


def test_parent_dir_that_is_a_file_is_a_source_error(tmp_path: Path) -> None:
    file = tmp_path / "v1"
    file.write_text("not a directory")
    with pytest.raises(SourceError, match="not found"):
        _read(file)


def test_missing_checkpoint_is_a_source_error_naming_it(tmp_path: Path) -> None:
    path = _training_output(tmp_path, checkpoint=False)
    with pytest.raises(SourceError) as raised:
        _read(path)
    assert "checkpoint/" in str(raised.value)
    assert str(path) in str(raised.value)


def test_checkpoint_that_is_a_file_is_a_source_error(tmp_path: Path) -> None:
    path = _training_output(tmp_path, checkpoint=False)
    (path / "checkpoint").write_text("oops")
    with pytest.raises(SourceError, match="checkpoint"):
        _read(path)


@pytest.mark.parametrize(("spec", "exec_"), [("abc124", EXEC), (SPEC, "def457"), ("ffff", "eeee")])
def test_fingerprints_that_disagree_with_the_path_are_a_config_error(
    tmp_path: Path, spec: str, exec_: str
) -> None:
    path = _training_output(tmp_path)
    with pytest.raises(ConfigError) as raised:
        _read(path, spec, exec_)
    message = str(raised.value)
    assert f"spec_{SPEC}_exec_{EXEC}" in message
    assert spec in message
    assert exec_ in message


def test_a_path_outside_the_convention_is_read_without_the_path_check(tmp_path: Path) -> None:
    """A training output copied somewhere else still converts; its version defaults to 1."""
    path = tmp_path / "my-training-run"
    (path / "checkpoint").mkdir(parents=True)
    (path / "metadata.json").write_text(json.dumps({"backbone": BACKBONE}))
    parent = _read(path, "ffff", "eeee")
    assert parent.backbone == BACKBONE
    assert parent.version == "1"
