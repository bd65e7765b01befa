"""Atomic publishing: an output is complete or absent, and an earlier one survives failures."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from onnxport.artifact.manifest import read_manifest, verify_directory
from onnxport.artifact.publish import (
    OLD_MARKER,
    PARTIAL_MARKER,
    Staging,
    check_output_location,
    remove_stale_partials,
)
from onnxport.errors import EXIT_BAD_INPUT, OutputError

NAME = "distilbert-token"


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def _siblings(final: Path) -> list[str]:
    return sorted(p.name for p in final.parent.iterdir() if p.name != final.name)


# --- check_output_location ----------------------------------------------------------------


def test_a_new_or_empty_directory_is_fine(tmp_path: Path) -> None:
    check_output_location(tmp_path / "new", force=False)
    (tmp_path / "empty").mkdir()
    check_output_location(tmp_path / "empty", force=False)


def test_an_existing_file_is_refused(tmp_path: Path) -> None:
    file = tmp_path / "out"
    file.write_text("keep me", encoding="utf-8")
    for force in (False, True):
        with pytest.raises(OutputError, match="is an existing file") as info:
            check_output_location(file, force=force)
        assert info.value.exit_code == EXIT_BAD_INPUT
    assert file.read_text(encoding="utf-8") == "keep me"


def test_a_directory_of_something_else_is_refused_even_with_force(tmp_path: Path) -> None:
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "cat.jpg").write_bytes(b"\xff\xd8")
    for force in (False, True):
        with pytest.raises(OutputError, match="is not an onnxport output directory"):
            check_output_location(foreign, force=force)


def test_a_mount_point_is_refused_whatever_it_holds() -> None:
    """The root of the file system stands for any mount point (a container volume, mounted
    in `test_bad_inputs`): publishing renames onto the final name, which a mount cannot take."""
    for force in (False, True):
        with pytest.raises(OutputError, match="/ is a mount point") as info:
            check_output_location(Path("/"), force=force)
        assert info.value.exit_code == EXIT_BAD_INPUT
        assert "/model" in str(info.value.hint)


def test_a_complete_directory_needs_force(copy_output) -> None:
    complete = copy_output(NAME)
    with pytest.raises(OutputError, match="already holds a complete conversion") as info:
        check_output_location(complete, force=False)
    assert "force=True" in str(info.value)
    check_output_location(complete, force=True)


def test_a_damaged_directory_may_be_replaced(copy_output, caplog) -> None:
    damaged = copy_output(NAME)
    (damaged / "model_fp32.onnx").write_bytes(b"half a model")
    with caplog.at_level(logging.WARNING, logger="onnxport.artifact.publish"):
        check_output_location(damaged, force=False)
    assert "is damaged (model_fp32.onnx does not match its checksum)" in caplog.text


# --- Staging --------------------------------------------------------------------------------


def test_staging_works_in_a_hidden_sibling_and_publishes_by_rename(tmp_path: Path) -> None:
    final = tmp_path / "out"
    with Staging(final) as staging:
        assert staging.path.parent == tmp_path
        assert staging.path.name.startswith(f".out{PARTIAL_MARKER}{os.getpid()}-")
        assert staging.path.is_dir()
        assert not final.exists()
        (staging.path / "model.onnx").write_bytes(b"onnx")
        assert staging.publish() == final
    assert (final / "model.onnx").read_bytes() == b"onnx"
    assert _siblings(final) == []


def test_staging_removes_its_work_directory_on_an_exception(tmp_path: Path) -> None:
    final = tmp_path / "out"
    with pytest.raises(RuntimeError, match="export crashed"), Staging(final) as staging:
        (staging.path / "model.onnx").write_bytes(b"half")
        raise RuntimeError("export crashed")
    assert not staging.path.exists()
    assert not final.exists()
    assert list(tmp_path.iterdir()) == []


def test_staging_left_without_publish_leaves_nothing(tmp_path: Path) -> None:
    with Staging(tmp_path / "out") as staging:
        (staging.path / "x").write_text("x", encoding="utf-8")
    assert list(tmp_path.iterdir()) == []


def test_an_earlier_output_survives_a_failed_run(copy_output) -> None:
    final = copy_output(NAME)
    before = read_manifest(final)
    with pytest.raises(KeyboardInterrupt), Staging(final) as staging:
        (staging.path / "model_fp32.onnx").write_bytes(b"new but unfinished")
        raise KeyboardInterrupt
    assert verify_directory(final) == []
    assert read_manifest(final) == before
    assert _siblings(final) == []


def test_an_earlier_output_is_replaced_only_by_the_publish(copy_output) -> None:
    final = copy_output(NAME)
    old_model = (final / "model_fp32.onnx").read_bytes()
    with Staging(final) as staging:
        (staging.path / "model_fp32.onnx").write_bytes(b"new")
        # Until publish() the final name holds the old, complete output.
        assert verify_directory(final) == []
        assert (final / "model_fp32.onnx").read_bytes() == old_model
        staging.publish()
    assert sorted(p.name for p in final.iterdir()) == ["model_fp32.onnx"]
    assert (final / "model_fp32.onnx").read_bytes() == b"new"
    assert _siblings(final) == []  # the old one was removed after the rename


def test_staging_under_a_file_is_an_output_error(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("x", encoding="utf-8")
    with pytest.raises(OutputError, match="cannot write to"), Staging(blocker / "out"):
        pass


def test_a_relative_path_is_made_absolute(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with Staging(Path("out")) as staging:
        final = staging.publish()
    assert final == tmp_path / "out"
    assert final.is_absolute()


# --- stale work directories -----------------------------------------------------------------


def test_stale_partials_of_dead_processes_are_removed(tmp_path: Path) -> None:
    final = tmp_path / "out"
    dead = _dead_pid()
    live = os.getppid()
    stale = [
        tmp_path / f".out{PARTIAL_MARKER}{dead}-0000abcd",
        tmp_path / f".out{OLD_MARKER}{dead}-0000abcd",
        tmp_path / f".out{PARTIAL_MARKER}not-a-pid",
    ]
    kept = [
        tmp_path / f".out{PARTIAL_MARKER}{live}-0000abcd",  # another process still works
        tmp_path / f".other{PARTIAL_MARKER}{dead}-0000abcd",  # another output's
        tmp_path / "out-notes",
    ]
    for path in stale + kept:
        path.mkdir()
        (path / "model.onnx").write_bytes(b"x")
    remove_stale_partials(final)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in kept)


def test_staging_clears_stale_partials_before_it_starts(tmp_path: Path) -> None:
    leftover = tmp_path / f".out{PARTIAL_MARKER}{_dead_pid()}-0000abcd"
    leftover.mkdir()
    with Staging(tmp_path / "out") as staging:
        assert not leftover.exists()
        staging.publish()
    assert _siblings(tmp_path / "out") == []


def test_removing_partials_of_a_missing_parent_is_a_no_op(tmp_path: Path) -> None:
    remove_stale_partials(tmp_path / "missing" / "out")
    assert list(tmp_path.iterdir()) == []


# --- each file hashed once ----------------------------------------------------------------


def test_each_published_file_is_hashed_once_per_tracked_conversion(
    checkpoint, tmp_path_factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The models are hashed when finished, the other files when the manifest is sealed, and
    tracking trusts the manifest it is handed (it hashed the models three times, the other
    files twice)."""
    import collections

    import mlflow

    from onnxport.artifact import manifest as manifest_module
    from onnxport.artifact import publish
    from onnxport.artifact.report import REPORT_FILENAMES
    from onnxport.pipeline import convert
    from onnxport.request import ConversionRequest
    from onnxport.request.config import ConversionConfig, ExperimentConfig
    from onnxport.tracking.conversion import log_conversion
    from onnxport.tracking.store import (
        ensure_experiment,
        prepare_store,
        resolve_artifact_location,
        resolve_tracking_uri,
    )
    from support import root_with_store, using_tracking_uri

    hashed: collections.Counter[Path] = collections.Counter()
    real = manifest_module.sha256_file

    def counting(path: Path, **kwargs) -> str:
        hashed[Path(path).absolute()] += 1
        return real(path, **kwargs)

    monkeypatch.setattr(manifest_module, "sha256_file", counting)
    monkeypatch.setattr(publish, "sha256_file", counting)
    root = root_with_store(tmp_path_factory, "hashed-once")
    uri = resolve_tracking_uri(root, ExperimentConfig())
    experiment = ensure_experiment(
        prepare_store(uri), "hashed", resolve_artifact_location(root, ExperimentConfig())
    )
    staged: list[Path] = []

    def track(manifest, staging: Path) -> None:
        staged.append(staging.absolute())
        log_conversion(manifest, staging)

    with using_tracking_uri(uri), mlflow.start_run(experiment_id=experiment):
        convert(
            ConversionRequest(checkpoint(NAME), root / "out", ConversionConfig()),
            before_publish=track,
        )
    # Hashed in the staging directory, published under its final name. (MLflow's copy of the
    # text model is checked when MLflow loads it: another directory.)
    files = sorted(
        p.relative_to(root / "out")
        for p in (root / "out").rglob("*")
        if p.is_file() and p.name != "manifest.json"
    )
    assert Path("model_fp32.onnx") in files
    # The reports are hashed as they are written, from memory (report.write_reports).
    once = {f: 0 if f.name in REPORT_FILENAMES else 1 for f in files}
    assert {f: hashed[staged[0] / f] for f in files} == once
