"""Load a Hugging Face checkpoint directory: `config.json`, weights, optional tokenizer.

Safe by default: safetensors only, no remote code, nothing fetched from a hub. Pickle-based
weights (`pytorch_model.bin`) load only with `allow_pickle`, and then with
`torch.load(weights_only=True)` as transformers does.

What onnxport knows about particular model types (settings applied on load, limitations to
warn of) is one table, `MODEL_TYPE_QUIRKS`; the model class is the one config.json names
when it serves the task (`T5EncoderModel`), else the task's Auto class.
"""

from __future__ import annotations

import inspect
import logging
import os
import pickle
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from onnxport.artifact.records.source import SIZED_POSITION_EMBEDDINGS, SourceKind
from onnxport.errors import InternalError, SourceError, one_line
from onnxport.samples import sample_texts
from onnxport.sources.base import ModelFacts, Source
from onnxport.sources.checkpoint_files import (
    COMPANION_FILES,
    check_layer_counts,
    check_safetensors,
    read_config_json,
    weight_files,
)
from onnxport.sources.generative import GENERATION_SHAPES, with_past
from onnxport.sources.quirks import MODEL_TYPE_QUIRKS
from onnxport.sources.sentence_embedding import read_sentence_modules
from onnxport.tasks import TASKS, Modality, Task, task_from_architecture, task_names

logger = logging.getLogger(__name__)

TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
DEFAULT_TEXT_SHAPES = ((1, 8), (2, 37), (4, 128))
TEXT_EXAMPLE_SHAPE = (2, 13)
DEFAULT_VISION_BATCHES = (1, 2, 4)
RESOLUTION_STEP = 32
"""Other image sides are multiples of this: the total stride of most convolutional backbones."""


def _resolve_task(config: Any, requested: Task | None, path: Path) -> tuple[Task, str]:
    architectures = list(getattr(config, "architectures", None) or [])
    architecture = architectures[0] if architectures else type(config).__name__
    if requested is not None:
        return requested, architecture
    for arch in architectures:
        task = task_from_architecture(arch)
        if task is not None:
            return task, arch
    raise SourceError(
        f"{path}/config.json names no architecture onnxport knows the task of "
        f"({architectures or 'none'})",
        hint=f"set source.task to one of: {task_names()}",
    )


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


def _load_tokenizer(path: Path, trust: bool) -> Any | None:
    if not any(
        (path / name).is_file()
        for name in ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "tokenizer.model")
    ):
        return None
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(
            path, local_files_only=True, trust_remote_code=trust
        )
    except Exception as e:  # tokenizer libraries raise many types for a corrupt file
        message = one_line(e)
        raise SourceError(
            f"the tokenizer files in {path} cannot be loaded: {message}",
            hint="copy the tokenizer files again, or remove them to use generated inputs",
        ) from e
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token  # decoder tokenizers usually have none
    return tokenizer


def _forward_parameters(model: torch.nn.Module) -> set[str]:
    return set(inspect.signature(model.forward).parameters)


def _text_input_names(model: torch.nn.Module, config: Any, tokenizer: Any | None) -> list[str]:
    accepted = _forward_parameters(model)
    wanted = list(getattr(tokenizer, "model_input_names", None) or TEXT_INPUTS)
    if "input_ids" not in wanted:
        wanted.insert(0, "input_ids")
    names = [n for n in TEXT_INPUTS if n in wanted and n in accepted]
    if "token_type_ids" in names and getattr(config, "type_vocab_size", 1) in (None, 0):
        names.remove("token_type_ids")
    return names


