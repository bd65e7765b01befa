"""The conversion child, `python -m onnxport.execution ...`: the platform's flags, the
conversion, and the MLflow logging of the parent's run.

With a parent (`runner.run_child`) it takes the settings the parent read from the channel
(`onnxport.isolation`) and tells the parent how it goes there. Run on its own, as Azure ML
runs it, it reads `--config-dir`, logs its progress, and writes its outcome to the result file
(`--result-file` / `ONNXPORT_RESULT_FILE`) when one is named. Nothing heavy is imported at
module level: the parent and the Azure ML job builder import `ChildArguments` from here.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from onnxport import interrupts
from onnxport.errors import (
    ExecutionError,
    InternalError,
    OnnxportError,
    TrackingError,
    error_from_dict,
    one_line,
)
from onnxport.interrupts import Interrupted
from onnxport.isolation.channel import Channel, Outcome, log_event
from onnxport.isolation.child import outcome_of, setup_logging, watch_parent
from onnxport.process import peak_rss_mb
from onnxport.progress import ProgressCallback, StageEvent

logger = logging.getLogger("onnxport.execution")  # also when run as __main__

REGISTERED_MODEL_ENV = "ONNXPORT_REGISTERED_MODEL_NAME"
LINEAGE_ENV = "ONNXPORT_LINEAGE"
RESULT_ENV = "ONNXPORT_RESULT_FILE"
"""Where the child writes its outcome as one JSON object, with or without a parent."""


@dataclass(frozen=True)
class ChildArguments:
    """The child's command line, as the DESIGN names it."""

    checkpoint_path: Path
    config_dir: Path
    backbone: str
    output_dir: Path
    opset_version: int
    quantize_int8: bool = False
    run_smoke_test: bool = True
    force: bool = False
    conv_fp: str | None = None
    refresh_export_cache: bool = False
    """Export even when the export cache holds the graph (`execute_conversion(force=True)`);
    `force` alone replaces the output directory, which the parent always asks for."""

    def argv(self) -> list[str]:
        args = [
            "--checkpoint-path", str(self.checkpoint_path),
            "--config-dir", str(self.config_dir),
            "--backbone", self.backbone,
            "--output-dir", str(self.output_dir),
            "--opset-version", str(self.opset_version),
        ]  # fmt: skip
        if self.quantize_int8:
            args.append("--quantize-int8")
        if self.run_smoke_test:
            args.append("--run-smoke-test")
        if self.force:
            args.append("--force")
        if self.conv_fp:
            args += ["--conv-fp", self.conv_fp]
        if self.refresh_export_cache:
            args.append("--refresh-export-cache")
        return args


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    """The platform's flags (`ChildArguments.argv`), and `--result-file`."""
    parser = argparse.ArgumentParser(prog="python -m onnxport.execution")
    parser.add_argument("--checkpoint-path", type=Path, required=True)
    parser.add_argument("--config-dir", type=Path, required=True)
    parser.add_argument("--backbone", required=True)
    parser.add_argument("--output-dir", type=Path, required=True)
    parser.add_argument("--opset-version", type=int, required=True)
    parser.add_argument("--quantize-int8", action="store_true")
    parser.add_argument("--run-smoke-test", action="store_true")
    parser.add_argument("--force", action="store_true")
    parser.add_argument("--conv-fp", default=None)
    parser.add_argument("--refresh-export-cache", action="store_true")
    parser.add_argument("--result-file", type=Path, default=None)
    return parser.parse_args(argv)


def _fail_the_run() -> None:
    """The MLflow run of a conversion whose parent died ends FAILED, unless it was logged
    and ended already."""
    run_id = os.environ.get("MLFLOW_RUN_ID")
    if not run_id:
        return
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    if client.get_run(run_id).info.status == "RUNNING":
        client.set_terminated(run_id, status="FAILED")


def child_main(argv: list[str]) -> int:
    # Watch the parent before the imports below, which take seconds: a parent killed
    # meanwhile must not leave its run RUNNING.
    watch_parent(on_orphaned=_fail_the_run)
    channel = Channel.from_environment()
    with interrupts.handling():
        return _main(channel, argv)


