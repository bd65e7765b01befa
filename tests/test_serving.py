"""The text model and `onnxport serve`: MLflow's own server answers texts with what
`OnnxPredictor` answers, refuses bad requests with a one-line 400 and stays up, and the model
it serves needs no torch.

The servers are real: `python -m onnxport.cli serve` on 127.0.0.1 and a free port, asked over
HTTP, stopped at the end of the module.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import requests

from onnxport.artifact.manifest import MANIFEST_FILENAME, read_manifest, verify_directory
from onnxport.artifact.reader import PublishedDirectory
from onnxport.errors import ServeError
from onnxport.predict import OnnxPredictor
from onnxport.serving.model import NO_TEXTS
from onnxport.serving.package import (
    SERVING_REQUIREMENTS,
    log_text_model,
    package_variant,
    save_text_model,
)
from support import root_with_store, using_tracking_uri

REPO = Path(__file__).resolve().parents[1]
TEXTS = (
    "Jane Doe , senior data engineer at Contoso Ltd .",
    "Contact Priya Natarajan at priya.natarajan@example.com or +44 (207) 555-0199 .",
    "Email : wei.chen@example.org | Phone : +1 (415) 555-0134",
    "Worked with Fabrikam Inc from March 2019 to 2023 using PyTorch and SQL .",
)
REGISTERED = "served-tagger"
READY_SECONDS = 180  # a wait for the server to come up on a loaded machine, not an assert


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers(output: Path, texts, variant: str = "fp32", **options) -> list[dict]:
    return [p.to_dict() for p in OnnxPredictor(output, variant, **options).predict(list(texts))]


@contextlib.contextmanager
def running_server(log: Path, *args: str | Path, env: dict | None = None) -> Iterator[str]:
    """`onnxport serve ARGS` in a child process on a free port; its base URL once /ping
    answers. Stopped (SIGTERM, as uvicorn expects) when the block ends."""
    port = _free_port()
    command = [sys.executable, "-m", "onnxport.cli", "serve", *map(str, args), "--port", str(port)]
    with log.open("w") as sink:
        process = subprocess.Popen(
            command, stdout=sink, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + READY_SECONDS
        while True:
            assert process.poll() is None, f"the server stopped:\n{log.read_text()[-3000:]}"
            with contextlib.suppress(requests.ConnectionError):
                if requests.get(f"{url}/ping", timeout=5).status_code == 200:
                    break
            assert time.monotonic() < deadline, f"no answer:\n{log.read_text()[-3000:]}"
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


JSON = "application/json"
CSV = "text/csv"


def _post(url: str, body, content_type: str | None = JSON) -> requests.Response:
    """POST `body` (bytes, CSV text or a JSON value) to /invocations; no Content-Type when
    `content_type` is None."""
    data = body if isinstance(body, bytes) else _body(body, content_type)
    headers = {"Content-Type": content_type} if content_type else {}
    return requests.post(f"{url}/invocations", data=data, headers=headers, timeout=60)


def _body(value, content_type: str | None) -> bytes:
    return (value if content_type == CSV else json.dumps(value)).encode()


def _csv(**columns) -> str:
    return pd.DataFrame(columns).to_csv(index=False)


# --- the text model ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_text_model(converted, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The tiny token classifier's fp32 saved as a text model: (model path, output dir)."""
    output = converted("distilbert-token").directory
    path = tmp_path_factory.mktemp("text-model") / "model"
    return save_text_model(output, "fp32", path), output


def test_text_model_answers_what_the_predictor_answers(tiny_text_model) -> None:
    import mlflow.pyfunc

    path, output = tiny_text_model
    model = mlflow.pyfunc.load_model(str(path))
    expected = _answers(output, TEXTS)
    assert model.predict(list(TEXTS)) == expected
    assert model.predict(pd.DataFrame({"text": TEXTS})) == expected
    assert sum(len(a["entities"]) for a in expected) > 0


