"""Isolated execution: the conversion runs in a child process, the parent watches it.

The child (`python -m onnxport.execution ...`) converts and writes a structured result
file: the manifest path, or the error as data. The parent streams the child's log lines
as they come, enforces a timeout, records the child's peak memory, and re-raises a child's
error as the same typed error. A crash, an out-of-memory kill or a hang in the exporter
cannot take the caller down.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from onnxport.errors import (
    ExecutionError,
    InternalError,
    OnnxportError,
    TrackingError,
    error_from_dict,
    one_line,
)

logger = logging.getLogger("onnxport.execution")  # also when run as __main__

RESULT_ENV = "ONNXPORT_RESULT_FILE"
REGISTERED_MODEL_ENV = "ONNXPORT_REGISTERED_MODEL_NAME"
LINEAGE_ENV = "ONNXPORT_LINEAGE"
PARENT_PID_ENV = "ONNXPORT_PARENT_PID"
POLL_SECONDS = 0.1


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
        return args


@dataclass(frozen=True)
class ChildResult:
    manifest_path: Path
    seconds: float
    peak_rss_mb: float


# ---------------------------------------------------------------------------- the child


def _parse(argv: list[str]) -> argparse.Namespace:
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
    parser.add_argument("--result-file", type=Path, default=None)
    return parser.parse_args(argv)


def _write_result(path: Path | None, payload: dict) -> None:
    if path is None:
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload), encoding="utf-8")
    tmp.replace(path)


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


def child_main(argv: list[str]) -> int:
    # Watch the parent before the imports below, which take seconds: a parent killed
    # meanwhile must not leave its run RUNNING. Its pid comes from the parent itself, so that
    # a parent already gone when this line runs is noticed too.
    parent_pid = int(os.environ.pop(PARENT_PID_ENV, "") or os.getppid())
    threading.Thread(target=_exit_when_orphaned, args=(parent_pid,), daemon=True).start()
    from onnxport.pipeline import convert
    from onnxport.process import freeze_startup_objects
    from onnxport.progress import StageEvent, Status
    from onnxport.request import ConversionRequest
    from onnxport.request.config import load_conversion_config

    args = _parse(argv)
    result_file = args.result_file or (
        Path(os.environ[RESULT_ENV]) if RESULT_ENV in os.environ else None
    )
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    for noisy in ("torch", "onnx_ir", "onnxscript"):
        logging.getLogger(noisy).setLevel(logging.WARNING if noisy != "torch" else logging.ERROR)
    try:
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
            conv_fp=args.conv_fp,
            lineage=lineage,
        )

        def progress(event: StageEvent) -> None:
            if event.status is not Status.START:
                logger.info(
                    "stage %s %s in %.1f s", event.stage.value, event.status.value, event.seconds
                )
            else:
                logger.info("stage %s started", event.stage.value)

        before_publish = _mlflow_logger() if os.environ.get("MLFLOW_RUN_ID") else None
        freeze_startup_objects()
        manifest = convert(request, progress=progress, before_publish=before_publish)
    except OnnxportError as e:
        logger.error("%s", e)
        _write_result(result_file, {"ok": False, "error": e.to_dict()})
        return e.exit_code
    except BaseException as e:
        traceback.print_exc()
        bug = InternalError(f"{type(e).__name__}: {e}")
        _write_result(result_file, {"ok": False, "error": bug.to_dict()})
        return bug.exit_code
    _write_result(
        result_file,
        {
            "ok": True,
            "manifest": str(Path(args.output_dir) / "manifest.json"),
            "peak_rss_mb": manifest.peak_rss_mb,
        },
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


# --------------------------------------------------------------------------- the parent


def _tree_rss(process) -> int:
    import psutil

    try:
        total = process.memory_info().rss
        for child in process.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                total += child.memory_info().rss
        return total
    except psutil.Error:
        return 0


def _stream(pipe, sink: Callable[[str], None]) -> None:
    for line in iter(pipe.readline, ""):
        sink(line.rstrip("\n"))
    pipe.close()


def _kill_group(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def run_child(
    arguments: ChildArguments,
    *,
    timeout_seconds: float,
    result_file: Path,
    env: dict[str, str] | None = None,
    on_line: Callable[[str], None] | None = None,
) -> ChildResult:
    """Run the conversion child and return its result, or raise its error.

    Args:
        arguments: the child's command line.
        timeout_seconds: the child is killed (its whole process group) after this long.
        result_file: where the child writes its structured result.
        env: extra environment for the child (MLflow run id, lineage).
        on_line: receives each log line of the child as it comes; default: our logger.
    """
    import psutil

    sink = on_line or (lambda line: logger.info("[conversion] %s", line))
    result_file.unlink(missing_ok=True)
    child_env = {
        **os.environ,
        **(env or {}),
        RESULT_ENV: str(result_file),
        PARENT_PID_ENV: str(os.getpid()),
    }
    child_env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    command = [sys.executable, "-m", "onnxport.execution", *arguments.argv()]
    started = time.perf_counter()
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=child_env,
        start_new_session=True,  # its own process group, so a kill reaches its helpers too
    )
    reader = threading.Thread(target=_stream, args=(process.stdout, sink), daemon=True)
    reader.start()
    watched = psutil.Process(process.pid)
    peak = 0
    timed_out = False
    try:
        while process.poll() is None:
            peak = max(peak, _tree_rss(watched))
            if time.perf_counter() - started > timeout_seconds:
                timed_out = True
                _kill_group(process)
                process.wait()
                break
            time.sleep(POLL_SECONDS)
    except BaseException:
        _kill_group(process)  # the caller was interrupted: leave no orphan behind
        process.wait()
        raise
    finally:
        reader.join(timeout=5)
    seconds = time.perf_counter() - started
    peak_mb = peak / 2**20
    if timed_out:
        raise ExecutionError(
            f"the conversion did not finish within {timeout_seconds:g} s and was stopped",
            hint="raise execution.timeout_seconds in conversion.yaml if the model is large",
        )
    code = process.returncode
    payload = _read_result(result_file)
    if payload is not None and payload.get("ok"):
        return ChildResult(Path(payload["manifest"]), seconds, peak_mb)
    if payload is not None and payload.get("error"):
        raise error_from_dict(payload["error"])
    if code is not None and code < 0:
        name = signal.Signals(-code).name
        hint = "the machine may have run out of memory" if name == "SIGKILL" else None
        raise ExecutionError(
            f"the conversion process was killed by {name} after {seconds:.0f} s "
            f"(peak memory {peak_mb:.0f} MB)",
            hint=hint,
        )
    raise ExecutionError(
        f"the conversion process exited with code {code} without a result",
        hint="rerun with --debug to see its log",
    )


def _read_result(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