def _main(channel: Channel | None, argv: list[str]) -> int:
    args = parse_arguments(argv)
    result_file = args.result_file or (
        Path(os.environ[RESULT_ENV]) if RESULT_ENV in os.environ else None
    )
    setup_logging(channel)

    def progress(event: StageEvent) -> None:
        if channel is not None:
            channel.send(event)
        else:
            log_event(logger, event)

    try:
        # The parent starts this process with SIGINT blocked: from here on it is handled,
        # and one sent meanwhile arrives now.
        interrupts.accept()
        # The settings the parent read, fingerprinted and sent; run on its own, the file's.
        outcome, code = outcome_of(
            lambda: _convert(args, channel.receive() if channel else None, progress)
        )
    except Interrupted as e:  # SIGINT from the parent, or SIGTERM (a cancelled job)
        stopped = ExecutionError(f"the conversion was stopped by {e}; nothing was published")
        outcome, code = Outcome(error=stopped.to_dict()), e.exit_code
    if channel is not None:
        channel.send(outcome)
    elif outcome.error is not None:  # a parent raises it again, and says it once
        logger.error("%s", error_from_dict(outcome.error))
    if result_file is not None:
        write_result_file(result_file, outcome)
    return code


def _convert(args: argparse.Namespace, handed: object, progress: ProgressCallback) -> Path:
    """Convert as the flags say, with the `handed` settings or else `--config-dir`'s; return
    the published manifest's path."""
    from onnxport.pipeline import convert
    from onnxport.process import freeze_startup_objects
    from onnxport.request import ConversionRequest
    from onnxport.request.config import ConversionConfig, load_conversion_config

    if handed is not None and not isinstance(handed, ConversionConfig):
        raise InternalError(f"the parent sent {type(handed).__name__}, not the settings")
    config = handed if handed is not None else load_conversion_config(args.config_dir)
    config = config.with_overrides(
        onnx={
            "opset_version": args.opset_version,
            "quantization": "int8" if args.quantize_int8 else None,
            "run_smoke_test": True if args.run_smoke_test else None,
        }
    )
    lineage = json.loads(os.environ.get(LINEAGE_ENV, "{}"))
    lineage.setdefault("backbone", args.backbone)
    if os.environ.get("MLFLOW_RUN_ID"):
        lineage.setdefault("mlflow_run_id", os.environ["MLFLOW_RUN_ID"])
    request = ConversionRequest(
        source_path=args.checkpoint_path,
        output_dir=args.output_dir,
        config=config,
        force=args.force,
        refresh_export_cache=args.refresh_export_cache,
        conv_fp=args.conv_fp,
        lineage=lineage,
    )
    before_publish = _mlflow_logger() if os.environ.get("MLFLOW_RUN_ID") else None
    freeze_startup_objects()
    convert(request, progress=progress, before_publish=before_publish)
    return Path(args.output_dir) / "manifest.json"


def write_result_file(path: Path, outcome: Outcome) -> None:
    """The outcome as one JSON object, `{"ok": true, "manifest": ..., "peak_rss_mb": ...}` or
    `{"ok": false, "error": ...}`, replaced atomically so that no reader sees half."""
    if outcome.error is not None:
        data: dict[str, Any] = {"ok": False, "error": outcome.error}
    else:
        data = {"ok": True, "manifest": str(outcome.value), "peak_rss_mb": round(peak_rss_mb(), 1)}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data), encoding="utf-8")
    tmp.replace(path)


def _mlflow_logger() -> Callable:
    """Log the staged conversion to the parent's run before it is published."""

    def log(manifest, directory: Path) -> None:
        from onnxport.tracking.conversion import log_conversion
        from onnxport.tracking.store import quiet_mlflow

        quiet_mlflow()
        import mlflow

        run_id = os.environ["MLFLOW_RUN_ID"]
        try:
            with mlflow.start_run(run_id=run_id):
                log_conversion(
                    manifest,
                    directory,
                    registered_model_name=os.environ.get(REGISTERED_MODEL_ENV) or None,
                )
        except OnnxportError:
            raise
        except Exception as e:  # MLflow and its stores raise many types
            message = one_line(e)
            raise TrackingError(
                f"cannot log the conversion to MLflow run {run_id}: {message}"
            ) from e
        # mlflow.start_run's context ends the run FINISHED; the parent confirms it.

    return log
