"""`onnxport serve`: the text model behind MLflow's own scoring server (uvicorn, with its
`/invocations`, `/ping`, `/health` and `/version` endpoints and request formats), wrapped in
`RequestLimits`, which does what that server does not:

- a body over `max_body_bytes` is refused before it is read (MLflow reads any body whole);
- a body without a Content-Type, or of a type MLflow does not read, is refused (MLflow
  answers the first with a 500, the second with plain text);
- the texts of an `inputs` or `instances` request are checked as sent, by the model's own
  `input_texts`: MLflow's parser makes them a numpy array, which turns `["Jane", 3]` into
  two strings before the model sees them;
- `params` the model does not take are refused (MLflow drops them with a warning);
- every error answer is one line of JSON: MLflow quotes the whole request (and for a
  model's error, its traceback) in the message.

Which texts a request holds, and every other refusal (a table without one `text` column, a
text that is not a string, no texts, more than `max_batch`, a text too long under
`on_long_text=error`), are the model's own (`serving.model`), so they hold under a plain
`mlflow models serve` too. `onnxport serve` saves the model and starts uvicorn in a child
process; each uvicorn worker builds its app with `create_app`, from the settings in its
environment.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

from mlflow.pyfunc.scoring_server import CONTENT_TYPE_JSON, CONTENT_TYPES
from pydantic import BaseModel, ConfigDict

from onnxport.errors import PredictError, ServeError, one_line
from onnxport.serving import DEFAULT_MAX_BODY_KB
from onnxport.serving.model import ServedConfig, input_texts

logger = logging.getLogger(__name__)

SETTINGS_ENV = "ONNXPORT_SERVE_SETTINGS"
STOP_SECONDS = 30
"""How long a stopping server may take to finish the requests it holds."""
INVOCATIONS = "/invocations"
SENT_AS_ARRAYS = ("inputs", "instances")
"""The JSON request formats MLflow's parser makes numpy arrays of (the others, tables)."""
REQUEST_FORMATS = (*SENT_AS_ARRAYS, "dataframe_records", "dataframe_split")
"""The JSON keys of MLflow's request formats."""
_READABLE = (
    f"{CONTENT_TYPE_JSON} (or {', '.join(t for t in CONTENT_TYPES if t != CONTENT_TYPE_JSON)})"
)
# MLflow's wording around a model's error and around a body it cannot parse.
_MLFLOW_PREDICT_PREFIX = "Failed to predict data"
_MLFLOW_ERROR_MARK = "\nError: "
_MLFLOW_INPUT_MARK = "\nInput:"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


class ServeSettings(BaseModel):
    """What each worker needs to build its app: where the saved model is, and the limits."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_path: Path
    max_body_bytes: int = DEFAULT_MAX_BODY_KB * 1024
    served: ServedConfig = ServedConfig()


def texts_refusal(body: bytes, max_batch: int) -> str | None:
    """Why the model would refuse the texts of an `inputs` or `instances` request
    (`input_texts` on the JSON as sent); None when it would not, and for any other body (the
    model, or MLflow, says what is wrong with it)."""
    try:
        payload = json.loads(body)
    except ValueError:
        return None
    if not isinstance(payload, dict) or len(payload.keys() & set(REQUEST_FORMATS)) != 1:
        return None
    key = next((k for k in SENT_AS_ARRAYS if k in payload), None)
    if key is None:
        return None
    try:
        input_texts(payload[key], max_batch)
    except PredictError as e:
        return one_line(e, 500)
    return None


def params_refusal(body: bytes, accepted: frozenset[str]) -> str | None:
    """Why a JSON request's `params` would be dropped: names the model does not take (MLflow
    drops them with a warning in its log, and the client never learns that its setting was
    not used); None when all are taken, and for any other body."""
    try:
        payload = json.loads(body)
    except ValueError:
        return None
    params = payload.get("params") if isinstance(payload, dict) else None
    if not isinstance(params, dict):
        return None
    unknown = sorted(set(params) - accepted)
    if not unknown:
        return None
    takes = f"takes {', '.join(sorted(accepted))}" if accepted else "takes no params"
    return f"unknown params {unknown}: this model {takes}"


def one_line_reason(message: str) -> str:
    """MLflow's error message without the request it quotes, on one line."""
    head, mark, reason = message.rpartition(_MLFLOW_ERROR_MARK)
    if mark and head.startswith(_MLFLOW_PREDICT_PREFIX):
        message = reason
    return one_line(message.split(_MLFLOW_INPUT_MARK, 1)[0], 500)


def _error_body(error_code: str, message: str) -> bytes:
    return json.dumps({"error_code": error_code, "message": message}).encode()