@pytest.mark.parametrize(
    ("model_input", "reason"),
    [
        (pd.DataFrame({"text": ["Jane", "Doe", "Contoso"]}), "holds 3 texts, more than the 2"),
        (pd.DataFrame({"text": []}, dtype=str), "the request holds no texts"),
        (pd.DataFrame({"text": ["Jane " * 200]}), "has more than the 128 tokens"),
    ],
    ids=["over-max-batch", "empty", "too-long"],
)
def test_text_model_refuses_a_bad_request_in_one_line(tiny_text_model, model_input, reason) -> None:
    import mlflow.pyfunc
    from mlflow.exceptions import MlflowException

    model = mlflow.pyfunc.load_model(
        str(tiny_text_model[0]), model_config={"max_batch": 2, "on_long_text": "error"}
    )
    with pytest.raises(MlflowException) as raised:
        model.predict(model_input)
    assert raised.value.error_code == "INVALID_PARAMETER_VALUE"
    assert reason in raised.value.message and "\n" not in raised.value.message


def test_text_model_requires_the_pinned_serving_packages_and_no_torch(tiny_text_model) -> None:
    path, _ = tiny_text_model
    required = dict(
        line.split("==") for line in (path / "requirements.txt").read_text().split() if line
    )
    pins = dict(
        line.split("==")
        for line in (REPO / "constraints.txt").read_text(encoding="utf-8").splitlines()
        if "==" in line and not line.startswith("#")
    )
    assert set(required) == {"mlflow", *SERVING_REQUIREMENTS}
    assert {name: pins[name] for name in required} == required
    assert not {"torch", "transformers"} & set(required)


@pytest.mark.slow
def test_a_variants_text_model_holds_that_variant_only_and_opens_intact(
    demo_model, tmp_path: Path
) -> None:
    output = demo_model[1]
    packaged = package_variant(PublishedDirectory.open(output), "int8", tmp_path / "int8")
    names = {p.name for p in packaged.iterdir()}
    assert {"model_int8.onnx", "tokenizer.json", "config.json", MANIFEST_FILENAME} <= names
    assert "model_fp32.onnx" not in names
    assert verify_directory(packaged) == []
    assert [o.variant for o in read_manifest(packaged).outputs] == ["int8"]
    assert _answers(packaged, TEXTS, "int8") == _answers(output, TEXTS, "int8")


def test_a_sentence_transformers_text_model_answers_its_unit_vectors(tmp_path: Path) -> None:
    """The text model of a sentence-transformers checkpoint holds its module files (in their
    directories) and answers the vectors its modules compute: mean-pooled, normalized."""
    import mlflow.pyfunc
    import numpy as np
    import torch
    from transformers import BertModel

    from models import _bert_config, wordpiece_tokenizer, write_sentence_modules
    from onnxport.pipeline import convert
    from onnxport.request import ConversionRequest
    from onnxport.request.config import ConversionConfig

    checkpoint = tmp_path / "checkpoint"
    wordpiece_tokenizer(checkpoint)
    torch.manual_seed(0)
    BertModel(_bert_config()).eval().save_pretrained(checkpoint)
    write_sentence_modules(checkpoint, pooling="mean", normalize=True)
    config = ConversionConfig().with_overrides(onnx={"exporter": "torchscript"})
    convert(ConversionRequest(checkpoint, tmp_path / "onnx", config=config))
    model = mlflow.pyfunc.load_model(
        str(save_text_model(tmp_path / "onnx", "fp32", tmp_path / "m"))
    )
    answers = model.predict(list(TEXTS))
    assert answers == _answers(tmp_path / "onnx", TEXTS)
    norms = [float(np.linalg.norm(a["vector"])) for a in answers]
    assert norms == pytest.approx([1.0] * len(TEXTS), abs=1e-5)


