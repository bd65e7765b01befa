"""The runtimes a benchmark compares and their inputs.

A `Runtime` (`verify.timing`) is a loaded model that answers named numpy inputs: an ONNX
Runtime session (`open_onnx`) or the PyTorch source model in eager mode (`open_pytorch`,
which alone imports torch); `measure_interleaved` times them. `onnxport.benchmark` uses these
for an output directory; `benchmarks/latency.py` uses them across several directories.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import psutil

from onnxport.artifact.manifest import Manifest
from onnxport.artifact.records.benchmark import PYTORCH, RuntimeRecord
from onnxport.samples import sample_texts
from onnxport.tasks import Modality
from onnxport.verify.runtime import create_session
from onnxport.verify.timing import (
    InputMaker,
    NumpyInputs,
    Runtime,
)

logger = logging.getLogger(__name__)

_MB = 1024.0 * 1024.0
_ONNX_INTEGER_TYPES = {"tensor(int64)": np.int64, "tensor(int32)": np.int32}


def rss_bytes() -> int:
    return psutil.Process().memory_info().rss


def load_recorded_source(manifest: Manifest) -> Any:
    """The source checkpoint the manifest records, loaded with the settings it recorded."""
    from onnxport.request.sections import SourceConfig
    from onnxport.sources import load_source

    try:
        settings = SourceConfig.model_validate(manifest.config.get("source", {}))
    except ValueError:
        settings = SourceConfig()
    return load_source(Path(manifest.source.path), settings)


def open_pytorch(manifest: Manifest, *, threads: int) -> tuple[Runtime, Any]:
    """PyTorch eager on the source checkpoint the manifest records; also returns its Source.

    Sets torch's intra-op threads to `threads` (process-wide: the caller restores them).
    """
    import torch

    from onnxport.export.strategies import adapter_for

    torch.set_num_threads(threads)
    started = time.perf_counter()
    source = load_recorded_source(manifest)
    seconds = time.perf_counter() - started
    adapter = adapter_for(source)
    names = source.input_names

    def run(inputs: NumpyInputs) -> object:
        with torch.inference_mode():
            return adapter(*(torch.from_numpy(inputs[n]) for n in names))

    size = sum(f.stat().st_size for f in source.weight_files if f.is_file())
    file = source.weight_files[0].name if len(source.weight_files) == 1 else None
    figures = RuntimeRecord(
        name=PYTORCH,
        engine="pytorch-eager",
        file=file,
        size_bytes=size,
        load_seconds=round(seconds, 4),
    )
    return Runtime(figures, run), source


# ----------------------------------------------------------------------------- inputs


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from `path`; empty when it is missing or not an object."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def image_size(config: dict[str, Any]) -> int:
    size = config.get("image_size", 224)
    if isinstance(size, (list, tuple)):
        size = size[0]
    if isinstance(size, dict):
        size = size.get("height", 224)
    return int(size)


def source_inputs(source: Any, *, seed: int = 0) -> tuple[InputMaker, str]:
    """The inputs validation uses (the source's own factory), as numpy; and their kind."""

    def make(batch: int, size: int) -> NumpyInputs:
        return {k: v.numpy() for k, v in source.make_inputs(batch, size, seed).items()}

    if source.modality is Modality.VISION:
        return make, "random pixels"
    if source.modality is Modality.TENSOR:
        return make, "generated inputs"
    has_tokenizer = getattr(source.make_inputs, "tokenizer", None) is not None
    return make, "tokenized sample text" if has_tokenizer else "generated ids"


def _generated(arg: ort.NodeArg, batch: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """An input that fits its declared type and shape: the first dynamic dimension is the
    batch, the others take `size`; small integers (ones for masks), normal floats."""
    dims = list(arg.shape or [])
    shape = [d if isinstance(d, int) else (batch if i == 0 else size) for i, d in enumerate(dims)]
    if arg.type in _ONNX_INTEGER_TYPES:
        dtype = _ONNX_INTEGER_TYPES[arg.type]
        if "mask" in arg.name:
            return np.ones(shape, dtype=dtype)
        return rng.integers(0, 10, size=shape).astype(dtype)
    if arg.type == "tensor(bool)":
        return rng.random(shape) < 0.5
    dtype = np.float16 if arg.type == "tensor(float16)" else np.float32
    return rng.standard_normal(shape).astype(dtype)


def _text(
    tokenizer: Any, batch: int, size: int, *, vocab: int, pad_id: int, seed: int
) -> dict[str, np.ndarray]:
    """Text inputs as the Hugging Face loader makes them: tokenized sample text (long texts
    fill every position, the last row is shorter so that padding is exercised), or random
    ids without a tokenizer."""
    if tokenizer is not None:
        texts = sample_texts(batch, min_lines=size // 12 + 1, offset=seed)
        if batch > 1:
            texts[-1] = texts[-1][: max(8, len(texts[-1]) // 3)]
        tokenizer.enable_truncation(size)
        tokenizer.enable_padding(length=size, pad_id=pad_id)
        encodings = tokenizer.encode_batch(texts)
        return {
            "input_ids": np.array([e.ids for e in encodings]),
            "attention_mask": np.array([e.attention_mask for e in encodings]),
            "token_type_ids": np.array([e.type_ids for e in encodings]),
        }
    mask = np.ones((batch, size), dtype=np.int64)
    if batch > 1 and size > 2:
        mask[-1, size // 2 :] = 0
    drawn = np.random.default_rng(seed).integers(min(5, vocab - 1), vocab, (batch, size))
    ids = np.where(mask == 1, drawn, pad_id)
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(mask)}


def directory_inputs(directory: Path, model: Path, *, seed: int = 0) -> tuple[InputMaker, str]:
    """Inputs made without torch for the model's declared inputs, with the directory's
    tokenizer.json and config.json for text models; and their kind."""
    from tokenizers import Tokenizer

    config = read_json(directory / "config.json")
    declared = create_session(model).get_inputs()
    names = {arg.name for arg in declared}
    is_text = "input_ids" in names
    tokenizer_file = directory / "tokenizer.json"
    tokenizer = (
        Tokenizer.from_file(str(tokenizer_file)) if is_text and tokenizer_file.is_file() else None
    )
    vocab = int(config.get("vocab_size") or 100)
    pad_id = int(config.get("pad_token_id") or 0)

    def make(batch: int, size: int) -> NumpyInputs:
        text = (
            _text(tokenizer, batch, size, vocab=vocab, pad_id=pad_id, seed=seed) if is_text else {}
        )
        rng = np.random.default_rng(seed)
        return {
            arg.name: text[arg.name].astype(_ONNX_INTEGER_TYPES.get(arg.type, np.int64))
            if arg.name in text
            else _generated(arg, batch, size, rng)
            for arg in declared
        }

    if "pixel_values" in names:
        kind = "random pixels"
    elif is_text:
        kind = "tokenized sample text" if tokenizer is not None else "generated ids"
    else:
        kind = "generated inputs"
    return make, kind


# -------------------------------------------------------------------------- measuring


def warm_up(runtime: Runtime, inputs: NumpyInputs, runs: int, *, rss_before: int) -> Runtime:
    """Run `runs` times untimed; returns the runtime with its memory growth since
    `rss_before` (taken before it was loaded) recorded."""
    for _ in range(runs):
        runtime.run(inputs)
    growth = round((rss_bytes() - rss_before) / _MB, 1)
    return replace(runtime, figures=runtime.figures.model_copy(update={"rss_growth_mb": growth}))
