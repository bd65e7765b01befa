"""What a conversion logs to its MLflow run: parameters, metrics, the reports and the ONNX
models (with their signature and an input example), and the registration of the fp32 model."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onnxport.artifact.manifest import MANIFEST_FILENAME, REPORT_FILENAME, Manifest
from onnxport.artifact.records.validation import ValidationRecord
from onnxport.errors import InternalError
from onnxport.names import Variant
from onnxport.request.lineage import lineage_tags
from onnxport.tasks import PRESENT_PREFIX
from onnxport.tracking.store import quiet_mlflow, with_retry

if TYPE_CHECKING:
    import numpy as np
    import onnx
    from mlflow.models.signature import ModelSignature

logger = logging.getLogger(__name__)


def _metrics(manifest: Manifest) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for stage, seconds in manifest.timings.items():
        metrics[f"seconds.{stage}"] = seconds
    if manifest.peak_rss_mb is not None:
        metrics["peak_rss_mb"] = manifest.peak_rss_mb
    for out in manifest.outputs:
        prefix = out.variant
        if out.search is not None:
            for i, candidate in enumerate(out.search.candidates):
                name = f"{prefix}.search.{i}"
                if candidate.agreement is not None:
                    metrics[f"{name}.agreement"] = candidate.agreement
                metrics[f"{name}.passed"] = float(candidate.passed)
                metrics[f"{name}.chosen"] = float(candidate.chosen)
                for shape, ms in candidate.latency_ms.items():
                    metrics[f"{name}.p50_ms.{shape}"] = ms
        if out.total_size_bytes is not None:
            metrics[f"{prefix}.size_bytes"] = float(out.total_size_bytes)
        if out.validation is not None:
            metrics[f"{prefix}.task_agreement"] = out.validation.task_agreement.value
            metrics.update(_generation_metrics(prefix, out.validation))
            for name, c in out.validation.outputs.items():
                if name.startswith(PRESENT_PREFIX):  # a decoder's cache: its worst, below
                    continue
                metrics[f"{prefix}.{name}.max_abs_diff"] = c.max_abs_diff
                metrics[f"{prefix}.{name}.max_rel_diff"] = c.max_rel_diff
                for b in c.budget:  # against float64, per validation input
                    shape = "x".join(map(str, b.shape))
                    metrics[f"{prefix}.{name}.error_ratio.{shape}"] = b.ratio
                    metrics[f"{prefix}.{name}.onnx_error_max.{shape}"] = b.onnx_max
                    metrics[f"{prefix}.{name}.pytorch_error_max.{shape}"] = b.pytorch_max
    return {k: v for k, v in metrics.items() if v == v and abs(v) != float("inf")}


def _generation_metrics(prefix: str, validation: ValidationRecord) -> dict[str, float]:
    """A decoder's figures: its cache's worst error ratio (one metric for every layer's
    keys and values), the generation proof, the next-token gate on real text."""
    metrics: dict[str, float] = {}
    ratios = [
        c.error_ratio
        for name, c in validation.outputs.items()
        if name.startswith(PRESENT_PREFIX) and c.error_ratio is not None
    ]
    if ratios:
        metrics[f"{prefix}.present.error_ratio_max"] = max(ratios)
    if validation.generation is not None:
        proof = validation.generation
        metrics[f"{prefix}.greedy.identical_prompts"] = float(proof.identical)
        metrics[f"{prefix}.greedy.prompts"] = float(proof.prompts)
    if validation.next_token is not None:
        metrics[f"{prefix}.next_token.agreement"] = validation.next_token.agreement
        metrics[f"{prefix}.next_token.perplexity_increase"] = validation.next_token.increase
    return metrics


def _params(manifest: Manifest) -> dict[str, Any]:
    onnx_settings = manifest.config.get("onnx", {})
    return {
        "opset": manifest.export.opset,
        "exporter": manifest.export.exporter,
        "quantization": onnx_settings.get("quantization"),
        "optimize": onnx_settings.get("optimize"),
        "task": manifest.source.task,
        "architecture": manifest.source.architecture,
        "conv_fp": manifest.conv_fp,
        **{
            f"{out.variant}.chosen": out.search.chosen
            for out in manifest.outputs
            if out.search is not None
        },
    }


def model_signature(model: onnx.ModelProto) -> ModelSignature:
    """The MLflow signature of an ONNX model, from its declared inputs and outputs: every
    named or unknown dimension is -1 (any size), fixed dimensions stay fixed, dtypes as
    declared. Inferred from one example instead, every dynamic axis but the first would be
    frozen at the example's size, and MLflow would refuse every other sequence length."""
    import numpy as np
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec
    from onnx.helper import tensor_dtype_to_np_dtype

    initializers = {i.name for i in model.graph.initializer}

    def spec(value) -> TensorSpec:
        tensor = value.type.tensor_type
        shape = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim)
        return TensorSpec(np.dtype(tensor_dtype_to_np_dtype(tensor.elem_type)), shape, value.name)

    return ModelSignature(
        inputs=Schema([spec(v) for v in model.graph.input if v.name not in initializers]),
        outputs=Schema([spec(v) for v in model.graph.output]),
    )