def _set_task(directory: Path, task: str) -> None:
    data = json.loads((directory / MANIFEST_FILENAME).read_text(encoding="utf-8"))
    data["source"]["task"] = task
    (directory / MANIFEST_FILENAME).write_text(json.dumps(data), encoding="utf-8")


def _drop_tokenizer(directory: Path) -> None:
    data = json.loads((directory / MANIFEST_FILENAME).read_text(encoding="utf-8"))
    del data["files"]["tokenizer.json"]
    (directory / MANIFEST_FILENAME).write_text(json.dumps(data), encoding="utf-8")
    (directory / "tokenizer.json").unlink()


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda d: _set_task(d, "image-classification"), "holds a image-classification model"),
        (_drop_tokenizer, "holds no tokenizer.json"),
    ],
)
def test_what_cannot_answer_text_is_not_made_a_text_model(
    copy_output, tmp_path: Path, damage, reason
) -> None:
    directory = copy_output("distilbert-token")
    damage(directory)
    with pytest.raises(ServeError, match=f"cannot be served as text: it {reason}"):
        save_text_model(directory, "fp32", tmp_path / "model")


# --- logged and registered ------------------------------------------------------------------


@pytest.fixture(scope="module")
def logged_text(converted, tmp_path_factory: pytest.TempPathFactory):
    """The tiny model's fp32 text model logged to a real SQLite store and registered:
    (tracking uri, run id, output directory)."""
    import mlflow

    from onnxport.request.config import ExperimentConfig
    from onnxport.tracking.store import (
        ensure_experiment,
        prepare_store,
        resolve_artifact_location,
        resolve_tracking_uri,
    )

    output = converted("distilbert-token").directory
    root = root_with_store(tmp_path_factory, "serving-store")
    uri = resolve_tracking_uri(root, ExperimentConfig())
    experiment_id = ensure_experiment(
        prepare_store(uri), "serving", resolve_artifact_location(root, ExperimentConfig())
    )
    with using_tracking_uri(uri):
        with mlflow.start_run(experiment_id=experiment_id) as run:
            log_text_model(
                PublishedDirectory.open(output),
                "fp32",
                registered_model_name=REGISTERED,
                tags={"onnxport.conv_fp": "c0ffee"},
            )
        yield uri, run.info.run_id, output


FRESH_LOAD = """
import json, sys
import mlflow.pyfunc
model = mlflow.pyfunc.load_model(sys.argv[1])
answers = model.predict(json.loads(sys.argv[2]))
import onnxport
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers"))
print(json.dumps({"answers": answers, "heavy": heavy, "onnxport": onnxport.__file__}))
"""


