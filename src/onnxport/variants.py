"""Variants: the quantized or float16 model made from the fp32 one, and its accuracy gate.

A variant is validated against PyTorch on the same inputs as the fp32 model. Its elementwise
differences are recorded; the gate that decides is the task-level agreement. A variant
under its gate is not published: the conversion fails, or (with `quantize.on_failure: skip`)
the variant is recorded as not published and the fp32 model goes out alone.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from onnxport.config import ConversionConfig
from onnxport.errors import ConfigError, QuantizationError
from onnxport.evaluation import Evaluation, metric_failure
from onnxport.manifest import OutputRecord, PassRecord, TaskMetricRecord
from onnxport.passes import OnnxPass, PassContext, PassResult, apply_pass, remove_model
from onnxport.records import validation_record
from onnxport.sources import Source
from onnxport.tasks import Task
from onnxport.validate import DEFAULT_TOLERANCES, Reference, validate_model

logger = logging.getLogger(__name__)

EXPORT_DIRNAME = ".export"
CALIBRATION_LENGTH = 128


def pass_record(result: PassResult) -> PassRecord:
    return PassRecord(
        name=result.name,
        seconds=round(result.seconds, 3),
        nodes_before=result.nodes_before,
        nodes_after=result.nodes_after,
        details=result.details,
    )


def data_file_of(model: Path) -> str | None:
    """The name of the model's external data file, if it has one beside it."""
    data = model.with_name(model.name + ".data")
    return data.name if data.is_file() else None


def move_model(source: Path, target: Path) -> None:
    """Move a model and its external data; the data file's name is kept, so it still resolves."""
    shutil.move(str(source), str(target))
    data = source.with_name(source.name + ".data")
    if data.is_file():
        shutil.move(str(data), str(target.with_name(data.name)))


def _calibration_texts(config: ConversionConfig) -> list[str] | None:
    file = config.quantize.calibration_file
    if file is None:
        return None
    try:
        lines = [ln.strip() for ln in Path(file).read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read quantize.calibration_file {file}: {e}") from e
    lines = [ln for ln in lines if ln]
    if not lines:
        raise ConfigError(f"quantize.calibration_file {file} has no samples")
    return lines[: config.quantize.calibration_samples]


def calibration_inputs(source: Source, config: ConversionConfig) -> tuple[dict, ...]:
    """Calibration samples, one input dict each: from the calibration file, else sample text."""
    texts = _calibration_texts(config)
    factory = source.make_inputs
    if texts is not None:
        encode = getattr(factory, "encode", None)
        if encode is None:
            raise ConfigError(
                "quantize.calibration_file needs a tokenizer in the checkpoint",
                hint="leave calibration_file out to calibrate on generated inputs",
            )
        return tuple(
            {k: v.numpy() for k, v in encode([text], CALIBRATION_LENGTH).items()} for text in texts
        )
    _, size = source.example_shape
    length = max(size, min(CALIBRATION_LENGTH, max(s for _, s in source.default_shapes)))
    return tuple(
        {k: v.numpy() for k, v in factory(1, length, 1000 + i).items()}
        for i in range(config.quantize.calibration_samples)
    )


def pass_context(
    source: Source, exporter: str, config: ConversionConfig, references: list[Reference]
) -> PassContext:
    from onnxport.config import Quantization

    needs_calibration = config.onnx.quantization is Quantization.INT8_STATIC
    return PassContext(
        exporter=exporter,
        model_type=source.model_type,
        num_heads=int(source.extra.get("num_heads", 0)),
        hidden_size=int(source.extra.get("hidden_size", 0)),
        calibration_inputs=calibration_inputs(source, config) if needs_calibration else (),
        settings=config.quantize,
    )


def make_variant(
    variant_pass: OnnxPass,
    work: Path,
    base: Path,
    references: list[Reference],
    task: Task,
    config: ConversionConfig,
    context: PassContext,
    *,
    evaluation: Evaluation | None = None,
) -> OutputRecord:
    """Make one variant from the fp32 model, validate it, and keep it only if it passes
    (task agreement with PyTorch, and with `evaluation`, its score on the labelled set)."""
    variant = config.onnx.quantization.value
    record = OutputRecord(file=config.output.filename(variant), variant=variant)
    result = apply_pass(variant_pass, base, work / record.file, context)
    record.passes = [pass_record(result)]
    record.data_file = data_file_of(work / record.file)
    validation = validate_model(
        work / record.file,
        references,
        task=task,
        variant=variant,
        tolerance=DEFAULT_TOLERANCES.get(variant),
        min_agreement=config.validation.min_task_agreement,
        elementwise_gate=False,
    )
    record.validation = validation_record(validation)
    if evaluation is not None:
        judged = evaluation.judge(work / record.file)
        record.validation.task_metric = TaskMetricRecord(**judged)
        record.validation.passed = record.validation.passed and judged["passed"]
    if record.validation.passed:
        return record
    agreement = validation.task_agreement
    if not validation.passed:
        message = (
            f"the {variant} variant fails its accuracy gate: {agreement.metric} "
            f"{agreement.value:.4f} is below the minimum {agreement.minimum:g}"
        )
    else:
        message = (
            f"the {variant} variant fails its accuracy gate: "
            f"{metric_failure(record.validation.task_metric.model_dump())}"
        )
    suggestion = ""
    if config.validation.localize:
        found = _localize(base, work / record.file, record.variant, references, validation)
        if found is not None:
            record.localization = found.to_dict()
            message += f"; {found.summary()}"
            suggestion = found.suggestion or ""
    if config.quantize.on_failure == "skip":
        logger.warning("%s; it is not published (quantize.on_failure: skip)", message)
        remove_model(work / record.file)
        record.published = False
        record.data_file = None
        return record
    raise QuantizationError(message + "; nothing was published", hint=_advice(config, suggestion))


def _localize(base: Path, variant_file: Path, variant: str, references, validation):
    """Localize a failed variant against the model it was made from; None if it cannot run."""
    from onnxport.localize import failing_input, localize_variant

    try:
        return localize_variant(base, variant_file, failing_input(references, validation))
    except Exception as e:  # a diagnostic must never hide the gate failure itself
        logger.warning("could not localize the %s variant's loss: %s", variant, e)
        return None


def _advice(config: ConversionConfig, suggestion: str = "") -> str:
    """What to try next, leaving out what the config already does."""
    tries = [suggestion] if suggestion else []
    if config.onnx.quantization.value == "int8":
        tries.append("quantization: int8-static (calibrated)")
    if not config.quantize.per_channel:
        tries.append("quantize.per_channel: true")
    if not suggestion and not config.validation.localize:
        tries.append("validation.localize: true to find which node to leave in float")
    tries.append("quantize.on_failure: skip to publish the fp32 model alone")
    return "try " + ", or ".join(tries)
