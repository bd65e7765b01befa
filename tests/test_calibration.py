"""Calibration samples: real text from the user's file, else the labelled set, else built-in
English; tokenized unpadded; generated inputs only without a tokenizer, and said so."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from onnxport.errors import ConfigError
from onnxport.passes.calibration import calibration, read_texts
from onnxport.request.config import ConversionConfig


def _config(**quantize) -> ConversionConfig:
    return ConversionConfig().with_overrides(quantize=quantize)


def test_texts_are_read_from_plain_lines_and_json_lines(tmp_path: Path) -> None:
    file = tmp_path / "samples.txt"
    file.write_text(
        "Jane Doe, data engineer\n\n"
        + json.dumps({"text": "Email: jane@example.com"})
        + "\n"
        + json.dumps({"words": ["Carlos", "Ramírez", ",", "Madrid"], "labels": ["B-NAME"] * 4})
        + "\n{not json but text}\n",
        encoding="utf-8",
    )
    assert read_texts(file, what="x") == [
        "Jane Doe, data engineer",
        "Email: jane@example.com",
        "Carlos Ramírez , Madrid",
        "{not json but text}",
    ]


def test_an_empty_or_missing_file_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "empty.txt").write_text("\n \n", encoding="utf-8")
    with pytest.raises(ConfigError, match="has no samples"):
        read_texts(tmp_path / "empty.txt", what="quantize.calibration_file")
    with pytest.raises(ConfigError, match=r"cannot read quantize\.calibration_file"):
        read_texts(tmp_path / "missing.txt", what="quantize.calibration_file")


def test_the_calibration_file_comes_first_tokenized_without_padding(source, tmp_path) -> None:
    file = tmp_path / "samples.txt"
    file.write_text("Jane Doe\nSkills: Python, PyTorch, ONNX Runtime and SQL.\n", encoding="utf-8")
    found = calibration(source("distilbert-token"), _config(calibration_file=str(file)))
    assert found.origin == "quantize.calibration_file samples.txt" and found.warning is None
    lengths = [sample["input_ids"].shape for sample in found.inputs]
    assert lengths[0][0] == 1 and lengths[0][1] < lengths[1][1], "each text at its own length"
    for sample in found.inputs:
        assert sample["attention_mask"].all(), "no padding: every position is text"


def test_the_labelled_set_comes_next(source, tmp_path) -> None:
    file = tmp_path / "eval.jsonl"
    file.write_text(json.dumps({"words": ["Jane", "Doe"], "labels": ["B", "I"]}) + "\n")
    config = ConversionConfig().with_overrides(validation={"eval_file": str(file)})
    found = calibration(source("distilbert-token"), config)
    assert found.origin == "validation.eval_file eval.jsonl"
    assert len(found.inputs) == 1


def test_built_in_sentences_otherwise_as_many_as_asked(source) -> None:
    found = calibration(source("distilbert-token"), _config(calibration_samples=5))
    assert found.origin == "built-in English sentences" and len(found.inputs) == 5
    assert len({s["input_ids"].shape[1] for s in found.inputs}) > 1, "lengths vary"


def test_without_a_tokenizer_generated_inputs_with_a_warning(source) -> None:
    found = calibration(source("bert-encoder"), _config(calibration_samples=3))
    assert found.origin == "generated inputs" and len(found.inputs) == 3
    assert "not real text" in found.warning
    assert found.details()["warning"] == found.warning


def test_a_calibration_file_needs_a_tokenizer(source, tmp_path) -> None:
    file = tmp_path / "samples.txt"
    file.write_text("Jane Doe\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="needs a tokenizer"):
        calibration(source("bert-encoder"), _config(calibration_file=str(file)))