class TextInputs:
    """Example inputs for text models: tokenized résumé text, or random ids without a tokenizer."""

    def __init__(self, names: list[str], config: Any, tokenizer: Any | None) -> None:
        self.names = names
        self.tokenizer = tokenizer
        self.vocab_size = int(getattr(config, "vocab_size", 0) or 0)
        self.pad_id = getattr(config, "pad_token_id", None) or 0

    def __call__(self, batch: int, length: int, seed: int) -> dict[str, torch.Tensor]:
        if self.tokenizer is not None:
            return self._tokenized(batch, length, seed)
        return self._random(batch, length, seed)

    def _tokenized(self, batch: int, length: int, seed: int) -> dict[str, torch.Tensor]:
        # Long texts fill every position; the last row is shorter, so padding is exercised.
        lines = max(1, length // 12 + 1)
        texts = sample_texts(batch, min_lines=lines, offset=seed)
        if batch > 1:
            texts[-1] = texts[-1][: max(8, len(texts[-1]) // 3)]
        return self.encode(texts, length)

    def encode(self, texts: list[str], length: int, *, pad: bool = True) -> dict[str, torch.Tensor]:
        """Tokenize `texts`, truncated to `length` tokens and padded to it (`pad`) or to the
        longest of them."""
        if self.tokenizer is None:
            raise ValueError("no tokenizer to encode text with")
        encoded = self.tokenizer(
            texts,
            padding="max_length" if pad else "longest",
            truncation=True,
            max_length=length,
            return_tensors="pt",
        )
        shape = encoded["input_ids"].shape
        return {
            name: encoded[name].to(torch.int64)
            if name in encoded
            else torch.zeros(shape, dtype=torch.int64)
            for name in self.names
        }

    def _random(self, batch: int, length: int, seed: int) -> dict[str, torch.Tensor]:
        generator = torch.Generator().manual_seed(seed)
        low = min(5, max(self.vocab_size - 1, 0))
        ids = torch.randint(
            low, max(self.vocab_size, low + 1), (batch, length), generator=generator
        )
        mask = torch.ones((batch, length), dtype=torch.int64)
        if batch > 1 and length > 2:
            mask[-1, length // 2 :] = 0
            ids[-1, length // 2 :] = self.pad_id
        out = {"input_ids": ids, "attention_mask": mask}
        out["token_type_ids"] = torch.zeros((batch, length), dtype=torch.int64)
        return {name: out[name] for name in self.names}


class VisionInputs:
    def __init__(self, channels: int, image_size: int) -> None:
        self.channels = channels
        self.image_size = image_size

    def __call__(self, batch: int, size: int, seed: int) -> dict[str, torch.Tensor]:
        generator = torch.Generator().manual_seed(seed)
        pixels = torch.randn((batch, self.channels, size, size), generator=generator)
        return {"pixel_values": pixels}


def _image_size(config: Any) -> int:
    size = getattr(config, "image_size", 224)
    if isinstance(size, (list, tuple)):
        size = size[0]
    if isinstance(size, dict):
        size = size.get("height", 224)
    return int(size)


def other_resolutions(size: int) -> tuple[int, int]:
    """Two image sides besides `size` to validate at: near 3/4 and 5/4 of it, in steps of
    `RESOLUTION_STEP` (224: 160 and 288), both above it where a smaller one would vanish."""
    step = RESOLUTION_STEP
    larger = max(step, -(-size * 5 // 4 // step) * step)
    if larger <= size:
        larger = size + step
    smaller = size * 3 // 4 // step * step
    return (smaller, larger) if step <= smaller < size else (larger, larger + step)


def _pytorch_refusal(model: torch.nn.Module, factory: VisionInputs, size: int) -> str | None:
    """Why PyTorch does not run the model on images of other sides than `size`, or None when
    it does: convolutional backbones and models that interpolate their position embeddings
    (DINOv2) do; models whose position embeddings are sized for one resolution (ViT) refuse."""
    try:
        with torch.no_grad():
            for side in other_resolutions(size):
                model(**factory(1, side, 0))
    except Exception as e:  # model code raises anything on a size it cannot take
        logger.info("the model takes %dx%d images only: %s", size, size, one_line(e, 200))
        return SIZED_POSITION_EMBEDDINGS
    return None


@dataclass(frozen=True)
class VisionSettings:
    """How a vision model is fed, traced and validated."""

    factory: VisionInputs
    dynamic_axes: dict[str, dict[int, str]]
    shapes: tuple[tuple[int, int], ...]
    example_shape: tuple[int, int]
    fixed_resolution: int | None
    fixed_resolution_reason: str | None


def _fixed_settings(factory: VisionInputs, reason: str) -> VisionSettings:
    size = factory.image_size
    return VisionSettings(
        factory,
        {"pixel_values": {0: "batch"}},
        tuple((b, size) for b in DEFAULT_VISION_BATCHES),
        (2, size),
        size,
        reason,
    )


def _vision_settings(model: torch.nn.Module, config: Any) -> VisionSettings:
    """Height and width vary where PyTorch takes other sizes (validated at two of them
    besides the batch sizes); otherwise the resolution is fixed, and said why.

    A model that takes any size is traced at another side than its own: model code may
    take a shortcut at its own resolution (DINOv2 returns its position embeddings as they
    are instead of interpolating them), and the graph would keep that shortcut's sizes."""
    size = _image_size(config)
    factory = VisionInputs(int(getattr(config, "num_channels", 3)), size)
    refusal = _pytorch_refusal(model, factory, size)
    if refusal is not None:
        return _fixed_settings(factory, refusal)
    others = other_resolutions(size)
    return VisionSettings(
        factory,
        {"pixel_values": {0: "batch", 2: "height", 3: "width"}},
        (*((b, size) for b in DEFAULT_VISION_BATCHES), *((1, s) for s in others)),
        (2, others[0]),
        None,
        None,
    )


def native_side(source: Source) -> int | None:
    """The image side a vision source's config names, when the source takes other sides too
    (None: not images, or its resolution is fixed already)."""
    factory = source.make_inputs
    if source.fixed_resolution is not None or not isinstance(factory, VisionInputs):
        return None
    return factory.image_size


def with_fixed_resolution(source: Source, reason: str) -> Source:
    """`source` with its images fixed at the side its config names, for a model whose
    exported graph takes no other side although PyTorch does (`reason`: why)."""
    if native_side(source) is None:
        raise InternalError(f"{source.path} has no image side to fix")
    settings = _fixed_settings(source.make_inputs, reason)  # type: ignore[arg-type]
    return replace(
        source,
        dynamic_axes=settings.dynamic_axes,
        default_shapes=settings.shapes,
        example_shape=settings.example_shape,
        fixed_resolution=settings.fixed_resolution,
        fixed_resolution_reason=settings.fixed_resolution_reason,
    )


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


def _checked_weight_files(
    path: Path, raw: dict[str, Any], *, allow_pickle: bool
) -> tuple[list[Path], bool]:
    """The checkpoint's weight files, each readable and with the layers config.json names;
    and whether they are safetensors."""
    files, safetensors = weight_files(path, allow_pickle=allow_pickle)
    tensor_names: list[str] = []
    for file in files:
        if safetensors and file.suffix == ".safetensors":
            tensor_names += check_safetensors(file)
        elif file.stat().st_size == 0:
            raise SourceError(f"{file} is empty", hint="copy the checkpoint again")
    check_layer_counts(path, raw, tensor_names)
    return files, safetensors


def _export_config(path: Path, raw: dict[str, Any], *, trust_remote_code: bool):
    """The checkpoint's transformers config, set for export: no cache outputs, and the
    settings its model type needs (`MODEL_TYPE_QUIRKS`)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoConfig
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    try:
        config = AutoConfig.from_pretrained(
            path, local_files_only=True, trust_remote_code=trust_remote_code
        )
    except (ValueError, KeyError, OSError, TypeError) as e:
        message = one_line(e)
        hint = "use a model type that the installed transformers knows"
        if not trust_remote_code:
            hint += ", or set source.trust_remote_code: true for a custom model you trust"
        raise SourceError(
            f"unknown or invalid model in {path}/config.json "
            f"(model_type={raw.get('model_type')!r}): {message}",
            hint=hint,
        ) from e
    if hasattr(config, "use_cache"):
        config.use_cache = False
    quirk = MODEL_TYPE_QUIRKS.get(config.model_type)
    if quirk is not None:
        for key, value in quirk.config.items():
            setattr(config, key, value)
        if quirk.note:
            logger.warning("%s: %s", config.model_type, quirk.note)
    return config


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
    files, safetensors = _checked_weight_files(path, raw, allow_pickle=allow_pickle)
    sentence = read_sentence_modules(path)  # before the model loads: a refusal costs nothing
    config = _export_config(path, raw, trust_remote_code=trust_remote_code)
    resolved_task, architecture = _resolve_task(config, task, path)
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
        vision = _vision_settings(model, config)
        factory, dynamic_axes, shapes = vision.factory, vision.dynamic_axes, vision.shapes
        fixed_resolution = vision.fixed_resolution
        fixed_resolution_reason = vision.fixed_resolution_reason
        names = ["pixel_values"]
        example_shape = vision.example_shape
    else:
        tokenizer = _load_tokenizer(path, trust_remote_code)
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
            names = _text_input_names(model, config, tokenizer)
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
            label2id={str(k): int(v) for k, v in (getattr(config, "label2id", None) or {}).items()},
        ),
    )
