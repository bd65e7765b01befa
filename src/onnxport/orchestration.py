"""The platform-facing API: `execute_conversion` for a finished training run.

Reads the training output, fingerprints the request, and either returns the complete
directory of an identical earlier conversion (its reuse recorded in MLflow, by default by a
detached recorder: `tracking.reuse`) or runs the conversion in an isolated child process,
tracked in MLflow with its lineage. One conversion per `conv_fp` at a time: a
second caller waits on a file lock and then reuses the first one's result.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from onnxport import interrupts
from onnxport.artifact.manifest import verify_directory
from onnxport.artifact.publish import remove_stale_partials
from onnxport.errors import ConfigError
from onnxport.execution import LINEAGE_ENV, REGISTERED_MODEL_ENV, ChildArguments, run_child
from onnxport.progress import ProgressCallback
from onnxport.request.config import (
    CONVERSION_CONFIG_FILENAME,
    ConversionConfig,
    ExperimentConfig,
    check_named_files,
    load_conversion_config,
    load_experiment_config,
)
from onnxport.request.fingerprints import check_fingerprint, conversion_fingerprint
from onnxport.request.hosting import resolve_platform
from onnxport.request.lineage import local_lineage, run_tags
from onnxport.request.paths import (
    ParentTrainingOutput,
    conversion_output_dir,
    read_parent_training_output,
)
from onnxport.tracking.reuse import ReuseRecord, defer_reuse, record_reuse
from onnxport.tracking.store import (
    create_run,
    ensure_experiment,
    failed_unless_finished,
    prepare_store,
    resolve_artifact_location,
    resolve_tracking_uri,
)

logger = logging.getLogger(__name__)

LOCK_TIMEOUT_SECONDS = 6 * 3600


def _experiment(
    experiment_config: ExperimentConfig | Mapping[str, Any] | None,
    config_dir: Path,
    name: str | None,
) -> ExperimentConfig:
    if experiment_config is None:
        experiment = load_experiment_config(config_dir)
    elif isinstance(experiment_config, ExperimentConfig):
        experiment = experiment_config
    elif isinstance(experiment_config, Mapping):
        known = set(ExperimentConfig.model_fields)
        try:
            experiment = ExperimentConfig.model_validate(
                {k: v for k, v in experiment_config.items() if k in known}
            )
        except ValueError as e:
            raise ConfigError(f"invalid experiment_config: {' '.join(str(e).split())}") from e
    else:
        raise ConfigError(
            f"experiment_config must be an ExperimentConfig or a mapping, "
            f"not {type(experiment_config).__name__}"
        )
    if name:
        experiment = experiment.model_copy(update={"experiment_name": name})
    return experiment


def execute_conversion(
    root_dir: Path,
    config_dir: Path,
    parent_training_output_dir: Path,
    parent_spec_fp: str,
    parent_exec_fp: str,
    experiment_config: ExperimentConfig | Mapping[str, Any] | None,
    conversion_experiment_name: str | None,
    platform: str | None,
    parent_training_run_id: str | None = None,
    *,
    force: bool = False,
    wait_for_tracking: bool = False,
    on_log_line: Callable[[str], None] | None = None,
    on_progress: ProgressCallback | None = None,
) -> Path:
    """Convert a training run's checkpoint; return the complete output directory.

    Args:
        root_dir: the project root; outputs, `mlflow.db` and `mlartifacts` go below it.
        config_dir: holds `conversion.yaml` (and optionally `experiment.yaml`).
        parent_training_output_dir: `…/spec_<fp>_exec_<fp>/v<n>` with `checkpoint/` and
            `metadata.json`.
        parent_spec_fp, parent_exec_fp: the training run's fingerprints (hex).
        experiment_config: where to track; None reads `<config_dir>/experiment.yaml`.
        conversion_experiment_name: the MLflow experiment name (overrides the config's).
        platform: `local`, `azureml`, `colab`, `kaggle`; None detects it.
        parent_training_run_id: the training run's MLflow run id, recorded as lineage.
        force: rebuild even if a complete identical conversion exists, exporting even when
            the export cache holds the graph.
        wait_for_tracking: a reused conversion returns once its MLflow run is written, not
            as soon as the directory is checked (its run is then written by a detached
            recorder, `tracking.reuse`). A reuse that registers its model always waits.
        on_log_line: receives the conversion process's log lines as they come (its records
            of WARNING and above go to this process's logging instead).
        on_progress: receives the conversion's `StageEvent`s as they come; default: logged.
    """
    started = time.perf_counter()
    plan = _plan(
        config_dir,
        parent_training_output_dir,
        parent_spec_fp,
        parent_exec_fp,
        platform,
        parent_training_run_id,
        root_dir=Path(root_dir),
        experiment=lambda directory: _experiment(
            experiment_config, directory, conversion_experiment_name
        ),
    )
    experiment = plan.experiment
    tracking_uri = resolve_tracking_uri(Path(root_dir), experiment)
    artifact_location = resolve_artifact_location(Path(root_dir), experiment)
    tags = run_tags(plan.lineage, plan.config, user_tags=experiment.tags)
    output_dir = plan.output_dir
    reuse = ReuseRecord(
        tracking_uri=tracking_uri,
        experiment_name=experiment.experiment_name,
        artifact_location=artifact_location,
        run_name=plan.run_name + "-reused",
        tags=tags,
        output_dir=output_dir,
        registered_model_name=experiment.registered_model_name,
    )
    # A complete directory is returned without a lock (it is replaced, if ever, by one
    # rename) and without MLflow, unless the caller waits for the reuse's run. A killed
    # run's leftovers still go: only those of processes that no longer run are touched.
    if not force and output_dir.is_dir() and not verify_directory(output_dir):
        remove_stale_partials(output_dir)
        if wait_for_tracking or reuse.registered_model_name:
            record_reuse(reuse)
        else:
            defer_reuse(reuse, Path(root_dir))
        return _reused(output_dir, started)
    client = prepare_store(tracking_uri)  # fails here, before anything is made, if unreachable
    experiment_id = ensure_experiment(client, experiment.experiment_name, artifact_location)

    from filelock import FileLock

    output_dir.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(
        str(output_dir.parent / f".{output_dir.name}.lock"), timeout=LOCK_TIMEOUT_SECONDS
    )
    with lock:
        # First: a killed run's leftovers go, and an earlier result it had moved aside returns.
        remove_stale_partials(output_dir)
        if not force and not verify_directory(output_dir):
            # Made while this call waited for the lock, or returned from aside: the store is
            # open, so the reuse's run is written at once.
            record_reuse(reuse, client)
            return _reused(output_dir, started)
        run_id = create_run(client, experiment_id, run_name=plan.run_name, tags=tags)
        logger.info(
            "converting %s into %s (MLflow run %s)", plan.parent.checkpoint, output_dir, run_id
        )
        with interrupts.handling(), failed_unless_finished(client, run_id):
            try:
                child = run_child(
                    plan.child_arguments(refresh_export_cache=force),
                    timeout_seconds=plan.config.execution.timeout_seconds,
                    config=plan.config,  # what conv_fp describes: the file is not read again
                    env={
                        "MLFLOW_TRACKING_URI": tracking_uri,
                        "MLFLOW_RUN_ID": run_id,
                        "MLFLOW_EXPERIMENT_ID": experiment_id,
                        LINEAGE_ENV: json.dumps({**plan.lineage, "mlflow_run_id": run_id}),
                        REGISTERED_MODEL_ENV: experiment.registered_model_name or "",
                    },
                    on_event=on_progress,
                    on_line=on_log_line,
                )
            except KeyboardInterrupt:
                # A child killed after its grace period could not remove its work directory.
                with interrupts.shielded():
                    remove_stale_partials(output_dir)
                raise
            client.log_metric(run_id, "child_peak_rss_mb", child.peak_rss_mb)
            client.log_metric(run_id, "seconds.total", time.perf_counter() - started)
    logger.info("conversion complete in %.1f s: %s", time.perf_counter() - started, output_dir)
    return output_dir


def _reused(output_dir: Path, started: float) -> Path:
    logger.info(
        "reusing the complete conversion %s (%.2f s)", output_dir, time.perf_counter() - started
    )
    return output_dir


@dataclass(frozen=True)
class _Plan:
    """What one `execute_conversion` converts, with which settings, into which directory."""

    config_dir: Path
    config: ConversionConfig
    experiment: ExperimentConfig
    parent: ParentTrainingOutput
    conv_fp: str
    output_dir: Path
    lineage: dict[str, str]
    run_name: str

    def child_arguments(self, *, refresh_export_cache: bool) -> ChildArguments:
        return ChildArguments(
            checkpoint_path=self.parent.checkpoint,
            config_dir=self.config_dir,
            backbone=self.parent.backbone,
            output_dir=self.output_dir,
            opset_version=self.config.onnx.opset_version,
            quantize_int8=False,
            run_smoke_test=self.config.onnx.run_smoke_test,
            force=True,  # a damaged or forced directory is replaced atomically
            conv_fp=self.conv_fp,
            refresh_export_cache=refresh_export_cache,
        )


def _plan(
    config_dir: Path,
    parent_training_output_dir: Path,
    parent_spec_fp: str,
    parent_exec_fp: str,
    platform: str | None,
    parent_training_run_id: str | None,
    *,
    root_dir: Path,
    experiment: Callable[[Path], ExperimentConfig],
) -> _Plan:
    """Check the arguments and read the config and the training output: every bad input is
    refused here, before the tracking store is touched."""
    spec_fp = check_fingerprint(parent_spec_fp, "parent_spec_fp")
    exec_fp = check_fingerprint(parent_exec_fp, "parent_exec_fp")
    platform_name = resolve_platform(platform)
    config_dir = Path(config_dir)
    # The directory's conversion.yaml, so that a missing directory is reported by that name.
    config = load_conversion_config(
        config_dir if config_dir.is_file() else config_dir / CONVERSION_CONFIG_FILENAME
    )
    check_named_files(config)
    tracked = experiment(config_dir)
    parent = read_parent_training_output(
        Path(parent_training_output_dir), parent_spec_fp=spec_fp, parent_exec_fp=exec_fp
    )
    conv_fp = conversion_fingerprint(spec_fp, exec_fp, config, version=parent.version)
    return _Plan(
        config_dir=config_dir,
        config=config,
        experiment=tracked,
        parent=parent,
        conv_fp=conv_fp,
        output_dir=conversion_output_dir(
            root_dir,
            platform=platform_name,
            backbone=parent.backbone,
            parent_spec_fp=spec_fp,
            parent_exec_fp=exec_fp,
            version=parent.version,
            conv_fp=conv_fp,
        ),
        lineage=local_lineage(
            parent,
            parent_spec_fp=spec_fp,
            parent_exec_fp=exec_fp,
            conv_fp=conv_fp,
            platform=platform_name,
            parent_training_run_id=parent_training_run_id,
        ),
        run_name=f"conversion-{parent.backbone}-spec_{spec_fp}_exec_{exec_fp}"
        f"-v{parent.version}-{conv_fp}",
    )
