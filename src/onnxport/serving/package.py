"""Package one published variant as the text-level MLflow model, saved to a directory (what
`onnxport serve OUT_DIR` serves) or logged to the active run (what every tracked conversion
logs beside the ONNX-flavor model).

The model holds, as artifacts, a published directory restricted to that variant (its ONNX
file(s), the tokenizer, config.json with the label map, and a manifest that lists only them,
so `OnnxPredictor` opens it with every checksum checked), the onnxport package as code, a
signature and an input example, and pip requirements pinned to what that code imports:
never torch or transformers.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnxport
from onnxport.artifact.manifest import MANIFEST_FILENAME
from onnxport.artifact.reader import PublishedDirectory
from onnxport.errors import ServeError, one_line
from onnxport.predict.predictor import GENERATIVE_TASKS, SUPPORTED_TASKS
from onnxport.samples import RESUME_LINES
from onnxport.serving.model import GENERATION_PARAMS, PUBLISHED_ARTIFACT, ServedConfig
from onnxport.tasks import Task

if TYPE_CHECKING:
    from mlflow.models.model import ModelInfo
    from mlflow.models.signature import ModelSignature

logger = logging.getLogger(__name__)

TOKENIZER_FILE = "tokenizer.json"
_SERVED_TASKS = (*SUPPORTED_TASKS, *GENERATIVE_TASKS)
_SUPPORTED_NAMES = ", ".join(t.value for t in _SERVED_TASKS)
# What a generating model's saved example asks: a few tokens, so that MLflow's check of the
# example (it runs the model on it) stays quick.
_PROMPT_EXAMPLE = (["Summarize this résumé line: " + RESUME_LINES[0]], {"max_new_tokens": 8})

SERVING_REQUIREMENTS = ("onnxruntime", "tokenizers", "numpy", "pandas", "pydantic", "Jinja2")
"""What the served model's code imports besides MLflow (which MLflow pins by itself)."""
# models-from-code: the file MLflow runs to get the model object, so nothing is pickled.
_ENTRY_SOURCE = (
    "from mlflow.models import set_model\n"
    "from onnxport.serving.model import TextModel\n"
    "set_model(TextModel())\n"
)


def text_model_name(variant: str) -> str:
    """The name of a variant's text model in a run: `text_fp32`, `text_int8`, ..."""
    return f"text_{variant}".replace("-", "_")


def requirements() -> list[str]:
    """The served model's pip requirements: the installed (tested) version of each."""
    return [f"{name}=={version(name)}" for name in SERVING_REQUIREMENTS]


def unservable_reason(published: PublishedDirectory) -> str | None:
    """Why the published directory cannot make a text model (a task that `OnnxPredictor`
    does not answer, no fast tokenizer); None when it can."""
    task = published.manifest.source.task
    if task not in {t.value for t in _SERVED_TASKS}:
        return f"it holds a {task} model, and text models answer {_SUPPORTED_NAMES}"
    if TOKENIZER_FILE not in published.manifest.files:
        return f"it holds no {TOKENIZER_FILE} (a checkpoint saved with its fast tokenizer has one)"
    return None


def package_variant(published: PublishedDirectory, variant: str, target: Path) -> Path:
    """Copy `variant`'s model file(s) and every other file but the other variants' models
    into `target`, with a manifest restricted to them."""
    manifest = published.manifest
    output = published.output(variant)
    others = {
        name
        for o in manifest.outputs
        if o.variant != variant
        for name in (o.file, o.data_file)
        if name
    }
    files = {name: digest for name, digest in manifest.files.items() if name not in others}
    target.mkdir(parents=True)
    for name in files:
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(published.path / name, target / name)
    restricted = manifest.model_copy(update={"outputs": [output], "files": files})
    (target / MANIFEST_FILENAME).write_text(restricted.to_json(), encoding="utf-8")
    return target


def _entities_type():
    from mlflow.types.schema import Array, Object, Property

    return Array(
        Object(
            [
                Property("entity_group", "string"),
                Property("score", "double"),
                Property("word", "string"),
                Property("start", "long"),
                Property("end", "long"),
            ]
        )
    )


def _generation_params():
    """`GENERATION_PARAMS` as MLflow params: a request's `params` are checked against their
    types (a 400 when one does not fit), and the defaults fill those it leaves out."""
    from mlflow.types.schema import ParamSchema, ParamSpec

    kinds = {bool: "boolean", int: "long", float: "double"}
    specs = []
    for name, (kind, default) in GENERATION_PARAMS.items():
        if kind is list:
            specs.append(ParamSpec(name, "string", default, shape=(-1,)))
        else:
            specs.append(ParamSpec(name, kinds[kind], default))
    return ParamSchema(specs)


