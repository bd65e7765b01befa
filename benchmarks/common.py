"""What the benchmark scripts share: the checkpoints they measure and the machine they ran on.

`checkpoint(workdir, tiny=...)` builds (once) either the DistilBERT-base-sized token
classifier of `convert_distilbert_base.py` (66M parameters, random weights) or a tiny one
with the same tokenizer, for proving that a script works in seconds.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import sys
from pathlib import Path
from typing import Any

import psutil
from convert_distilbert_base import NUM_LABELS, build_checkpoint, cpu_model, tree_rss

__all__ = ["NUM_LABELS", "checkpoint", "cpu_model", "machine", "now", "tree_rss"]

TOKENIZER_VOCAB_SIZE = 2000


def build_tiny_checkpoint(directory: Path, seed: int = 0) -> Path:
    """A 2-layer DistilBERT token classifier (dim 32) with the benchmarks' tokenizer."""
    if (directory / "model.safetensors").is_file() and (directory / "tokenizer.json").is_file():
        return directory
    import torch
    from transformers import DistilBertConfig, DistilBertForTokenClassification

    from onnxport.demo.training import corpus, train_wordpiece_tokenizer

    print(f"building a tiny checkpoint in {directory} (once)", file=sys.stderr)
    directory.mkdir(parents=True, exist_ok=True)
    train_wordpiece_tokenizer(corpus(), directory, vocab_size=TOKENIZER_VOCAB_SIZE)
    config = DistilBertConfig(
        vocab_size=TOKENIZER_VOCAB_SIZE,
        dim=32,
        n_layers=2,
        n_heads=2,
        hidden_dim=64,
        max_position_embeddings=512,
        num_labels=NUM_LABELS,
    )
    torch.manual_seed(seed)
    DistilBertForTokenClassification(config).eval().save_pretrained(
        directory, safe_serialization=True
    )
    return directory


def checkpoint(workdir: Path, *, tiny: bool, seed: int = 0) -> Path:
    """The benchmarks' checkpoint; another `seed`: the same config with other weights (the
    next checkpoint of a training run)."""
    suffix = f"-seed{seed}" if seed else ""
    if tiny:
        return build_tiny_checkpoint(workdir / f"distilbert-tiny-token-cls{suffix}", seed)
    return build_checkpoint(
        workdir / f"distilbert-base-token-cls{suffix}", TOKENIZER_VOCAB_SIZE, seed
    )


def machine() -> dict[str, Any]:
    load1, load5, _ = os.getloadavg()
    return {
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 1024**3, 1),
        "python": platform.python_version(),
        "load_average_1m_5m": [round(load1, 2), round(load5, 2)],
    }


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