@pytest.mark.slow
def test_the_logged_model_loads_in_a_fresh_interpreter_without_torch(logged_text) -> None:
    uri, run_id, output = logged_text
    # No PYTHONPATH: onnxport must come from the code logged with the model.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["MLFLOW_TRACKING_URI"] = uri
    done = subprocess.run(
        [sys.executable, "-c", FRESH_LOAD, f"runs:/{run_id}/text_fp32", json.dumps(TEXTS)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert loaded["heavy"] == []
    assert "/code/onnxport/" in loaded["onnxport"]
    assert not loaded["onnxport"].startswith(str(REPO))
    assert loaded["answers"] == _answers(output, TEXTS)


@pytest.mark.slow
def test_the_registered_version_is_tagged_and_serve_answers_with_it(
    logged_text, tmp_path: Path
) -> None:
    from mlflow.tracking import MlflowClient

    uri, run_id, output = logged_text
    version = MlflowClient(uri).get_model_version(REGISTERED, "1")
    assert version.run_id == run_id
    assert version.tags["onnxport.conv_fp"] == "c0ffee"
    model_uri = f"models:/{REGISTERED}/1"
    with running_server(
        tmp_path / "serve.log", "--model-uri", model_uri, "--tracking-uri", uri, "--threads", "1"
    ) as url:
        answer = _post(url, {"inputs": list(TEXTS)})
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"predictions": _answers(output, TEXTS)}


@pytest.fixture(scope="module")
def registered_model(logged_text):
    """The registered version as `mlflow models serve -m models:/NAME/1` loads it, and the
    output directory it was made from."""
    import mlflow
    import mlflow.pyfunc

    uri, _, output = logged_text
    with using_tracking_uri(uri):
        return mlflow.pyfunc.load_model(f"models:/{REGISTERED}/1"), output


def _invoke(model, body, content_type: str = JSON):
    """What MLflow's scoring server (`mlflow models serve`) does with one request to
    /invocations: its (status, JSON answer); a refusal is the `MlflowException` it answers
    with."""
    from mlflow.pyfunc import scoring_server

    answer = scoring_server.invocations(
        _body(body, content_type), content_type, model, model.metadata.get_input_schema()
    )
    return answer.status, json.loads(answer.response)


@pytest.mark.parametrize(
    ("body", "content_type", "texts"),
    [
        ({"inputs": [TEXTS[0], TEXTS[1]]}, JSON, TEXTS[:2]),
        (
            {
                "dataframe_records": [
                    {"id": "doc-17", "text": TEXTS[1]},
                    {"id": "doc-18", "text": TEXTS[2]},
                ]
            },
            JSON,
            TEXTS[1:3],
        ),
        (
            {"dataframe_records": [{"other": "Jane Doe", "text": "John Smith"}]},
            JSON,
            ["John Smith"],
        ),
        (
            {"dataframe_split": {"columns": ["id", "text"], "data": [["doc-17", TEXTS[1]]]}},
            JSON,
            TEXTS[1:2],
        ),
        ({"instances": [{"id": "doc-17", "text": TEXTS[1]}]}, JSON, TEXTS[1:2]),
        ({"inputs": {"id": ["doc-17"], "text": [TEXTS[1]]}}, JSON, TEXTS[1:2]),
        (_csv(id=["doc-17", "doc-18"], text=TEXTS[:2]), CSV, TEXTS[:2]),
    ],
    ids=["list", "records", "records-text-last", "split", "instances", "columns", "csv"],
)
def test_mlflow_serving_answers_a_table_for_its_text_column(
    registered_model, body, content_type: str, texts
) -> None:
    model, output = registered_model
    assert _invoke(model, body, content_type) == (
        200,
        {"predictions": _answers(output, texts)},
    )


@pytest.mark.parametrize(
    ("body", "content_type", "reason"),
    [
        (
            {"dataframe_records": [{"id": "doc-17", "body": "Contact John Smith"}]},
            JSON,
            "the table has no 'text' column (its columns: 'id', 'body')",
        ),
        (
            {"dataframe_split": {"columns": ["text", "text"], "data": [["John", "Jane"]]}},
            JSON,
            "the table has 2 'text' columns",
        ),
        (
            {"dataframe_split": {"data": [["doc-17", "John Smith"]]}},
            JSON,
            "the table has no 'text' column (its columns: 0, 1)",
        ),
        ("John Smith\nJane Doe\n", CSV, "no 'text' column (its columns: 'John Smith')"),
        ({"inputs": [["John Smith", "Jane Doe"]]}, JSON, "text 1 is a list, not a string"),
        ({"inputs": [1, 2]}, JSON, "text 1 is a number, not a string"),
        ({"inputs": [None]}, JSON, "text 1 is null, not a string"),
        ({"dataframe_records": [{"text": "John"}, {"text": None}]}, JSON, "text 2 is null"),
        ("id,text\ndoc-17,\n", CSV, "text 1 is null, not a string"),
    ],
    ids=[
        "no-text-column",
        "two-text-columns",
        "unnamed-columns",
        "csv-without-header",
        "a-list",
        "numbers",
        "null",
        "records-null",
        "csv-empty",
    ],
)
def test_mlflow_serving_refuses_what_is_no_text_with_a_400(
    registered_model, body, content_type: str, reason: str
) -> None:
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException) as raised:
        _invoke(registered_model[0], body, content_type)
    assert raised.value.get_http_status_code() == 400
    assert reason in raised.value.message


