"""The text-level MLflow model: texts in, `OnnxPredictor`'s answers out.

MLflow's pyfunc loader runs this in the serving process, which may not have onnxport
installed: the logged model carries the onnxport package as code (`code_paths`) and needs only
ONNX Runtime, `tokenizers`, numpy, pydantic and MLflow. Nothing here imports torch.

A bad request is an `MlflowException` with INVALID_PARAMETER_VALUE, which MLflow's scoring
server answers with a 400; any other exception would reach the client as MLflow's generic
"unexpected error" with the reason buried in a stack trace.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from onnxport.artifact.manifest import read_manifest
from onnxport.errors import PredictError, one_line
from onnxport.predict import DEFAULT_MAX_NEW_TOKENS, LongText, OnnxPredictor
from onnxport.serving import DEFAULT_MAX_BATCH
from onnxport.tasks import Task

PUBLISHED_ARTIFACT = "published"
"""The artifact that holds the published directory of one variant."""
TEXT_COLUMN = "text"
NO_TEXTS = "the request holds no texts: send at least one"
GENERATION_PARAMS: dict[str, tuple[type, Any]] = {
    "max_new_tokens": (int, DEFAULT_MAX_NEW_TOKENS),
    "do_sample": (bool, False),
    "temperature": (float, 1.0),
    "top_p": (float, 1.0),
    "stop": (list, []),
    "raw": (bool, False),
    "seed": (int, None),
}
"""The params a text-generation model takes per request (`OnnxPredictor.generate`'s
arguments): name -> (type, default)."""


class ServedConfig(BaseModel):
    """The model's settings, logged as its MLflow `model_config` and overridable when it is
    loaded (`mlflow.pyfunc.load_model(..., model_config=...)`, or `SERVING_MODEL_CONFIG` for
    `mlflow models serve`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_batch: int = Field(DEFAULT_MAX_BATCH, ge=1)
    """The most texts one request may hold."""
    on_long_text: LongText = LongText.TRUNCATE
    threads: int = Field(1, ge=0)
    """ONNX Runtime intra-op threads per request; 0: one per core. MLflow's server answers
    requests in parallel threads, so one each keeps every core busy without contention."""

    def logged(self) -> dict[str, Any]:
        """As MLflow stores it (plain YAML values): every key, so every key is overridable."""
        return self.model_dump(mode="json")


def served_config(values: dict[str, Any] | None) -> ServedConfig:
    try:
        return ServedConfig.model_validate(values or {})
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc'])}: {error['msg']}" for error in e.errors()
        )
        raise PredictError(f"bad model_config for the text model: {problems}") from e


def input_texts(model_input: Any, max_batch: int) -> list[str]:
    """The texts of a request, in any form MLflow hands it to the model or a client sends it:
    a text; a list or array of texts; a table (a DataFrame, a list of records, or columns by
    name) whose `text` column holds them, beside any others. A `PredictError` names what is
    wrong: no texts, more than `max_batch`, a table without one `text` column (with the
    columns it has), a value that is not a string."""
    texts = _values(model_input)
    if not texts:
        raise PredictError(NO_TEXTS)
    if len(texts) > max_batch:
        raise PredictError(
            f"the request holds {len(texts)} texts, more than the {max_batch} this model "
            "takes at once",
            hint="split it, or raise max_batch (onnxport serve --max-batch)",
        )
    for index, text in enumerate(texts, 1):
        if not isinstance(text, str):
            raise PredictError(f"text {index} is {_kind(text)}, not a string")
    return texts


def _values(model_input: Any) -> list[Any]:
    if isinstance(model_input, pd.DataFrame):
        return _text_column(model_input)
    if isinstance(model_input, dict):  # columns by name: {"text": [...], "id": [...]}
        try:
            table = pd.DataFrame({k: _listed(v) for k, v in model_input.items()})
        except ValueError as e:  # columns of different lengths
            raise PredictError(f"the columns cannot make one table: {one_line(e)}") from e
        return _text_column(table)
    if isinstance(model_input, str):
        return [model_input]
    if isinstance(model_input, np.ndarray) and model_input.ndim == 0:
        return [model_input.item()]
    if isinstance(model_input, (list, tuple, np.ndarray, pd.Series)):
        values = [_plain(v) for v in model_input]
        if values and all(isinstance(v, dict) for v in values):  # records
            return _text_column(
                pd.DataFrame([{k: _plain(c) for k, c in r.items()} for r in values])
            )
        return values
    raise PredictError(
        f"the input is a {type(model_input).__name__}: send a list of texts "
        f"or a table with a '{TEXT_COLUMN}' column"
    )


