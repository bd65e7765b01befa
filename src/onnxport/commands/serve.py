"""`onnxport serve OUT_DIR` and `onnxport serve --model-uri models:/NAME/VERSION`: a converted
model answering text over HTTP, with MLflow's scoring server. Registered by `cli.py`.

The serving code (MLflow, uvicorn) is imported when the command runs, not when the CLI starts.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated

import typer

from onnxport.commands.console import console, setup_logging
from onnxport.errors import ServeError
from onnxport.names import Variant
from onnxport.predict import LongText
from onnxport.serving import DEFAULT_MAX_BATCH, DEFAULT_MAX_BODY_KB


def serve_command(
    output_dir: Annotated[
        Path | None,
        typer.Argument(metavar="[OUT_DIR]", help="An onnxport output directory to serve."),
    ] = None,
    model_uri: Annotated[
        str | None,
        typer.Option(
            help="Serve a logged or registered text model instead: models:/NAME/VERSION, "
            "runs:/RUN_ID/text_fp32."
        ),
    ] = None,
    tracking_uri: Annotated[
        str | None,
        typer.Option(help="The MLflow store of --model-uri (default: MLFLOW_TRACKING_URI)."),
    ] = None,
    variant: Annotated[
        str | None, typer.Option(help="Published model of OUT_DIR: fp32 (default), int8, ...")
    ] = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.", min=1, max=65535)] = 5000,
    workers: Annotated[int, typer.Option(help="Server processes.", min=1)] = 1,
    threads: Annotated[
        int,
        typer.Option(
            help="ONNX Runtime threads per request (requests run in parallel, one core each).",
            min=1,
        ),
    ] = 1,
    max_batch: Annotated[
        int, typer.Option(help="Most texts in one request.", min=1)
    ] = DEFAULT_MAX_BATCH,
    max_body_kb: Annotated[
        int, typer.Option(help="Largest request body, KiB.", min=1)
    ] = DEFAULT_MAX_BODY_KB,
    on_long_text: Annotated[
        LongText, typer.Option(help="A text over the model's maximum length: truncate, or 400.")
    ] = LongText.TRUNCATE,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log each step.")] = False,
) -> None:
    """Serve a converted model over HTTP: texts in, entities (labels, vectors) out."""
    from onnxport.serving.model import ServedConfig
    from onnxport.serving.package import fetch_text_model, save_text_model
    from onnxport.serving.server import ServeSettings, check_port, run_server

    setup_logging(verbose)
    if (output_dir is None) == (model_uri is None):
        raise ServeError(
            "serve takes an output directory or --model-uri, one of the two",
            hint="onnxport serve OUT_DIR, or onnxport serve --model-uri models:/NAME/VERSION",
        )
    if model_uri is not None and variant is not None:
        raise ServeError("--variant picks a model of OUT_DIR; --model-uri names one already")
    check_port(host, port)
    served = ServedConfig(max_batch=max_batch, on_long_text=on_long_text, threads=threads)
    with tempfile.TemporaryDirectory(prefix="onnxport-serve-") as scratch:
        if model_uri is not None:
            if tracking_uri:
                import mlflow

                mlflow.set_tracking_uri(tracking_uri)
            path, what = fetch_text_model(model_uri, Path(scratch)), model_uri
        else:
            assert output_dir is not None
            chosen = variant or Variant.FP32
            path = save_text_model(output_dir, chosen, Path(scratch) / "model", served)
            what = f"{output_dir} ({chosen})"
        console.print(
            f"serving {what} at http://{host}:{port}/invocations: {workers} worker(s), "
            f"{threads} ONNX Runtime thread(s) per request, at most {max_batch} texts per "
            "request; "
            "Ctrl-C stops it",
            highlight=False,
            soft_wrap=True,
        )
        settings = ServeSettings(model_path=path, max_body_bytes=max_body_kb * 1024, served=served)
        run_server(settings, host=host, port=port, workers=workers)
