"""The manifest: what a converted directory records, and how `verify_directory` checks it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from onnxport.artifact.manifest import (
    MANIFEST_FILENAME,
    Manifest,
    read_manifest,
    sha256_file,
    verify_directory,
)
from onnxport.artifact.records.divergence import DivergenceRecord
from onnxport.artifact.records.validation import OutputComparisonRecord
from onnxport.errors import OutputError

NAME = "distilbert-token"


def _edit_manifest(directory: Path, **changes) -> None:
    path = directory / MANIFEST_FILENAME
    data = json.loads(path.read_text(encoding="utf-8"))
    data.update(changes)
    path.write_text(json.dumps(data), encoding="utf-8")


def test_sha256_file_matches_hashlib_whatever_the_chunk_size(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    content = bytes(range(256)) * 1000
    path.write_bytes(content)
    expected = hashlib.sha256(content).hexdigest()
    assert sha256_file(path) == expected
    assert sha256_file(path, chunk_size=7) == expected


def test_read_manifest_returns_what_the_conversion_returned(converted) -> None:
    result = converted(NAME)
    assert read_manifest(result.directory) == result.manifest


def test_manifest_round_trips_through_json(converted) -> None:
    manifest = converted(NAME).manifest
    assert Manifest.model_validate_json(manifest.to_json()) == manifest


def test_manifest_lists_every_file_but_itself(converted) -> None:
    result = converted(NAME)
    on_disk = {p.name for p in result.directory.iterdir()}
    assert set(result.manifest.files) == on_disk - {MANIFEST_FILENAME}
    for name, digest in result.manifest.files.items():
        assert sha256_file(result.directory / name) == digest


def test_outputs_are_looked_up_by_variant(converted) -> None:
    manifest = converted(NAME).manifest
    fp32 = manifest.output("fp32")
    assert fp32 is not None
    assert fp32.file == "model_fp32.onnx"
    assert manifest.output("int8") is None
    assert manifest.published_outputs() == [fp32]


def test_a_complete_directory_verifies(copy_output) -> None:
    assert verify_directory(copy_output(NAME)) == []


@pytest.mark.parametrize("name", ["model_fp32.onnx", "config.json", "tokenizer.json", "report.md"])
def test_one_changed_byte_is_detected(copy_output, name: str) -> None:
    directory = copy_output(NAME)
    path = directory / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    assert verify_directory(directory) == [f"{name} does not match its checksum"]


def test_a_missing_file_is_detected(copy_output) -> None:
    directory = copy_output(NAME)
    (directory / "model_fp32.onnx").unlink()
    assert verify_directory(directory) == ["model_fp32.onnx is missing"]


def test_no_manifest(copy_output) -> None:
    directory = copy_output(NAME)
    (directory / MANIFEST_FILENAME).unlink()
    assert verify_directory(directory) == [f"no {MANIFEST_FILENAME}"]
    with pytest.raises(OutputError, match="not a complete onnxport output"):
        read_manifest(directory)


@pytest.mark.parametrize("text", ["{", "[]", '{"onnxport_version": "0.1.0"}', ""])
def test_a_damaged_manifest_is_detected(copy_output, text: str) -> None:
    directory = copy_output(NAME)
    (directory / MANIFEST_FILENAME).write_text(text, encoding="utf-8")
    (problem,) = verify_directory(directory)
    assert "is damaged" in problem
    with pytest.raises(OutputError, match="is damaged"):
        read_manifest(directory)


def test_a_manifest_listing_no_files_is_not_trusted(copy_output) -> None:
    directory = copy_output(NAME)
    _edit_manifest(directory, files={})
    assert verify_directory(directory) == ["the manifest lists no files"]


def test_keys_added_by_a_newer_version_are_kept(copy_output) -> None:
    directory = copy_output(NAME)
    _edit_manifest(directory, dataset={"name": "resumes", "rows": 120})
    manifest = read_manifest(directory)
    assert json.loads(manifest.to_json())["dataset"] == {"name": "resumes", "rows": 120}
    assert verify_directory(directory) == []


def test_a_field_renamed_in_the_code_keeps_its_key(converted) -> None:
    """`OutputRecord.divergence` is written as `localization`, the key tools already read."""
    manifest = converted(NAME).manifest
    found = DivergenceRecord(against="pytorch", shape=[1, 8], compared=3, first=None)
    output = manifest.outputs[0].model_copy(update={"divergence": found})
    written = json.loads(manifest.model_copy(update={"outputs": [output]}).to_json())
    assert written["outputs"][0]["localization"]["compared"] == 3
    assert "divergence" not in written["outputs"][0]
    back = Manifest.model_validate(written).outputs[0]
    assert back.divergence == found


def test_infinite_and_nan_figures_survive_the_json(converted) -> None:
    manifest = converted(NAME).manifest.model_copy(deep=True)
    validation = manifest.outputs[0].validation
    assert validation is not None
    validation.outputs["logits"] = OutputComparisonRecord(
        max_abs_diff=float("inf"), max_rel_diff=float("nan"), atol=1e-4, rtol=1e-3, passed=False
    )
    text = manifest.to_json()
    json.loads(text)  # strict JSON: no bare Infinity / NaN tokens
    assert "Infinity" in text
    back = Manifest.model_validate_json(text).outputs[0].validation
    assert back is not None
    assert back.outputs["logits"].max_abs_diff == float("inf")
