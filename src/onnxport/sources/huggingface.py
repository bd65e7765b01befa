"""Load a Hugging Face checkpoint directory: `config.json`, weights, optional tokenizer.

Safe by default: safetensors only, no remote code, nothing fetched from a hub. Pickle-based
weights (`pytorch_model.bin`) load only with `allow_pickle`, and then with
`torch.load(weights_only=True)` as transformers does.

What onnxport knows about particular model types (settings applied on load, limitations to
warn of) is one table, `MODEL_TYPE_QUIRKS`; the model class is the one config.json names
when it serves the task (`T5EncoderModel`), else the task's Auto class.

Reading the checkpoint's config, weight files and tokenizer is `huggingface_config`;
its example inputs and shapes are `huggingface_inputs`.
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Any

import torch

from onnxport.artifact.records.source import SourceKind
from onnxport.errors import SourceError, one_line
from onnxport.sources.base import ModelFacts, Source
from onnxport.sources.checkpoint_files import COMPANION_FILES, read_config_json
from onnxport.sources.generative import GENERATION_SHAPES, with_past
from onnxport.sources.huggingface_config import (
    checked_weight_files,
    export_config,
    load_tokenizer,
    resolve_task,
)
from onnxport.sources.huggingface_inputs import (
    DEFAULT_TEXT_SHAPES,
    TEXT_EXAMPLE_SHAPE,
    TextInputs,
    text_input_names,
    vision_settings,
)
from onnxport.sources.sentence_embedding import read_sentence_modules
from onnxport.tasks import TASKS, Modality, Task, task_from_architecture

logger = logging.getLogger(__name__)


def _supported_tasks(config: Any) -> list[str]:
    import transformers

    supported = []
    for task, info in TASKS.items():
        auto = getattr(transformers, info.auto_class)
        if type(config) in auto._model_mapping:
            supported.append(task.value)
    return supported


def _model_class(config: Any, task: Task) -> Any | None:
    """The class the checkpoint names in config.json, when it is one of transformers' and
    serves `task`. The Auto class maps a model type to one class per task, which is not
    always the saved one: `T5EncoderModel` (AutoModel gives the encoder-decoder `T5Model`),
    `DeiTForImageClassificationWithTeacher`."""
    import transformers

    for name in getattr(config, "architectures", None) or []:
        found = getattr(transformers, name, None)
        if found is not None and task_from_architecture(name) is task:
            return found
    return None


def _load_model(path: Path, config: Any, task: Task, *, safetensors: bool, trust: bool):
    import transformers

    auto = getattr(transformers, TASKS[task].auto_class)
    saved_class = _model_class(config, task)
    if saved_class is None and type(config) not in auto._model_mapping and not trust:
        raise SourceError(
            f"{config.model_type} models do not support the task {task.value}",
            hint=f"supported tasks for {config.model_type}: "
            f"{', '.join(_supported_tasks(config)) or 'none'}",
        )
    try:
        model, info = (saved_class or auto).from_pretrained(
            path,
            config=config,
            use_safetensors=safetensors,
            trust_remote_code=trust,
            local_files_only=True,
            output_loading_info=True,
            dtype=torch.float32,
            attn_implementation="eager",
        )
    except pickle.UnpicklingError as e:
        raise SourceError(
            f"the pickle-based weights in {path} hold more than tensors, and onnxport loads "
            "pickles only with torch.load(weights_only=True), which refused them",
            hint="re-save the checkpoint with save_pretrained(safe_serialization=True)",
        ) from e
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as e:
        message = one_line(e, 400)
        if "ignore_mismatched_sizes" in message:  # transformers points at its logged report
            message = "tensor shapes differ from the sizes config.json gives (see the report above)"
        raise SourceError(
            f"cannot load the weights in {path}: {message}",
            hint="check that config.json matches the weights (same architecture and sizes)",
        ) from e
    missing = list(info.get("missing_keys") or [])
    mismatched = list(info.get("mismatched_keys") or [])
    # Tensors the model has no place for mean that config.json describes a smaller model than
    # the weights (fewer layers): loading would drop them silently. Another head (a task)
    # legitimately leaves the checkpoint's own head unused, so only the saved class is strict.
    own_class = type(model).__name__ in (getattr(config, "architectures", None) or [])
    unexpected = list(info.get("unexpected_keys") or []) if own_class else []
    if missing or mismatched or unexpected:
        names = ", ".join(str(k) for k in (missing + mismatched + unexpected)[:4])
        raise SourceError(
            f"the weights in {path} do not fit a {type(model).__name__}: "
            f"{len(missing)} missing, {len(mismatched)} mismatched and {len(unexpected)} "
            f"unexpected tensors ({names}, ...)",
            hint="check source.task and that config.json belongs to these weights",
        )
    return model


def _int_setting(config: Any, name: str) -> int:
    """A size from the config, 0 when absent or per stage (Swin, SegFormer: lists)."""
    value = getattr(config, name, 0)
    return value if isinstance(value, int) else 0


def _output_names(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> tuple[str, ...]:
    try:
        with torch.no_grad():
            outputs = model(**inputs, return_dict=True)
    except Exception as e:  # model code raises anything on inputs it cannot take
        shape = "x".join(str(n) for n in next(iter(inputs.values())).shape)
        message = one_line(e)
        raise SourceError(
            f"{type(model).__name__} fails on example inputs ({shape}): "
            f"{type(e).__name__}: {message}",
            hint="check config.json (max_position_embeddings, sizes) against the weights",
        ) from e
    names = tuple(k for k, v in outputs.items() if isinstance(v, torch.Tensor))
    if not names:
        raise SourceError(f"{type(model).__name__} returned no tensor outputs")
    return names


def load_huggingface(
    path: Path,
    *,
    task: Task | None = None,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
) -> Source:
    """Load a checkpoint directory written by `save_pretrained()` (or a sentence-transformers
    `save()`, `onnxport.sources.sentence_embedding`) as a `Source`."""
    path = Path(path)
    raw = read_config_json(path)
    if "model_type" not in raw:
        raise SourceError(
            f"{path}/config.json has no model_type",
            hint="save the checkpoint with save_pretrained(), which writes it",
        )
    files, safetensors = checked_weight_files(path, raw, allow_pickle=allow_pickle)
    sentence = read_sentence_modules(path)  # before the model loads: a refusal costs nothing
    config = export_config(path, raw, trust_remote_code=trust_remote_code)
    resolved_task, architecture = resolve_task(config, task, path)
    info = TASKS[resolved_task]
    generative = resolved_task is Task.TEXT_GENERATION
    if generative:
        config.use_cache = True
    model = _load_model(
        path, config, resolved_task, safetensors=safetensors, trust=trust_remote_code
    )
    model.eval()
    companions = {n: path / n for n in COMPANION_FILES if (path / n).is_file()}
    if sentence is not None:
        companions.update(sentence.files)

    tokenizer = encode = trace_inputs = padding = run_unpadded = None
    fixed_resolution = fixed_resolution_reason = None
    module: torch.nn.Module = model
    if info.modality is Modality.VISION:
        vision = vision_settings(model, config)
        factory, dynamic_axes, shapes = vision.factory, vision.dynamic_axes, vision.shapes
        fixed_resolution = vision.fixed_resolution
        fixed_resolution_reason = vision.fixed_resolution_reason
        names = ["pixel_values"]
        example_shape = vision.example_shape
    else:
        tokenizer = load_tokenizer(path, trust_remote_code)
        limit = int(getattr(config, "max_position_embeddings", 512) or 512)
        example_shape = TEXT_EXAMPLE_SHAPE
        if generative:
            made = with_past(model, config, tokenizer)
            module, factory, names = made.module, made.inputs, list(made.input_names)
            dynamic_axes, output_names = made.dynamic_axes, made.output_names
            shapes = tuple((b, min(s, limit)) for b, s in GENERATION_SHAPES)
            trace_inputs, padding = made.inputs.trace_inputs, made.inputs.padding
            run_unpadded = made.inputs.run_unpadded
        else:
            names = text_input_names(model, config, tokenizer)
            factory = TextInputs(names, config, tokenizer)
            dynamic_axes = {n: {0: "batch", 1: "sequence"} for n in names}
            shapes = tuple((b, min(s, limit)) for b, s in DEFAULT_TEXT_SHAPES)
            encode = factory.encode if tokenizer is not None else None
    if not generative:
        output_names = _output_names(model, factory(*example_shape, 0))
    logger.info(
        "loaded %s (%s, task %s, %d parameters) from %s",
        type(model).__name__,
        config.model_type,
        resolved_task.value,
        sum(p.numel() for p in model.parameters()),
        path,
    )
    return Source(
        module=module,
        task=resolved_task,
        modality=info.modality,
        path=path,
        kind=SourceKind.HUGGINGFACE,
        architecture=architecture if task is None else type(model).__name__,
        input_names=tuple(names),
        output_names=output_names,
        dynamic_axes=dynamic_axes,
        make_inputs=factory,
        example_shape=example_shape,
        default_shapes=shapes,
        weight_files=tuple(files),
        files_to_copy=companions,
        model_type=config.model_type,
        num_parameters=sum(p.numel() for p in model.parameters()),
        tokenizer=tokenizer,
        encode=encode,
        fixed_resolution=fixed_resolution,
        fixed_resolution_reason=fixed_resolution_reason,
        sentence_embedding=sentence.record if sentence is not None else None,
        trace_inputs=trace_inputs,
        padding=padding,
        run_unpadded=run_unpadded,
        facts=ModelFacts(
            num_heads=_int_setting(config, "num_attention_heads"),
            hidden_size=_int_setting(config, "hidden_size"),
            max_positions=_int_setting(config, "max_position_embeddings"),
            label2id={str(k): int(v) for k, v in (getattr(config, "label2id", None) or {}).items()},
        ),
    )