# --- onnxport serve on the trained tagger -----------------------------------------------------

MAX_BATCH = 4
MAX_BODY_KB = 8


@pytest.fixture(scope="module")
def demo_server(demo_model, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    """`onnxport serve` on the trained tagger's int8 model, long texts refused."""
    output = demo_model[1]
    log = tmp_path_factory.mktemp("demo-server") / "serve.log"
    limits = ("--max-batch", str(MAX_BATCH), "--max-body-kb", str(MAX_BODY_KB))
    options = ("--variant", "int8", *limits, "--on-long-text", "error", "--threads", "1")
    with running_server(log, output, *options) as url:
        yield url, output


@pytest.mark.slow
def test_served_entities_equal_the_predictors_in_every_request_format(demo_server) -> None:
    url, output = demo_server
    expected = {"predictions": _answers(output, TEXTS, "int8")}
    assert {e["entity_group"] for p in expected["predictions"] for e in p["entities"]} >= {
        "NAME",
        "EMAIL",
        "PHONE",
    }
    ids = [f"doc-{number}" for number in range(len(TEXTS))]
    for body, content_type in (
        ({"inputs": list(TEXTS)}, JSON),
        ({"dataframe_records": [{"text": t} for t in TEXTS]}, JSON),
        ({"dataframe_split": {"columns": ["text"], "data": [[t] for t in TEXTS]}}, JSON),
        # Records that carry an id: answered for their text, whatever the column order.
        ({"dataframe_records": [{"id": i, "text": t} for i, t in zip(ids, TEXTS)]}, JSON),
        ({"dataframe_split": {"columns": ["id", "text"], "data": list(zip(ids, TEXTS))}}, JSON),
        (_csv(id=ids, text=TEXTS), CSV),
    ):
        answer = _post(url, body, content_type)
        assert answer.status_code == 200, answer.text
        assert answer.json() == expected, body


@pytest.mark.slow
@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b'{"inputs": ["Jane Doe"', "Ensure that input is a valid JSON formatted string"),
        ({"inputs": ["Jane Doe", 3]}, "text 2 is a number, not a string"),
        ({"dataframe_records": [{"text": None}]}, "text 1 is null, not a string"),
        ({"inputs": []}, "the request holds no texts"),
        ({"inputs": [TEXTS[0]] * (MAX_BATCH + 1)}, f"more than the {MAX_BATCH} this model"),
        ({"inputs": ["Jane Doe " * 200]}, "has more than the"),
        ({"inputs": ["x" * MAX_BODY_KB * 1024]}, "over this server's limit"),
        (
            {"dataframe_records": [{"id": "doc-17", "body": "Contact John Smith"}]},
            "the table has no 'text' column (its columns: 'id', 'body')",
        ),
        ({"inputs": [["John Smith", "Jane Doe"]]}, "text 1 is a list, not a string"),
        # (body, Content-Type): a body sent without one, or as a type MLflow does not read.
        ((b"Contact John Smith", None), "the request has no Content-Type"),
        ((b"Contact John Smith", "text/plain"), "Content-Type text/plain is not one"),
    ],
    ids=[
        "not-json",
        "a-number",
        "null",
        "empty",
        "over-max-batch",
        "too-long",
        "too-big",
        "no-text-column",
        "a-list",
        "no-content-type",
        "plain-text",
    ],
)
def test_a_bad_request_gets_a_one_line_400_and_the_server_stays_up(
    demo_server, body, reason: str
) -> None:
    url, _ = demo_server
    answer = _post(url, *body) if isinstance(body, tuple) else _post(url, body)
    assert answer.status_code == 400, answer.text
    message = answer.json()["message"]
    assert reason in message
    assert "\n" not in message and len(message) <= 500
    after = _post(url, {"inputs": [TEXTS[1]]})
    assert after.status_code == 200
    assert [e["word"] for e in after.json()["predictions"][0]["entities"]][:1] == [
        "Priya Natarajan"
    ]