def _text_column(table: pd.DataFrame) -> list[Any]:
    """The `text` column of a table; a list of texts is a table of one unnamed column (as
    MLflow makes it); any other table is refused, naming its columns: another column (a
    record's id, say) would get a confident wrong answer."""
    columns = list(table.columns)
    if not columns:  # no records
        return []
    named = columns.count(TEXT_COLUMN)
    if named == 1:
        return [_plain(v) for v in table[TEXT_COLUMN].tolist()]
    if columns == [0]:
        return [_plain(v) for v in table[0].tolist()]
    listed = ", ".join(repr(c) for c in columns)
    problem = f"{named} '{TEXT_COLUMN}' columns" if named else f"no '{TEXT_COLUMN}' column"
    raise PredictError(
        f"the table has {problem} (its columns: {listed})",
        hint=f"send the texts in one column named '{TEXT_COLUMN}', or as a list of texts",
    )


def _listed(value: Any) -> list[Any]:
    if isinstance(value, np.ndarray):
        value = value.tolist()
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _plain(value: Any) -> Any:
    """A numpy value (MLflow's parser makes JSON arrays numpy arrays) as the Python value."""
    return value.tolist() if isinstance(value, (np.ndarray, np.generic)) else value


def _kind(value: Any) -> str:
    """What a value that is not a text is, in JSON's words."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return "null"  # a missing value, or an empty CSV cell
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, (list, tuple)):
        return "a list"
    return f"a {type(value).__name__}"


class TextModel(mlflow.pyfunc.PythonModel):
    """An onnxport conversion as an MLflow pyfunc: texts in (`input_texts`: a list of texts,
    or a table with a `text` column); per text, the `to_dict()` of its prediction out
    (entities for token classification, a label and score for sequence classification, a
    vector for feature extraction, the generated text for text generation, whose settings
    are the request's params: `GENERATION_PARAMS`)."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        config = served_config(context.model_config)
        directory = Path(context.artifacts[PUBLISHED_ARTIFACT])
        (output,) = read_manifest(directory).published_outputs()
        self._max_batch = config.max_batch
        self._predictor = OnnxPredictor(
            directory,
            output.variant,
            threads=config.threads or None,
            on_long_text=config.on_long_text,
        )

    def predict(
        self,
        context: mlflow.pyfunc.PythonModelContext,
        # What MLflow's parser made of the request, unchanged by a signature (it declares no
        # inputs): a DataFrame, a numpy array, a list. This type hint tells MLflow to infer
        # nothing from it.
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        try:
            texts = input_texts(model_input, self._max_batch)
            if self._predictor.task is Task.TEXT_GENERATION:
                return self._generate(texts, params or {})
            return [p.to_dict() for p in self._predictor.predict(texts)]
        except PredictError as e:
            raise MlflowException.invalid_parameter_value(one_line(e, 500)) from e

    def _generate(self, prompts: list[str], params: dict[str, Any]) -> list[dict[str, Any]]:
        unknown = sorted(set(params) - set(GENERATION_PARAMS))
        if unknown:
            raise PredictError(
                f"unknown params {unknown}: this model takes {', '.join(GENERATION_PARAMS)}"
            )
        value = {name: _plain(params.get(name, d)) for name, (_, d) in GENERATION_PARAMS.items()}
        results = self._predictor.generate(
            prompts,
            max_new_tokens=value["max_new_tokens"],
            do_sample=value["do_sample"],
            temperature=value["temperature"],
            top_p=value["top_p"],
            stop=value["stop"],
            raw=value["raw"],
            seed=value["seed"],
        )
        return [r.to_dict() for r in results]
