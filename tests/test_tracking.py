"""MLflow tracking: the local SQLite store, the conversion run, and its terminal status."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from onnxport.errors import TrackingError
from onnxport.request.config import ExperimentConfig
from onnxport.tracking.store import (
    create_run,
    end_run,
    ensure_experiment,
    failed_unless_finished,
    prepare_store,
    quiet_mlflow,
    resolve_artifact_location,
    resolve_tracking_uri,
    run_status,
    with_retry,
)
from support import migrated_store, root_with_store, using_tracking_uri

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory):
    """A migrated SQLite store and an experiment in it, shared by this module's tests."""
    root = root_with_store(tmp_path_factory, "tracking")
    client = prepare_store(resolve_tracking_uri(root, ExperimentConfig()))
    experiment_id = ensure_experiment(
        client, "tracking-tests", resolve_artifact_location(root, ExperimentConfig())
    )
    return client, experiment_id


# --------------------------------------------------------------------------- where to track


def test_default_tracking_uri_is_an_absolute_sqlite_uri_under_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    uri = resolve_tracking_uri(Path("."), ExperimentConfig())
    assert uri == f"sqlite:///{(tmp_path / 'mlflow.db').as_posix()}"
    assert uri.startswith("sqlite:////")  # four slashes: an absolute path


def test_tracking_uri_from_the_experiment_config_wins(tmp_path: Path) -> None:
    config = ExperimentConfig(tracking_uri="http://mlflow.internal:5000")
    assert resolve_tracking_uri(tmp_path, config) == "http://mlflow.internal:5000"


def test_default_artifact_location_is_mlartifacts_under_root(tmp_path: Path) -> None:
    location = resolve_artifact_location(tmp_path, ExperimentConfig())
    assert location == (tmp_path / "mlartifacts").as_uri()
    config = ExperimentConfig(artifact_location="file:///srv/artifacts")
    assert resolve_artifact_location(tmp_path, config) == "file:///srv/artifacts"


# ------------------------------------------------------------------------------- the store


def test_prepare_store_creates_and_migrates_the_sqlite_database(
    tmp_path_factory: pytest.TempPathFactory, store
) -> None:
    created = migrated_store(tmp_path_factory)  # by prepare_store, in a new directory
    assert created.name == "mlflow.db"
    assert created.parent.name == "not-yet-created"
    assert created.is_file()
    client, experiment_id = store
    assert client.get_experiment(experiment_id).name == "tracking-tests"
    # Preparing the same store again (a second caller) is harmless and sees the same data.
    again = prepare_store(client.tracking_uri)
    assert again.get_experiment_by_name("tracking-tests").experiment_id == experiment_id


def test_quiet_mlflow_turns_telemetry_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_DISABLE_TELEMETRY", raising=False)
    monkeypatch.delenv("DO_NOT_TRACK", raising=False)
    quiet_mlflow()
    assert os.environ["MLFLOW_DISABLE_TELEMETRY"] == "true"
    assert os.environ["DO_NOT_TRACK"] == "true"


@contextlib.contextmanager
def _hanging_up_server() -> Iterator[tuple[str, list[int]]]:
    """An HTTP address whose server accepts each connection and closes it at once; yields
    the address and the list of connections it saw (one entry each)."""
    server = socket.create_server(("127.0.0.1", 0))
    seen: list[int] = []

    def serve() -> None:
        with contextlib.suppress(OSError):  # the server closed under it: the test is over
            while True:
                connection, _ = server.accept()
                seen.append(1)
                connection.close()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}", seen
    finally:
        server.close()