@pytest.mark.slow
def test_a_chunked_body_is_cut_off_at_the_limit(demo_server) -> None:
    url, _ = demo_server

    def chunks() -> Iterator[bytes]:  # a generator: sent chunked, with no Content-Length
        yield b'{"inputs": ["'
        for _ in range(MAX_BODY_KB + 1):
            yield b"x" * 1024
        yield b'"]}'

    answer = requests.post(
        f"{url}/invocations",
        data=chunks(),
        headers={"Content-Type": "application/json"},
        timeout=60,
    )
    assert answer.status_code == 400
    assert answer.json()["message"].startswith(
        f"the request body is more than this server's limit of {MAX_BODY_KB * 1024} bytes"
    )
    assert _post(url, {"inputs": [TEXTS[0]]}).status_code == 200


@pytest.mark.slow
def test_an_error_mlflow_answers_in_plain_text_is_one_line_json(demo_server) -> None:
    url, _ = demo_server
    answer = _post(url, {"inputs": [TEXTS[0]]}, "application/json; charset=latin-1")
    assert answer.status_code == 415
    assert answer.headers["Content-Type"] == JSON
    assert answer.json() == {
        "error_code": "BAD_REQUEST",
        "message": "The scoring server only supports UTF-8",
    }


@pytest.mark.slow
def test_the_standard_endpoints_answer(demo_server) -> None:
    import mlflow

    url, _ = demo_server
    assert requests.get(f"{url}/ping", timeout=10).status_code == 200
    assert requests.get(f"{url}/health", timeout=10).status_code == 200
    assert requests.get(f"{url}/version", timeout=10).text == mlflow.__version__


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ({"inputs": ["Jane", "Doe"]}, None),
        ({"inputs": "Jane"}, None),
        ({"instances": [{"id": "doc-17", "text": "Jane"}]}, None),
        ({"inputs": {"id": ["doc-17"], "text": ["Jane"]}}, None),
        ({"inputs": ["Jane", True]}, "text 2 is true or false, not a string"),
        ({"inputs": [["Jane"]]}, "text 1 is a list, not a string"),
        ({"inputs": {"text": ["Jane", 1.5]}}, "text 2 is a number, not a string"),
        ({"instances": [{"text": "Jane"}, {"text": 3}]}, "text 2 is a number, not a string"),
        ({"instances": [{"text": {"a": 1}}]}, "text 1 is an object, not a string"),
        ({"instances": [{"id": "doc-17"}]}, "the table has no 'text' column (its columns: 'id')"),
        ({"inputs": []}, NO_TEXTS),
        ({"inputs": ["Jane", "Doe", "Contoso"]}, "holds 3 texts, more than the 2"),
        ({"dataframe_records": [{"text": 3}]}, None),  # a table: the model sees it as sent
        ({"texts": [3]}, None),  # no format MLflow knows: MLflow says which it takes
        ([3], None),
    ],
)
def test_the_texts_of_an_inputs_or_instances_request_are_checked_as_sent(payload, reason) -> None:
    from onnxport.serving.server import texts_refusal

    refusal = texts_refusal(json.dumps(payload).encode(), max_batch=2)
    assert (refusal is None) if reason is None else (reason in str(refusal))


