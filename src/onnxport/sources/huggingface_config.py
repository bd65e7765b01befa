"""Read a Hugging Face checkpoint's settings before its model loads: `config.json` made
ready for export (the settings of `MODEL_TYPE_QUIRKS`), the task it serves, its weight files
checked, and its tokenizer."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from onnxport.errors import SourceError, one_line
from onnxport.sources.checkpoint_files import check_layer_counts, check_safetensors, weight_files
from onnxport.sources.quirks import MODEL_TYPE_QUIRKS
from onnxport.tasks import Task, task_from_architecture, task_names

logger = logging.getLogger(__name__)


def resolve_task(config: Any, requested: Task | None, path: Path) -> tuple[Task, str]:
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


def load_tokenizer(path: Path, trust: bool) -> Any | None:
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


def checked_weight_files(
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


def export_config(path: Path, raw: dict[str, Any], *, trust_remote_code: bool):
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