def signature(task: Task) -> ModelSignature:
    """Per text, its prediction's fields out; no inputs. MLflow enforces declared inputs
    before the model sees them, and a string column would be the first column of any table
    (a record's id, say), with `3` made "3" and `null` "None": the model checks its input
    itself (`serving.model.input_texts`), the same under every server. A text-generation
    model takes the generation's settings as params (`GENERATION_PARAMS`)."""
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import Array, ColSpec, Schema

    if task in GENERATIVE_TASKS:
        written = [
            ColSpec("string", "prompt"),
            ColSpec("string", "text"),
            ColSpec(Array("long"), "token_ids"),
            ColSpec("string", "finish_reason"),
        ]
        return ModelSignature(inputs=None, outputs=Schema(written), params=_generation_params())
    answer = {
        Task.TOKEN_CLASSIFICATION: [ColSpec(_entities_type(), "entities")],
        Task.SEQUENCE_CLASSIFICATION: [ColSpec("string", "label"), ColSpec("double", "score")],
        Task.FEATURE_EXTRACTION: [ColSpec(Array("float"), "vector")],
    }[task]
    common = [ColSpec("string", "text"), ColSpec("boolean", "truncated")]
    return ModelSignature(inputs=None, outputs=Schema(common + answer))


@contextmanager
def _model_arguments(
    published: PublishedDirectory, variant: str, config: ServedConfig
) -> Iterator[dict[str, Any]]:
    """What `mlflow.pyfunc.save_model` and `log_model` take, for one variant; the files
    live until the block ends (MLflow copies them into the model)."""
    reason = unservable_reason(published)
    if reason is not None:
        raise ServeError(f"{published.path} cannot be served as text: {reason}")
    task = Task(published.manifest.source.task)
    # MLflow draws a progress bar for every copy into a model: noise in a conversion's log.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    with tempfile.TemporaryDirectory(prefix="onnxport-text-model-") as scratch:
        root = Path(scratch)
        package_variant(published, variant, root / PUBLISHED_ARTIFACT)
        code = root / "code" / "onnxport"
        shutil.copytree(
            Path(onnxport.__file__).parent, code, ignore=shutil.ignore_patterns("__pycache__")
        )
        entry = root / "text_model.py"
        entry.write_text(_ENTRY_SOURCE, encoding="utf-8")
        yield {
            "python_model": str(entry),
            "artifacts": {PUBLISHED_ARTIFACT: str(root / PUBLISHED_ARTIFACT)},
            "code_paths": [str(code)],
            "signature": signature(task),
            "input_example": _PROMPT_EXAMPLE
            if task in GENERATIVE_TASKS
            else [RESUME_LINES[0], RESUME_LINES[9]],
            "pip_requirements": requirements(),
            "model_config": config.logged(),
        }


def save_text_model(
    directory: Path, variant: str, path: Path, config: ServedConfig | None = None
) -> Path:
    """Save `variant` of the published `directory` as a text model at `path` (a new
    directory)."""
    import mlflow.pyfunc

    published = PublishedDirectory.open(directory)
    with _model_arguments(published, variant, config or ServedConfig()) as arguments:
        mlflow.pyfunc.save_model(str(path), **arguments)
    logger.info("saved the %s text model of %s to %s", variant, directory, path)
    return path


def fetch_text_model(model_uri: str, target: Path) -> Path:
    """Download a logged or registered text model (`models:/NAME/VERSION`,
    `runs:/RUN_ID/text_fp32`) into `target`; a `ServeError` when it cannot be fetched or is
    not an onnxport text model."""
    import mlflow.artifacts
    from mlflow.models import Model

    try:
        local = Path(mlflow.artifacts.download_artifacts(model_uri, dst_path=str(target)))
        flavor = Model.load(str(local)).flavors.get("python_function", {})
    except Exception as e:  # MLflow raises many types for a missing model or store
        raise ServeError(
            f"cannot fetch the model {model_uri}: {one_line(e, 200)}",
            hint="check its name and version, and --tracking-uri (or MLFLOW_TRACKING_URI)",
        ) from e
    if PUBLISHED_ARTIFACT not in (flavor.get("artifacts") or {}):
        raise ServeError(
            f"{model_uri} is not an onnxport text model",
            hint="serve the text_<variant> model of a conversion run, or its registered version",
        )
    return local


def log_text_model(
    published: PublishedDirectory,
    variant: str,
    *,
    registered_model_name: str | None = None,
    tags: dict[str, str] | None = None,
) -> ModelInfo:
    """Log `variant` of a published directory as a text model to the active run, named
    `text_model_name(variant)`; registered under `registered_model_name` when given, the new
    version tagged with `tags` (the logged model is tagged with them too)."""
    import mlflow.pyfunc
    from mlflow.tracking import MlflowClient

    with _model_arguments(published, variant, ServedConfig()) as arguments:
        info = mlflow.pyfunc.log_model(
            name=text_model_name(variant),
            registered_model_name=registered_model_name,
            tags=tags,
            **arguments,
        )
    if registered_model_name and info.registered_model_version is not None:
        client = MlflowClient()
        for key, value in (tags or {}).items():
            client.set_model_version_tag(
                registered_model_name, str(info.registered_model_version), key, value
            )
    return info