# --- the command's bad input ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "an output directory or --model-uri, one of the two"),
        (("{out}", "--model-uri", "models:/x/1"), "one of the two"),
        (("--model-uri", "models:/x/1", "--variant", "int8"), "--variant picks a model of"),
        (("{out}", "--variant", "int4"), "has no 'int4' variant"),
        (("{out}", "--max-batch", "0"), "--max-batch"),
        (("{out}", "--busy-port"), "cannot listen on 127.0.0.1:"),
        (
            ("--model-uri", "models:/nothing/1", "--tracking-uri", "{store}"),
            "cannot fetch the model models:/nothing/1",
        ),
    ],
)
def test_cli_bad_input_exits_with_2_in_a_few_lines(
    cli, converted, tmp_path: Path, args, message: str
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1] if "--busy-port" in args else _free_port())
        paths = {
            "{out}": str(converted("distilbert-token").directory),
            "{store}": f"sqlite:///{tmp_path / 'mlflow.db'}",
        }
        run = cli("serve", *(paths.get(a, a) for a in args if a != "--busy-port"), "--port", port)
    assert run.code == 2
    assert message in run.stderr + run.stdout
    assert "Traceback" not in run.stderr
    assert len((run.stderr + run.stdout).strip().splitlines()) <= 4


# --- a text-generation model ------------------------------------------------------------------

PROMPTS = ("Summarize: Jane Doe , senior data engineer .", "Hi")
NEW_TOKENS = 6


def _generated(output: Path, prompts, **settings) -> list[dict]:
    return [r.to_dict() for r in OnnxPredictor(output).generate(list(prompts), **settings)]


def test_a_generative_text_model_writes_what_the_predictor_writes(chat_model, tmp_path) -> None:
    import mlflow.pyfunc

    output = chat_model[1]
    model = mlflow.pyfunc.load_model(str(save_text_model(output, "fp32", tmp_path / "model")))
    assert {p.name for p in model.metadata.get_params_schema().params} >= {
        "max_new_tokens",
        "do_sample",
        "temperature",
        "top_p",
        "stop",
    }
    answer = model.predict(list(PROMPTS), params={"max_new_tokens": NEW_TOKENS})
    assert answer == _generated(output, PROMPTS, max_new_tokens=NEW_TOKENS)
    with pytest.raises(Exception, match="max_new_tokens must be at least 1"):
        model.predict(["Hi"], params={"max_new_tokens": 0})


@pytest.fixture(scope="module")
def chat_server(chat_model, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    output = chat_model[1]
    log = tmp_path_factory.mktemp("chat-server") / "serve.log"
    with running_server(log, output, "--threads", "1") as url:
        yield url, output


def test_served_generation_equals_the_predictors(chat_server) -> None:
    url, output = chat_server
    for params in ({"max_new_tokens": NEW_TOKENS}, {"max_new_tokens": 4, "stop": ["a"]}):
        answer = _post(url, {"inputs": list(PROMPTS), "params": params})
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"predictions": _generated(output, PROMPTS, **params)}


@pytest.mark.parametrize(
    ("params", "prompts", "reason"),
    [
        ({"max_new_tokens": 0}, PROMPTS, "max_new_tokens must be at least 1, not 0"),
        ({"max_new_tokens": "many"}, PROMPTS, "max_new_tokens"),
        ({"max_new_tokens": 10**6}, PROMPTS, "is more than the 128 tokens"),
        ({"temperature": 0, "do_sample": True}, PROMPTS, "temperature must be above 0"),
        ({"top_p": 2}, PROMPTS, "top_p must be above 0 and at most 1"),
        ({"max_tokens": 5}, PROMPTS, "unknown params ['max_tokens']: this model takes"),
        ({}, ["Hi", ""], "prompt 2 is empty"),
        ({"max_new_tokens": 100}, ["Hi " * 60], "that is more than the 128 tokens"),
    ],
    ids=["zero", "not-a-number", "absurd", "cold", "top-p", "unknown", "empty", "too-long"],
)
def test_a_bad_generation_request_gets_a_one_line_400(chat_server, params, prompts, reason) -> None:
    url, _ = chat_server
    answer = _post(url, {"inputs": list(prompts), "params": params})
    assert answer.status_code == 400, answer.text
    message = answer.json()["message"]
    assert reason in message
    assert "\n" not in message and len(message) <= 500
    assert _post(url, {"inputs": ["Hi"], "params": {"max_new_tokens": 2}}).status_code == 200
