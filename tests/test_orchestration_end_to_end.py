"""`execute_conversion` end to end: one real conversion of a tiny DistilBERT laid out as a
training output, tracked in a real SQLite MLflow store, and what a second call reuses.

The conversion starts a child process that imports torch: it is made once for the module
(`e2e`) and its tests are marked `slow`. The one that damages it runs last.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from onnxport.artifact.manifest import read_manifest, sha256_file, verify_directory
from onnxport.errors import ExecutionError, TrackingError
from onnxport.progress import Stage, StageEvent, Status
from support import (
    BACKBONE,
    EXEC_FP,
    SPEC_FP,
    FakeChild,
    Project,
    corrupt_byte,
    make_project,
    using_tracking_uri,
)

REGISTERED_MODEL = "tiny-resume-tagger"


@dataclass
class Conversion:
    project: Project
    output: Path
    run_id: str
    events: list[StageEvent]


@pytest.fixture(scope="module")
def e2e(shared_root: Path, tiny_checkpoint: Path) -> Conversion:
    """One real conversion, tracked in MLflow, shared by the end-to-end tests below."""
    project = make_project(shared_root, "e2e", tiny_checkpoint, spec_fp=SPEC_FP, exec_fp=EXEC_FP)
    project.defaults = {
        "experiment_config": {"registered_model_name": REGISTERED_MODEL, "tags": {"team": "nlp"}},
        "parent_training_run_id": "training-run-42",
    }
    events: list[StageEvent] = []
    output = project.call(on_progress=events.append)
    (run,) = project.runs()
    return Conversion(project, output, run.info.run_id, events)


@pytest.mark.slow
def test_e2e_returns_the_complete_output_directory(e2e: Conversion) -> None:
    assert e2e.output == e2e.project.expected_output_dir()
    assert e2e.output.is_dir()
    assert verify_directory(e2e.output) == []
    names = {p.name for p in e2e.output.iterdir()}
    assert {"model_fp32.onnx", "manifest.json", "report.md", "config.json"} <= names
    assert e2e.project.partials() == []


@pytest.mark.slow
def test_e2e_progress_arrives_as_events_a_start_and_a_done_per_stage_in_order(
    e2e: Conversion,
) -> None:
    # Logging to MLflow is a stage inside publishing's, after the manifest is sealed and
    # before the directory takes its name (publishing is done only then).
    *before, publishing, tracking, tracked, published = e2e.events
    assert [(e.stage, e.status) for e in (publishing, tracking, tracked, published)] == [
        (Stage.PUBLISH, Status.START),
        (Stage.TRACK, Status.START),
        (Stage.TRACK, Status.DONE),
        (Stage.PUBLISH, Status.DONE),
    ]
    starts, ends = before[::2], before[1::2]
    assert [e.status for e in starts] == [Status.START] * len(starts)
    assert [e.status for e in ends] == [Status.DONE] * len(ends)
    assert [e.stage for e in starts] == [e.stage for e in ends]
    stages = [e.stage for e in starts] + [Stage.PUBLISH]
    assert stages == sorted(stages, key=list(Stage).index)  # the pipeline's order, each once
    assert stages[0] == Stage.LOAD
    # The one clock of a stage: its event and the manifest show the same seconds, publish
    # too (its figure taken as the manifest is sealed).
    timings = read_manifest(e2e.output).timings
    assert list(timings) == [stage.value for stage in stages]
    for event in [*ends, published]:
        assert event.seconds == timings[event.stage.value]


@pytest.mark.slow
def test_e2e_manifest_records_the_lineage(e2e: Conversion) -> None:
    manifest = read_manifest(e2e.output)
    project = e2e.project
    assert manifest.conv_fp == e2e.output.name.removeprefix("conv_")
    assert manifest.lineage["parent_spec_fp"] == project.spec_fp
    assert manifest.lineage["parent_exec_fp"] == project.exec_fp
    assert manifest.lineage["parent_training_id"] == f"spec_{SPEC_FP}_exec_{EXEC_FP}/v1"
    assert manifest.lineage["parent_training_run_id"] == "training-run-42"
    assert manifest.lineage["mlflow_run_id"] == e2e.run_id
    assert manifest.lineage["platform"] == "local"
    assert manifest.lineage["backbone"] == BACKBONE


@pytest.mark.slow
def test_e2e_run_is_finished_with_the_lineage_tags(e2e: Conversion) -> None:
    run = e2e.project.client().get_run(e2e.run_id)
    assert run.info.status == "FINISHED"
    tags = run.data.tags
    assert tags["mlflow.runType"] == "conversion"
    assert tags["code.lineage.parent_spec_fp"] == SPEC_FP
    assert tags["code.lineage.parent_exec_fp"] == EXEC_FP
    assert tags["code.lineage.conv_fp"] == e2e.output.name.removeprefix("conv_")
    assert tags["code.lineage.platform"] == "local"
    assert tags["code.lineage.backbone"] == BACKBONE
    assert tags["code.lineage.parent_training_run_id"] == "training-run-42"
    assert tags["team"] == "nlp"
    assert BACKBONE in run.info.run_name
    assert tags.get("onnxport.cache_hit") != "true"


@pytest.mark.slow
def test_e2e_run_has_metrics_and_params(e2e: Conversion) -> None:
    run = e2e.project.client().get_run(e2e.run_id)
    metrics = run.data.metrics
    for name in (
        "fp32.logits.max_abs_diff",
        "fp32.logits.max_rel_diff",
        "fp32.task_agreement",
        "fp32.size_bytes",
        "seconds.load",
        "seconds.export",
        "seconds.validate",
        "seconds.publish",
        "peak_rss_mb",
        "child_peak_rss_mb",
    ):
        assert name in metrics, f"metric {name} not logged: {sorted(metrics)}"
    assert metrics["fp32.logits.max_abs_diff"] < 1e-3
    assert metrics["fp32.task_agreement"] >= 0.99
    assert metrics["child_peak_rss_mb"] > 50  # torch alone needs more than that
    assert metrics["fp32.size_bytes"] == (e2e.output / "model_fp32.onnx").stat().st_size
    params = run.data.params
    assert params["opset"] == "18"
    assert params["quantization"] == "none"
    assert params["task"] == "token-classification"
    assert params["exporter"] in ("dynamo", "torchscript")


@pytest.mark.slow
def test_e2e_manifest_and_report_are_artifacts(e2e: Conversion) -> None:
    client = e2e.project.client()
    artifacts = {a.path for a in client.list_artifacts(e2e.run_id)}
    assert {"manifest.json", "report.md"} <= artifacts
    local = Path(client.download_artifacts(e2e.run_id, "manifest.json"))
    assert json.loads(local.read_text())["conv_fp"] == read_manifest(e2e.output).conv_fp


def _run_onnx(model, sequence: int = 8) -> dict[str, Any]:
    import numpy as np
    import onnxruntime

    session = onnxruntime.InferenceSession(
        model.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    feed = {i.name: np.ones((1, sequence), dtype=np.int64) for i in session.get_inputs()}
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, feed)))


@pytest.fixture
def tracking(e2e: Conversion):
    import mlflow

    with using_tracking_uri(e2e.project.tracking_uri):
        yield mlflow


@pytest.mark.slow
def test_e2e_logged_model_loads_and_runs_in_onnxruntime(e2e: Conversion, tracking) -> None:
    import mlflow.onnx
    import numpy as np
    import onnx

    by_run = mlflow.onnx.load_model(f"runs:/{e2e.run_id}/onnx_fp32")
    (logged,) = [
        m
        for m in tracking.search_logged_models(
            experiment_ids=[tracking.get_run(e2e.run_id).info.experiment_id],
            output_format="list",
        )
        if m.source_run_id == e2e.run_id and m.name == "onnx_fp32"
    ]
    by_uri = mlflow.onnx.load_model(logged.model_uri)
    on_disk = onnx.load(str(e2e.output / "model_fp32.onnx"))
    expected = _run_onnx(on_disk)["logits"]
    assert expected.shape[:2] == (1, 8)
    for model in (by_run, by_uri):
        np.testing.assert_allclose(_run_onnx(model)["logits"], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_e2e_model_is_registered_under_the_experiment_configs_name(e2e: Conversion) -> None:
    versions = e2e.project.client().search_model_versions(f"name='{REGISTERED_MODEL}'")
    assert [v.run_id for v in versions] == [e2e.run_id]


@pytest.mark.slow
def test_e2e_second_call_reuses_the_directory_without_a_child(
    e2e: Conversion, fake_child: FakeChild, caplog: pytest.LogCaptureFixture
) -> None:
    project = e2e.project
    model_file = e2e.output / "model_fp32.onnx"
    manifest_file = e2e.output / "manifest.json"
    before = (model_file.stat().st_mtime_ns, manifest_file.read_bytes())
    hits_before = len(project.cache_hit_runs())

    with caplog.at_level(logging.INFO, logger="onnxport.orchestration"):
        again = project.call()

    assert again == e2e.output
    assert fake_child.calls == []  # no child, no conversion
    assert before == (
        model_file.stat().st_mtime_ns,
        (e2e.output / "manifest.json").read_bytes(),
    )
    assert "reusing" in caplog.text
    assert len(project.conversion_runs()) == 1
    hits = project.cache_hit_runs()
    assert len(hits) == hits_before + 1
    hit = hits[-1]
    assert hit.info.status == "FINISHED"
    assert hit.data.tags["onnxport.original_run_id"] == e2e.run_id
    assert hit.data.tags["onnxport.output_dir"] == str(e2e.output)
    assert hit.data.tags["mlflow.runType"] == "conversion"
    assert hit.data.tags["code.lineage.conv_fp"] == e2e.output.name.removeprefix("conv_")


@pytest.mark.slow
def test_e2e_a_reuse_applies_a_new_experiment_yaml(
    e2e: Conversion, fake_child: FakeChild, tracking, tmp_path: Path
) -> None:
    """The same conversion.yaml, now with an experiment.yaml naming another experiment and a
    model name: the reuse runs no child, logs the conversion into that experiment, and
    registers the model the conversion's run logged; asked again, it registers no twin."""
    project = e2e.project
    config_dir = shutil.copytree(project.config_dir, tmp_path / "config-with-experiment")
    (config_dir / "experiment.yaml").write_text(
        "experiment_name: reused-elsewhere\nregistered_model_name: reused-tagger\n",
        encoding="utf-8",
    )
    arguments = {"config_dir": config_dir, "experiment_config": None}
    again = project.call(**arguments, conversion_experiment_name=None)
    assert again == e2e.output
    assert fake_child.calls == []  # reused: no conversion

    client = project.client()
    conv_fp = e2e.output.name.removeprefix("conv_")
    (version,) = client.search_model_versions("name='reused-tagger'")
    (logged,) = [  # the text model the conversion's run logged, as log_conversion registers
        m
        for m in client.search_logged_models(
            experiment_ids=[client.get_run(e2e.run_id).info.experiment_id]
        )
        if m.source_run_id == e2e.run_id and m.name == "text_fp32"
    ]
    assert (version.run_id, version.source) == (e2e.run_id, logged.artifact_location)
    info = tracking.models.get_model_info("models:/reused-tagger/1")
    assert "python_function" in info.flavors and "onnx" not in info.flavors
    assert version.tags["onnxport.conv_fp"] == conv_fp
    assert version.tags["onnxport.variant"] == "fp32"
    assert version.tags["code.lineage.parent_training_run_id"] == "training-run-42"

    experiment = client.get_experiment_by_name("reused-elsewhere")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.tags["onnxport.cache_hit"] == "true"
    assert run.data.tags["onnxport.original_run_id"] == e2e.run_id
    assert run.data.tags["onnxport.registered_model"] == "models:/reused-tagger/1"
    original = client.get_run(e2e.run_id).data
    # The conversion's own params (the text model's served settings stay with its run).
    assert run.data.params["conv_fp"] == conv_fp
    assert run.data.params.items() <= original.params.items()
    assert run.data.metrics["fp32.task_agreement"] == original.metrics["fp32.task_agreement"]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"manifest.json", "report.md"} <= artifacts

    project.call(**arguments, conversion_experiment_name=None)
    assert len(client.search_model_versions("name='reused-tagger'")) == 1
    assert len(client.search_runs([experiment.experiment_id])) == 2


