"""Weights published as external data (`<file>.onnx.data`): every step after the export works
on the two files as it does on one, and the manifest guards both.

`output.external_data: always` asks for it at any size (ONNX Runtime then maps the weights
instead of copying them); `auto` only above protobuf's 2 GiB limit, where it is a must.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import mlflow
import mlflow.onnx
import numpy as np
import onnx
import pytest
from onnx.external_data_helper import uses_external_data

from checks import check_agrees_on_a_new_shape, machine_traces
from onnxport.artifact.manifest import read_manifest, verify_directory
from onnxport.errors import ConfigError
from onnxport.export.external_data import EXTERNAL_DATA_THRESHOLD_BYTES, wants_external_data
from onnxport.predict import OnnxPredictor
from onnxport.request.config import ConversionConfig, ExperimentConfig
from onnxport.request.export_config import ExternalData
from onnxport.tracking.conversion import log_conversion
from onnxport.tracking.store import (
    ensure_experiment,
    prepare_store,
    resolve_artifact_location,
    resolve_tracking_uri,
)
from onnxport.verify.runtime import create_session, run_session
from support import convert_with, root_with_store, using_tracking_uri

MODEL = "distilbert-token"
MiB = 1024**2


@pytest.mark.parametrize(
    ("weights", "setting", "external"),
    [
        (EXTERNAL_DATA_THRESHOLD_BYTES, ExternalData.AUTO, False),
        (1024 * MiB, ExternalData.AUTO, False),
        (MiB, ExternalData.ALWAYS, True),
        (1024 * MiB, ExternalData.NEVER, False),
        (EXTERNAL_DATA_THRESHOLD_BYTES + 1, ExternalData.AUTO, True),
    ],
)
def test_which_models_get_external_data(weights: int, setting, external: bool) -> None:
    assert wants_external_data(weights, setting) is external


def test_never_is_refused_for_weights_over_two_gib() -> None:
    with pytest.raises(ConfigError, match="cannot go into one ONNX file") as info:
        wants_external_data(EXTERNAL_DATA_THRESHOLD_BYTES + 1, ExternalData.NEVER)
    assert info.value.hint == "set output.external_data: auto"


def test_the_setting_is_read_from_yaml_in_any_case() -> None:
    config = ConversionConfig.model_validate({"output": {"external_data": " Always "}})
    assert config.output.external_data is ExternalData.ALWAYS


INT8 = ConversionConfig().with_overrides(
    onnx={"quantization": "int8"},
    # Random weights: int8 moves near-tied argmaxes; the gate is not under test here.
    validation={"min_task_agreement": 0.01},
)


@pytest.fixture(scope="module")
def converted(checkpoint, tmp_path_factory) -> tuple[Path, Path]:
    """The same tiny model converted with its weights outside (`always`) and inside."""
    root = tmp_path_factory.mktemp("external-data")
    convert_with(checkpoint(MODEL), root / "two-files", INT8, output={"external_data": "always"})
    convert_with(checkpoint(MODEL), root / "one-file", INT8, output={"external_data": "never"})
    return root / "two-files", root / "one-file"


@pytest.mark.slow
def test_weights_go_to_a_data_file_that_the_manifest_guards(converted) -> None:
    two, one = converted
    manifest = read_manifest(two)
    fp32 = manifest.output("fp32")
    assert manifest.export.exporter == "dynamo"
    assert fp32.data_file == "model_fp32.onnx.data"
    # The large weights are in the data file (the exporter keeps tiny tensors inline).
    outside = onnx.load(str(two / fp32.file), load_external_data=False).graph.initializer
    inside = onnx.load(str(one / fp32.file)).graph.initializer
    largest = max(inside, key=lambda t: len(t.raw_data)).name
    assert [uses_external_data(t) for t in outside if t.name == largest] == [True]
    assert (two / fp32.data_file).stat().st_size >= len(
        next(t for t in inside if t.name == largest).raw_data
    )
    assert not (one / "model_fp32.onnx.data").exists()
    assert read_manifest(one).output("fp32").data_file is None
    for record in manifest.published_outputs():
        assert record.validation.passed and record.smoke_test.passed
        if record.data_file:
            assert (two / record.data_file).is_file()
    assert verify_directory(two) == []
    # What the variant weighs, in tables, the report and MLflow: both files.
    files = (two / fp32.file, two / fp32.data_file)
    assert fp32.total_size_bytes == sum(f.stat().st_size for f in files)


@pytest.mark.slow
def test_no_model_carries_a_path_of_this_machine_and_debug_metadata_stays(converted) -> None:
    """The exporter's stack traces were stripped before the weights came inline or went
    out; the node metadata the divergence search reads is left, in every variant."""
    for directory in converted:
        for out in read_manifest(directory).published_outputs():
            assert machine_traces(directory / out.file) == [], (directory.name, out.file)
            model = onnx.load(str(directory / out.file), load_external_data=False)
            keys = {p.key for n in model.graph.node for p in n.metadata_props}
            assert {"pkg.torch.onnx.fx_node", "pkg.torch.onnx.name_scopes"} <= keys, out.file


@pytest.mark.slow
def test_a_damaged_data_file_is_found(converted, tmp_path) -> None:
    two, _ = converted
    copy = tmp_path / "copy"
    shutil.copytree(two, copy)
    data = copy / "model_fp32.onnx.data"
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))
    problems = verify_directory(copy)
    assert any("model_fp32.onnx.data" in p for p in problems), problems


@pytest.mark.slow
def test_both_forms_compute_the_same_and_agree_with_pytorch(converted, source) -> None:
    two, one = converted
    check_agrees_on_a_new_shape(two / "model_fp32.onnx", source(MODEL))
    inputs = source(MODEL).make_inputs(2, 19, 5)
    feed = {k: v.numpy() for k, v in inputs.items()}
    outside = run_session(create_session(two / "model_fp32.onnx"), feed)
    inside = run_session(create_session(one / "model_fp32.onnx"), feed)
    for name, value in inside.items():
        np.testing.assert_array_equal(outside[name], value)


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["fp32", "int8"])
def test_predict_reads_the_two_files(converted, variant: str) -> None:
    two, one = converted
    text = ["Jane Doe, jane@example.com, Python and SQL"]
    assert OnnxPredictor(two, variant=variant).predict(text) == OnnxPredictor(
        one, variant=variant
    ).predict(text)


@pytest.mark.slow
def test_tracking_logs_the_model_with_its_weights(converted, tmp_path_factory) -> None:
    two, _ = converted
    root = root_with_store(tmp_path_factory, "external-tracking")
    experiment = ExperimentConfig()
    uri = resolve_tracking_uri(root, experiment)
    client = prepare_store(uri)
    artifacts = resolve_artifact_location(root, experiment)
    experiment_id = ensure_experiment(client, "external", artifacts)
    with using_tracking_uri(uri):
        with mlflow.start_run(experiment_id=experiment_id) as run:
            log_conversion(read_manifest(two), two)
        logged = mlflow.onnx.load_model(f"runs:/{run.info.run_id}/onnx_fp32")
    published = onnx.load(str(two / "model_fp32.onnx"))
    weights = {i.name: onnx.numpy_helper.to_array(i) for i in published.graph.initializer}
    assert weights, "the published model has initializers"
    for initializer in logged.graph.initializer:
        np.testing.assert_array_equal(
            onnx.numpy_helper.to_array(initializer), weights[initializer.name]
        )
    assert len(logged.graph.initializer) == len(published.graph.initializer)