async def _answer(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    headers = [(k, v) for k, v in headers if k.lower() != b"content-length"]
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _refuse(send: Send, error_code: str, message: str) -> None:
    body = _error_body(error_code, message)
    await _answer(send, 400, body, [(b"content-type", b"application/json")])


def _replay(body: bytes, receive: Receive) -> Receive:
    """`receive` for the app behind: the body already read, then the client's next events."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replayed() -> Message:
        return pending.pop() if pending else await receive()

    return replayed


def _one_line_errors(send: Send) -> Send:
    """`send` for the app behind: an error answer's JSON message cut to `one_line_reason`;
    one that is not MLflow's JSON error (its 415 for a charset, its 504, a plain 500) made
    one, its text the message."""
    start: Message | None = None
    chunks: list[bytes] = []

    async def sending(message: Message) -> None:
        nonlocal start
        if message["type"] == "http.response.start" and message["status"] >= 400:
            start = message
            return
        if start is None or message["type"] != "http.response.body":
            await send(message)
            return
        chunks.append(message.get("body", b""))
        if message.get("more_body", False):
            return
        body = b"".join(chunks)
        status = start["status"]
        try:
            error = json.loads(body)
            code, message = str(error.get("error_code", "BAD_REQUEST")), str(error["message"])
        except (ValueError, KeyError, TypeError, AttributeError):
            code = "BAD_REQUEST" if status < 500 else "INTERNAL_ERROR"
            message = body.decode("utf-8", "replace")
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-type"]
        headers.append((b"content-type", b"application/json"))
        await _answer(send, status, _error_body(code, one_line_reason(message)), headers)

    return sending


class RequestLimits:
    """ASGI middleware in front of MLflow's scoring app, on `/invocations` only."""

    def __init__(
        self,
        app: App,
        *,
        max_body_bytes: int,
        max_batch: int,
        params: frozenset[str] = frozenset(),
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_batch = max_batch
        self.params = params
        """The params the model takes (its signature's)."""

    def _too_large(self, size: int | None) -> str:
        limit = f"this server's limit of {self.max_body_bytes} bytes"
        # A chunked body declares no length: it is refused once it has passed the limit.
        said = f"{size} bytes, over {limit}" if size is not None else f"more than {limit}"
        return (
            f"the request body is {said} (onnxport serve --max-body-kb): "
            "send fewer or shorter texts"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") != INVOCATIONS:
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", []))
        content_type = headers.get(b"content-type")
        if content_type is None:  # MLflow's server fails on it with a 500
            await _refuse(send, "BAD_REQUEST", f"the request has no Content-Type: send {_READABLE}")
            return
        media = content_type.decode("latin-1").split(";")[0].strip()
        if media not in CONTENT_TYPES:
            await _refuse(
                send,
                "BAD_REQUEST",
                f"Content-Type {media} is not one this server reads: send {_READABLE}",
            )
            return
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            await _refuse(send, "BAD_REQUEST", self._too_large(int(declared)))
            return
        body = bytearray()
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_body_bytes:
                await _refuse(send, "BAD_REQUEST", self._too_large(None))
                return
        if media == CONTENT_TYPE_JSON:
            reason = texts_refusal(bytes(body), self.max_batch) or params_refusal(
                bytes(body), self.params
            )
            if reason is not None:
                await _refuse(send, "INVALID_PARAMETER_VALUE", reason)
                return
        await self.app(scope, _replay(bytes(body), receive), _one_line_errors(send))


def create_app() -> App:
    """The app of one uvicorn worker (`uvicorn --factory`): the saved model loaded with its
    settings, behind MLflow's scoring server and `RequestLimits`."""
    import mlflow.pyfunc
    from mlflow.pyfunc import scoring_server

    settings = ServeSettings.model_validate_json(os.environ[SETTINGS_ENV])
    model = mlflow.pyfunc.load_model(
        str(settings.model_path), model_config=settings.served.logged()
    )
    schema = model.metadata.get_params_schema()
    return RequestLimits(
        scoring_server.init(model),
        max_body_bytes=settings.max_body_bytes,
        max_batch=settings.served.max_batch,
        params=frozenset(p.name for p in schema.params) if schema else frozenset(),
    )


def check_port(host: str, port: int) -> None:
    """Fail before loading anything when `host:port` cannot be listened on."""
    try:
        with socket.create_server((host, port)):
            pass
    except OSError as e:
        raise ServeError(
            f"cannot listen on {host}:{port}: {e.strerror or e}", hint="choose another --port"
        ) from e


def run_server(settings: ServeSettings, *, host: str, port: int, workers: int) -> None:
    """Serve until interrupted (Ctrl-C, or SIGTERM to this process): uvicorn in a child
    process with `workers` processes, each building `create_app` from the settings passed in
    its environment. A fresh interpreter loads only what serving needs, not the modules that
    made the model (the server's memory is then MLflow's, ONNX Runtime's and the model's)."""
    command = [
        *(sys.executable, "-m", "uvicorn", "--factory", f"{__name__}:create_app"),
        *("--host", host, "--port", str(port), "--workers", str(workers)),
    ]
    environment = {**os.environ, SETTINGS_ENV: settings.model_dump_json()}
    logger.info("serving %s at http://%s:%d%s", settings.model_path, host, port, INVOCATIONS)
    # uvicorn logs each request on its stdout; a command's stdout holds its answer alone, so
    # all of the server's output goes to stderr (file descriptor 2: `sys.stderr` may be an
    # in-memory stream).
    child = subprocess.Popen(command, env=environment, stdout=2)
    previous = signal.signal(signal.SIGTERM, lambda *_: child.terminate())
    try:
        code = child.wait()
    except KeyboardInterrupt:  # the terminal's Ctrl-C reached the server too: it stops
        code = 0
    finally:
        signal.signal(signal.SIGTERM, previous)
        _stop(child)
    if code not in (0, -signal.SIGTERM):
        raise ServeError(f"the server stopped with exit code {code}", hint="its messages are above")


def _stop(child: subprocess.Popen) -> None:
    if child.poll() is None:
        child.terminate()
    try:
        child.wait(timeout=STOP_SECONDS)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()
