"""The text-level MLflow model: texts in, `OnnxPredictor`'s answers out.

MLflow's pyfunc loader runs this in the serving process, which may not have onnxport
installed: the logged model carries the onnxport package as code (`code_paths`) and needs only
ONNX Runtime, `tokenizers`, numpy, pydantic and MLflow. Nothing here imports torch.

A bad request is an `MlflowException` with INVALID_PARAMETER_VALUE, which MLflow's scoring
server answers with a 400; any other exception would reach the client as MLflow's generic
"unexpected error" with the reason buried in a stack trace.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd
from mlflow.exceptions import MlflowException
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from onnxport.artifact.manifest import read_manifest
from onnxport.errors import PredictError, one_line
from onnxport.predict import LongText, OnnxPredictor
from onnxport.serving import DEFAULT_MAX_BATCH

PUBLISHED_ARTIFACT = "published"
"""The artifact that holds the published directory of one variant."""
TEXT_COLUMN = "text"
NO_TEXTS = "the request holds no texts: send at least one"


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


def input_texts(model_input: Any, max_batch: int) -> list[Any]:
    """The texts of a request: a DataFrame's `text` column (or its first), or a list of texts
    (or one).

    Their type is checked by `OnnxPredictor.predict`; their number here."""
    if isinstance(model_input, pd.DataFrame) and TEXT_COLUMN in model_input.columns:
        texts = model_input[TEXT_COLUMN].tolist()
    elif isinstance(model_input, pd.DataFrame) and len(model_input.columns) > 0:
        # MLflow makes a list of texts a table of one unnamed column, and keeps only the
        # first column of a table (the signature declares one).
        texts = model_input.iloc[:, 0].tolist()
    elif isinstance(model_input, str):
        texts = [model_input]
    elif isinstance(model_input, (list, tuple)):
        texts = list(model_input)
    elif hasattr(model_input, "tolist"):  # a numpy array, a pandas Series
        texts = model_input.tolist()
    else:
        raise PredictError(
            f"the input is a {type(model_input).__name__}: send a list of texts "
            f"or a table with a '{TEXT_COLUMN}' column"
        )
    if not texts:
        raise PredictError(NO_TEXTS)
    if len(texts) > max_batch:
        raise PredictError(
            f"the request holds {len(texts)} texts, more than the {max_batch} this model "
            "takes at once",
            hint="split it, or raise max_batch (onnxport serve --max-batch)",
        )
    return texts


class TextModel(mlflow.pyfunc.PythonModel):
    """An onnxport conversion as an MLflow pyfunc: a list of texts (or a DataFrame with a
    `text` column) in; per text, the `to_dict()` of its prediction out (entities for token
    classification, a label and score for sequence classification, a vector for feature
    extraction)."""

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
        # A DataFrame whatever was sent (MLflow enforces the signature first); this type
        # hint also tells MLflow to infer nothing from it.
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        try:
            texts = input_texts(model_input, self._max_batch)
            return [p.to_dict() for p in self._predictor.predict(texts)]
        except PredictError as e:
            raise MlflowException.invalid_parameter_value(one_line(e, 500)) from e
