"""The conversion child, `python -m onnxport.execution ...`: the platform's flags, the
conversion, and the MLflow logging of the parent's run.

It tells its parent (when it has one) how it goes through `protocol.ParentChannel`; run on
its own, as Azure ML runs it, it logs its progress and writes its outcome to the result file.
Nothing heavy is imported at module level: the parent and the Azure ML job builder import
`ChildArguments` from here.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from onnxport import interrupts
from onnxport.errors import (
    ExecutionError,
    InternalError,
    OnnxportError,
    TrackingError,
    one_line,
)
from onnxport.execution.protocol import (
    FORWARDED_LEVEL,
    PARENT_PID_ENV,
    RESULT_ENV,
    Outcome,
    ParentChannel,
    log_event,
    write_result_file,
)
from onnxport.interrupts import Interrupted

logger = logging.getLogger("onnxport.execution")  # also when run as __main__

REGISTERED_MODEL_ENV = "ONNXPORT_REGISTERED_MODEL_NAME"
LINEAGE_ENV = "ONNXPORT_LINEAGE"


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


def _exit_when_orphaned(parent_pid: int) -> None:
    """Stop the child when its parent dies, so that no conversion runs on unwatched.

    The child has its own session (so that the parent can kill its whole group), which
    also means it outlives a killed parent; the MLflow run is marked FAILED on the way out.
    """
    while os.getppid() == parent_pid:
        time.sleep(1.0)
    logger.error("the parent process %d is gone; stopping the conversion", parent_pid)
    run_id = os.environ.get("MLFLOW_RUN_ID")
    if run_id:
        with contextlib.suppress(Exception):
            from mlflow.tracking import MlflowClient

            client = MlflowClient()
            if client.get_run(run_id).info.status == "RUNNING":  # not one logged and ended
                client.set_terminated(run_id, status="FAILED")
    os._exit(1)


def _setup_logging(channel: ParentChannel | None) -> None:
    """Log to stderr; with a parent, the records it must see go to it instead, whole."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    )
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    root.addHandler(handler)
    if channel is not None:
        handler.addFilter(lambda record: record.levelno < FORWARDED_LEVEL)
        root.addHandler(channel.log_handler())
    for noisy in ("torch", "onnx_ir", "onnxscript"):
        logging.getLogger(noisy).setLevel(logging.WARNING if noisy != "torch" else logging.ERROR)


def child_main(argv: list[str]) -> int:
    # Watch the parent before the imports below, which take seconds: a parent killed
    # meanwhile must not leave its run RUNNING. Its pid comes from the parent itself, so that
    # a parent already gone when this line runs is noticed too.
    parent_pid = int(os.environ.pop(PARENT_PID_ENV, "") or os.getppid())
    threading.Thread(target=_exit_when_orphaned, args=(parent_pid,), daemon=True).start()
    channel = ParentChannel.from_environment()
    with interrupts.handling():
        return _convert(channel, argv)


def _convert(channel: ParentChannel | None, argv: list[str]) -> int:
    args = parse_arguments(argv)
    result_file = args.result_file or (
        Path(os.environ[RESULT_ENV]) if RESULT_ENV in os.environ else None
    )
    _setup_logging(channel)

    def finish(outcome: Outcome) -> None:
        if channel is not None:
            channel.send(outcome)
        if result_file is not None:
            write_result_file(result_file, outcome)

    def progress(event) -> None:
        if channel is not None:
            channel.send(event)
        else:
            log_event(logger, event)

    try:
        # The parent starts this process with SIGINT and SIGTERM blocked: from here on they
        # are handled, and one sent meanwhile arrives now.
        interrupts.accept()
        from onnxport.pipeline import convert
        from onnxport.process import freeze_startup_objects
        from onnxport.request import ConversionRequest
        from onnxport.request.config import load_conversion_config

        config = load_conversion_config(args.config_dir)
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
        manifest = convert(request, progress=progress, before_publish=before_publish)
    except OnnxportError as e:
        if channel is None:  # a parent raises it again, and says it once
            logger.error("%s", e)
        finish(Outcome(error=e.to_dict()))
        return e.exit_code
    except Interrupted as e:  # SIGINT from the parent, or SIGTERM (a cancelled job)
        stopped = ExecutionError(f"the conversion was stopped by {e}; nothing was published")
        if channel is None:
            logger.error("%s", stopped)
        finish(Outcome(error=stopped.to_dict()))
        return e.exit_code
    except BaseException as e:
        traceback.print_exc()
        bug = InternalError(f"{type(e).__name__}: {e}")
        finish(Outcome(error=bug.to_dict()))
        return bug.exit_code
    finish(
        Outcome(manifest=Path(args.output_dir) / "manifest.json", peak_rss_mb=manifest.peak_rss_mb)
    )
    return 0


def _mlflow_logger() -> Callable:
    """Log the staged conversion to the parent's run before it is published."""

    def log(manifest, directory: Path) -> None:
        from onnxport.tracking import log_conversion, quiet_mlflow

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