def input_example(directory: Path, model_path: Path) -> dict[str, np.ndarray]:
    """One real input for the logged model: a résumé line through the published tokenizer
    when the model reads token ids, else inputs generated from its declared types."""
    import numpy as np
    from tokenizers import Tokenizer

    from onnxport.samples import RESUME_LINES
    from onnxport.testing import generate_inputs
    from onnxport.verify.runtime import create_session

    session = create_session(model_path)
    fields = {"input_ids": "ids", "attention_mask": "attention_mask", "token_type_ids": "type_ids"}
    tokenizer_file = directory / "tokenizer.json"
    declared = {i.name: i.type for i in session.get_inputs()}
    if not tokenizer_file.is_file() or not all(n in fields for n in declared):
        return generate_inputs(session)
    encoding = Tokenizer.from_file(str(tokenizer_file)).encode(RESUME_LINES[0])
    return {
        name: np.asarray(
            [getattr(encoding, fields[name])],
            dtype=np.int32 if kind == "tensor(int32)" else np.int64,
        )
        for name, kind in declared.items()
    }


def version_tags(manifest: Manifest, variant: str) -> dict[str, str]:
    """The tags of a registered version of `variant`: the variant, the lineage (the
    training run among it) and the conversion's `conv_fp`."""
    tags = {"onnxport.variant": variant, **lineage_tags(manifest.lineage)}
    if manifest.conv_fp:
        tags["onnxport.conv_fp"] = manifest.conv_fp
    return tags


def onnx_model_name(variant: str) -> str:
    """The name of a variant's ONNX model in a run: `onnx_fp32`, `onnx_int8`, ..."""
    return f"onnx_{variant}".replace("-", "_")


def log_figures(client, run_id: str, manifest: Manifest, directory: Path) -> None:
    """Log a conversion's params, metrics, manifest and report to the run `run_id`."""
    from mlflow.entities import Metric, Param

    now = int(time.time() * 1000)
    params = [Param(k, str(v)) for k, v in _params(manifest).items() if v is not None]
    metrics = [Metric(k, v, now, 0) for k, v in _metrics(manifest).items()]
    with_retry(lambda: client.log_batch(run_id, metrics=metrics, params=params))
    for name in (MANIFEST_FILENAME, REPORT_FILENAME):
        if (directory / name).is_file():
            client.log_artifact(run_id, str(directory / name))


