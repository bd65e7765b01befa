"""What onnxport knows about particular model types that their config.json does not say:
settings applied on load, and limitations to warn of. The one place for per-architecture
knowledge in loading; `onnxport.coverage` measures it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ModelTypeQuirk:
    """What onnxport knows about one model type that its config.json does not say."""

    config: Mapping[str, Any] = field(default_factory=dict)
    """Settings applied on load, before the model is built."""
    note: str | None = None
    """Logged as a warning on load, and shown in docs/coverage.md."""


MODEL_TYPE_QUIRKS: dict[str, ModelTypeQuirk] = {
    "big_bird": ModelTypeQuirk(
        config={"attention_type": "original_full"},
        note="block-sparse attention picks its blocks in Python per sequence length and "
        "cannot be exported; BigBird converts with full attention (transformers itself "
        "switches to it for inputs under (5 + 2·num_random_blocks)·block_size tokens), so "
        "the ONNX model matches PyTorch with attention_type='original_full'",
    ),
    "longformer": ModelTypeQuirk(
        note="sliding-window attention derives its chunk count from the sequence length as "
        "a tensor: the dynamo exporter stops on that data-dependent size, and the "
        "TorchScript exporter records the traced batch and length as constants, so its "
        "graph fails on any other shape; no exporter setting avoids it (BigBird converts)",
    ),
}
