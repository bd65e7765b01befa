"""What every loader yields: a `Source`, the same whatever kind of input it came from."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from onnxport.tasks import Modality, Task

# An input factory builds named example inputs for a (batch, size) shape; `size` is the
# sequence length for text and the image side for vision. The seed makes them repeatable.
InputFactory = Callable[[int, int, int], dict[str, torch.Tensor]]


@dataclass
class Source:
    """A model ready to export: an `nn.Module` in eval mode and how to feed it."""

    module: torch.nn.Module
    task: Task
    modality: Modality
    path: Path
    kind: str
    """Which loader produced it: `huggingface`, `torch-export`, `torchscript`, `state-dict`."""
    architecture: str
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    dynamic_axes: dict[str, dict[int, str]]
    """Per input: axis index -> readable name (`batch`, `sequence`)."""
    make_inputs: InputFactory
    example_shape: tuple[int, int]
    """The shape the export traces with; validation uses others as well."""
    default_shapes: tuple[tuple[int, int], ...]
    weight_files: tuple[Path, ...] = ()
    files_to_copy: tuple[Path, ...] = ()
    """Files published beside the model (config.json, tokenizer) so loaders open the dir."""
    model_type: str | None = None
    num_parameters: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def example_inputs(self, seed: int = 0) -> dict[str, torch.Tensor]:
        batch, size = self.example_shape
        return self.make_inputs(batch, size, seed)