def test_an_unreachable_tracking_server_is_tried_twice_then_named(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """MLflow's default is 7 retries with exponential backoff (minutes); prepare_store allows
    one, so that a wrong tracking_uri fails before anything else starts."""
    for name in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT"):
        monkeypatch.setenv(name, "")  # records its absence: prepare_store's value is undone
        monkeypatch.delenv(name)
    with _hanging_up_server() as (uri, connections), pytest.raises(TrackingError) as raised:
        prepare_store(uri)
    assert len(connections) == 2
    assert uri in str(raised.value)
    assert raised.value.hint


def test_unusable_sqlite_location_is_a_tracking_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    uri = f"sqlite:///{(blocker / 'sub' / 'mlflow.db').as_posix()}"
    with pytest.raises(TrackingError) as raised:
        prepare_store(uri)
    assert uri in str(raised.value)


def test_in_memory_sqlite_store_leaves_no_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    prepare_store("sqlite:///:memory:").search_experiments()
    assert list(tmp_path.iterdir()) == []


def test_ensure_experiment_creates_once(store, tmp_path: Path) -> None:
    client, _ = store
    location = (tmp_path / "artifacts").as_uri()
    first = ensure_experiment(client, "created-once", location)
    assert ensure_experiment(client, "created-once", location) == first
    experiment = client.get_experiment(first)
    assert experiment.name == "created-once"
    assert experiment.artifact_location == location


# ------------------------------------------------------------------------------------ runs


def test_create_run_tags_the_run_type_and_drops_secrets(store) -> None:
    client, experiment_id = store
    run_id = create_run(
        client,
        experiment_id,
        run_name="conversion-x",
        tags={"team": "nlp", "my_token": "s3cr3t", "code.lineage.conv_fp": "ff00"},
    )
    run = client.get_run(run_id)
    assert run.info.run_name == "conversion-x"
    assert run.info.status == "RUNNING"
    assert run.data.tags["mlflow.runType"] == "conversion"
    assert run.data.tags["team"] == "nlp"
    assert run.data.tags["code.lineage.conv_fp"] == "ff00"
    assert "my_token" not in run.data.tags
    assert "s3cr3t" not in run.data.tags.values()
    end_run(client, run_id, "FINISHED")


def test_failed_unless_finished_marks_a_raising_block_failed(store) -> None:
    client, experiment_id = store
    run_id = create_run(client, experiment_id, run_name="boom", tags={})
    with pytest.raises(RuntimeError, match="child died"), failed_unless_finished(client, run_id):
        raise RuntimeError("child died")
    assert run_status(client, run_id) == "FAILED"


def test_failed_unless_finished_marks_an_interrupted_block_killed(store) -> None:
    client, experiment_id = store
    run_id = create_run(client, experiment_id, run_name="interrupted", tags={})
    with pytest.raises(KeyboardInterrupt), failed_unless_finished(client, run_id):
        raise KeyboardInterrupt
    assert run_status(client, run_id) == "KILLED"


def test_failed_unless_finished_finishes_a_run_left_running(store) -> None:
    client, experiment_id = store
    run_id = create_run(client, experiment_id, run_name="ok", tags={})
    with failed_unless_finished(client, run_id):
        pass
    assert run_status(client, run_id) == "FINISHED"


@pytest.mark.parametrize("status", ["FINISHED", "FAILED"])
def test_failed_unless_finished_keeps_a_status_set_inside(store, status: str) -> None:
    client, experiment_id = store
    run_id = create_run(client, experiment_id, run_name="ended-by-child", tags={})
    with failed_unless_finished(client, run_id):
        end_run(client, run_id, status)
    assert run_status(client, run_id) == status


# ---------------------------------------------------------------------------------- retries


# MLflow sets `PRAGMA busy_timeout = 20000` on every session: a call on a locked database
# waits 20 s before SQLite gives up. The tests below shorten only that wait.
MLFLOW_BUSY_TIMEOUT = "busy_timeout = 20000"
SHORT_BUSY_TIMEOUT = "busy_timeout = 50"


@pytest.fixture
def lockable_store(tmp_path_factory: pytest.TempPathFactory):
    """A store of its own, an `MlflowClient` on it that waits 50 ms for a lock, and a plain
    sqlite3 connection to the same file that can hold the lock as another writer would."""
    import sqlite3

    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    root = root_with_store(tmp_path_factory, "lockable")
    database = root / "mlflow.db"
    shortened: list[str] = []

    def shorten(conn, cursor, statement, parameters, context, executemany):
        if MLFLOW_BUSY_TIMEOUT in statement and conn.engine.url.database == str(database):
            shortened.append(statement)
            statement = statement.replace(MLFLOW_BUSY_TIMEOUT, SHORT_BUSY_TIMEOUT)
        return statement, parameters

    event.listen(Engine, "before_cursor_execute", shorten, retval=True)
    holder = sqlite3.connect(database, isolation_level=None)
    try:
        client = prepare_store(resolve_tracking_uri(root, ExperimentConfig()))
        assert shortened, f"MLflow no longer sets {MLFLOW_BUSY_TIMEOUT}: update this fixture"
        yield client, holder
    finally:
        holder.close()
        event.remove(Engine, "before_cursor_execute", shorten)


def test_with_retry_waits_out_a_real_sqlite_lock(lockable_store) -> None:
    import sqlite3

    from mlflow.exceptions import MlflowException

    client, holder = lockable_store
    holder.execute("BEGIN EXCLUSIVE")  # another process is writing
    failures: list[Exception] = []

    def create() -> str:
        try:
            return client.create_experiment("made-under-a-lock")
        except Exception as e:
            failures.append(e)
            holder.rollback()  # the other writer finishes
            raise

    experiment_id = with_retry(create)
    (failure,) = failures
    # What MLflow raises for a locked SQLite store: its own exception, from SQLAlchemy's,
    # from sqlite3's.
    assert isinstance(failure, MlflowException)
    assert isinstance(failure.__cause__.orig, sqlite3.OperationalError)
    assert str(failure.__cause__.orig) == "database is locked"
    assert client.get_experiment(experiment_id).name == "made-under-a-lock"


def test_with_retry_gives_up_on_a_lock_that_stays(lockable_store) -> None:
    from mlflow.exceptions import MlflowException

    client, holder = lockable_store
    holder.execute("BEGIN EXCLUSIVE")
    calls = []

    def create() -> str:
        calls.append(1)
        return client.create_experiment("never-made")

    with pytest.raises(MlflowException, match="database is locked"):
        with_retry(create, attempts=3)
    assert len(calls) == 3
    holder.rollback()
    assert client.get_experiment_by_name("never-made") is None


def test_with_retry_does_not_retry_other_errors(store) -> None:
    from mlflow.exceptions import MlflowException

    client, _ = store
    calls = []

    def missing_run():
        calls.append(1)
        return client.get_run("0" * 32)

    with pytest.raises(MlflowException, match="not found"):
        with_retry(missing_run)
    assert len(calls) == 1


# ------------------------------------------------------------------- the logged ONNX models

SIGNATURE_MODEL = "distilbert-token"
REGISTERED_NAME = "signature-tagger"
TRAINING_RUN_ID = "5eed" * 8
CONV_FP = "c0ffee15"


@pytest.fixture(scope="module")
def logged(checkpoint, tmp_path_factory: pytest.TempPathFactory):
    """A conversion with an int8 variant (default exporter) logged to a real SQLite store
    with the lineage of a training run, its fp32 text model registered: (tracking uri, run
    id, output directory)."""
    import mlflow

    from onnxport.artifact.manifest import read_manifest
    from onnxport.pipeline import convert
    from onnxport.request import ConversionRequest
    from onnxport.request.config import ConversionConfig
    from onnxport.tracking.conversion import log_conversion

    root = root_with_store(tmp_path_factory, "logged-signature")
    output = root / "converted"
    config = ConversionConfig().with_overrides(
        onnx={"quantization": "int8"},
        # Random weights: int8 moves near-tied argmaxes; the gate is not under test here.
        validation={"min_task_agreement": 0.01},
    )
    convert(ConversionRequest(checkpoint(SIGNATURE_MODEL), output, config))
    uri = resolve_tracking_uri(root, ExperimentConfig())
    client = prepare_store(uri)
    experiment_id = ensure_experiment(
        client, "signature", resolve_artifact_location(root, ExperimentConfig())
    )
    with using_tracking_uri(uri):
        with mlflow.start_run(experiment_id=experiment_id) as run:
            # As the conversion child has it: its conv_fp and the lineage the parent passed on.
            lineage = {"parent_training_run_id": TRAINING_RUN_ID, "conv_fp": CONV_FP}
            manifest = read_manifest(output).model_copy(
                update={"conv_fp": CONV_FP, "lineage": lineage}
            )
            log_conversion(manifest, output, registered_model_name=REGISTERED_NAME)
        yield uri, run.info.run_id, output


def _model_uris(run_id: str) -> dict[str, str]:
    return {"fp32": f"runs:/{run_id}/onnx_fp32", "int8": f"runs:/{run_id}/onnx_int8"}


@pytest.mark.slow
def test_logged_models_answer_every_batch_and_sequence_length(logged, source) -> None:
    import mlflow.pyfunc
    import numpy as np

    from onnxport.verify.runtime import create_session, run_session

    _, run_id, output = logged
    files = {"fp32": "model_fp32.onnx", "int8": "model_int8.onnx"}
    for which, uri in _model_uris(run_id).items():
        model = mlflow.pyfunc.load_model(uri)
        session = create_session(output / files[which])
        for seed, (batch, length) in enumerate([(1, 5), (3, 37), (2, 128)]):
            # Tokenized résumé text: in-vocabulary ids, padded to `length`.
            inputs = {
                k: v.numpy()
                for k, v in source(SIGNATURE_MODEL).make_inputs(batch, length, seed).items()
            }
            predicted = model.predict(inputs)
            expected = run_session(session, inputs)
            assert set(predicted) == set(expected), which
            for name, value in expected.items():
                assert np.asarray(predicted[name]).shape == value.shape, (which, name)
                np.testing.assert_array_equal(np.asarray(predicted[name]), value)


@pytest.mark.slow
def test_logged_signatures_leave_batch_and_sequence_open(logged) -> None:
    import mlflow.models

    _, run_id, _ = logged
    for which, uri in _model_uris(run_id).items():
        signature = mlflow.models.get_model_info(uri).signature
        inputs = {spec.name: spec for spec in signature.inputs.inputs}
        assert set(inputs) == {"input_ids", "attention_mask"}, which
        for spec in inputs.values():
            assert spec.shape == (-1, -1), (which, spec)
            assert str(spec.type) == "int64"
        (logits,) = signature.outputs.inputs
        assert logits.name == "logits"
        # Batch and sequence are open; the label axis is fixed by the classifier head.
        assert logits.shape[:2] == (-1, -1) and logits.shape[2] > 0, (which, logits)
        example = mlflow.models.get_model_info(uri).saved_input_example_info
        assert example is not None, f"{which} was logged without an input example"


@pytest.mark.slow
def test_logged_text_models_answer_texts_as_the_predictor_does(logged) -> None:
    import mlflow.pyfunc

    from onnxport.predict import OnnxPredictor
    from onnxport.samples import RESUME_LINES

    _, run_id, output = logged
    texts = list(RESUME_LINES[:5])
    for variant in ("fp32", "int8"):
        model = mlflow.pyfunc.load_model(f"runs:/{run_id}/text_{variant}")
        expected = [p.to_dict() for p in OnnxPredictor(output, variant).predict(texts)]
        assert model.predict(texts) == expected, variant


@pytest.mark.slow
def test_the_registered_model_is_the_fp32_text_model_tagged_with_its_lineage(logged) -> None:
    import mlflow.models
    from mlflow.tracking import MlflowClient

    uri, run_id, _ = logged
    (version,) = MlflowClient(uri).search_model_versions(f"name='{REGISTERED_NAME}'")
    assert version.run_id == run_id
    assert version.tags["onnxport.conv_fp"] == CONV_FP
    assert version.tags["onnxport.variant"] == "fp32"
    assert version.tags["code.lineage.parent_training_run_id"] == TRAINING_RUN_ID
    info = mlflow.models.get_model_info(f"models:/{REGISTERED_NAME}/{version.version}")
    assert "python_function" in info.flavors and "onnx" not in info.flavors