def log_conversion(
    manifest: Manifest, directory: Path, *, registered_model_name: str | None = None
) -> None:
    """Log a conversion to the active MLflow run: params, metrics, artifacts, and per
    published variant the ONNX model (`onnx_<variant>`, token ids in, logits out) and, when
    the task answers text, the text model (`text_<variant>`, what `onnxport serve` and
    `mlflow models serve` answer texts with).

    `registered_model_name` registers the fp32 text model (the ONNX one when the conversion
    cannot answer text), its version tagged with the conversion's `conv_fp`, variant and
    lineage (the training run among it)."""
    quiet_mlflow()
    import mlflow
    import mlflow.onnx
    import onnx
    import onnxruntime
    from mlflow.tracking import MlflowClient

    from onnxport.artifact.reader import PublishedDirectory
    from onnxport.serving.package import log_text_model, unservable_reason

    run = mlflow.active_run()
    if run is None:
        raise InternalError("log_conversion logs to the active MLflow run, and none is active")
    log_figures(MlflowClient(), run.info.run_id, manifest, directory)
    # The caller has just sealed `directory` with `manifest`: neither is read nor hashed again.
    published = PublishedDirectory(directory, manifest)
    unservable = unservable_reason(published)
    if unservable is not None:
        logger.info("no text model logged: %s", unservable)
    for out in manifest.published_outputs():
        registered = registered_model_name if out.variant is REGISTERED_VARIANT else None
        model_path = directory / out.file
        # Loaded for this call alone, so the model MLflow saves (and changes: its weights
        # go external) is this one, not a second copy.
        model = onnx.load(str(model_path))
        mlflow.onnx.log_model(
            model,
            name=onnx_model_name(out.variant),
            signature=model_signature(model),
            input_example=input_example(directory, model_path),
            pip_requirements=[
                f"onnx=={onnx.__version__}",
                f"onnxruntime=={onnxruntime.__version__}",
            ],
            registered_model_name=registered if unservable is not None else None,
        )
        if unservable is None:
            tags = version_tags(manifest, out.variant)
            log_text_model(published, out.variant, registered_model_name=registered, tags=tags)


REGISTERED_VARIANT = Variant.FP32


def registrable_model(client, run_id: str):
    """The model `log_conversion` registered, or would have, for the conversion run `run_id`
    (its fp32 text model, else its fp32 ONNX model); None when this store holds no such run
    or model."""
    from onnxport.serving.package import text_model_name

    if not run_id:
        return None
    try:
        run = with_retry(lambda: client.get_run(run_id))
    except Exception:  # MLflow raises its own type for a run this store does not hold
        return None
    logged = with_retry(
        lambda: client.search_logged_models(
            experiment_ids=[run.info.experiment_id],
            filter_string=f"source_run_id = '{run_id}'",
        )
    )
    by_name = {model.name: model for model in logged}
    for name in (text_model_name(REGISTERED_VARIANT), onnx_model_name(REGISTERED_VARIANT)):
        if name in by_name:
            return by_name[name]
    return None


def register_reused(client, name: str, model, manifest: Manifest) -> str:
    """Register `model` (a conversion run's logged model, `registrable_model`) under `name`,
    tagged as `log_conversion` tags it; a version of `name` that already holds this
    conversion (the same `conv_fp`) is kept instead of adding its twin. Returns the version."""
    from mlflow.exceptions import MlflowException

    tags = version_tags(manifest, REGISTERED_VARIANT)
    # conv_fp is hex, safe inside the filter; a model name might hold any quote.
    same = with_retry(
        lambda: client.search_model_versions(f"tags.`onnxport.conv_fp` = '{manifest.conv_fp}'")
    )
    for version in same:
        if version.name == name:
            return str(version.version)
    try:
        with_retry(lambda: client.create_registered_model(name))
    except MlflowException as e:
        if e.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    created = with_retry(
        lambda: client.create_model_version(
            name,
            # Not `models:/<id>`: MLflow's SQL store looks such a source up in the process's
            # global tracking store, not in this client's.
            source=model.artifact_location,
            run_id=model.source_run_id,
            tags=tags,
            model_id=model.model_id,
        )
    )
    return str(created.version)