@pytest.mark.slow
def test_e2e_forced_rebuild_that_fails_keeps_the_earlier_result(
    e2e: Conversion, fake_child: FakeChild
) -> None:
    project = e2e.project
    manifest_before = (e2e.output / "manifest.json").read_bytes()
    with pytest.raises(ExecutionError):
        project.call(force=True)
    assert len(fake_child.calls) == 1
    assert verify_directory(e2e.output) == []
    assert (e2e.output / "manifest.json").read_bytes() == manifest_before
    newest = project.conversion_runs()[-1]
    assert newest.info.run_id != e2e.run_id
    assert newest.info.status == "FAILED"


@pytest.mark.slow
def test_e2e_damaged_directory_is_rebuilt_not_returned(e2e: Conversion) -> None:
    """Runs last among the e2e tests: it replaces the shared conversion."""
    project = e2e.project
    model_file = e2e.output / "model_fp32.onnx"
    good = read_manifest(e2e.output).files["model_fp32.onnx"]
    corrupt_byte(model_file)
    assert verify_directory(e2e.output) != []
    conversions_before = len(project.conversion_runs())
    hits_before = len(project.cache_hit_runs())

    again = project.call()

    assert again == e2e.output
    assert verify_directory(again) == []
    assert sha256_file(model_file) == read_manifest(again).files["model_fp32.onnx"]
    assert sha256_file(model_file) == good  # the same model, deterministically rebuilt
    assert len(project.conversion_runs()) == conversions_before + 1
    assert project.conversion_runs()[-1].info.status == "FINISHED"
    assert len(project.cache_hit_runs()) == hits_before  # not reported as a reuse
    assert project.partials() == []


# ------------------------------------------------------------------------ reuse (fast)


def test_a_reuse_cannot_register_a_model_no_run_of_the_store_logged(
    shared_root: Path, fake_child: FakeChild, converted
) -> None:
    """A complete directory made outside this tracking store (here by `pipeline.convert`,
    untracked): asked to register it, the reuse says why it cannot and what to do, before
    recording anything."""
    project = make_project(shared_root, "reuse-unregistrable")
    expected = project.expected_output_dir()
    shutil.copytree(converted("distilbert-token").directory, expected)
    experiment = {"registered_model_name": "nowhere-tagger"}
    with pytest.raises(TrackingError, match="cannot register the reused conversion") as raised:
        project.call(experiment_config=experiment)
    assert "nowhere-tagger" in str(raised.value)
    assert "force" in str(raised.value.hint)
    assert fake_child.calls == []
    assert project.runs() == []
    assert project.client().search_model_versions("name='nowhere-tagger'") == []
    assert verify_directory(expected) == []
