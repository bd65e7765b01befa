"""What every loader yields: a `Source`, the same whatever kind of input it came from."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from onnxport.artifact.manifest import sha256_file
from onnxport.artifact.records.source import SentenceEmbeddingRecord, SourceKind, SourceRecord
from onnxport.tasks import Modality, Task

# An input factory builds named example inputs for a (batch, size) shape; `size` is the
# sequence length for text and the image side for vision. The seed makes them repeatable.
InputFactory = Callable[[int, int, int], dict[str, torch.Tensor]]


class TextEncoder(Protocol):
    """Tokenized texts as named model inputs, truncated to `length` tokens and padded to it
    (`pad`) or to the longest text."""

    def __call__(
        self, texts: list[str], length: int, *, pad: bool = True
    ) -> dict[str, torch.Tensor]: ...


@dataclass(frozen=True)
class ModelFacts:
    """What later stages need to know about the model, beyond its inputs and outputs."""

    num_heads: int = 0
    """Attention heads (0: unknown, or per stage): the TorchScript graph's fusions need it."""
    hidden_size: int = 0
    max_positions: int = 0
    """The most positions the model reads (`max_position_embeddings`; 0: unknown)."""
    label2id: Mapping[str, int] = field(default_factory=dict)
    """The classifier's labels (config.json), which a labelled evaluation set names."""


@dataclass
class Source:
    """A model ready to export: an `nn.Module` in eval mode and how to feed it."""

    module: torch.nn.Module
    task: Task
    modality: Modality
    path: Path
    kind: SourceKind
    """Which loader produced it."""
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
    files_to_copy: Mapping[str, Path] = field(default_factory=dict)
    """Files published beside the model (config.json, tokenizer) so loaders open the dir:
    the name published (a path inside the directory, `1_Pooling/config.json`) -> the file."""
    model_type: str | None = None
    num_parameters: int = 0
    tokenizer: Any | None = None
    """The checkpoint's tokenizer (a transformers tokenizer), when it ships one."""
    encode: TextEncoder | None = None
    """Real text as model inputs, when the source has a tokenizer."""
    fixed_resolution: int | None = None
    """The one image side an image model takes (`fixed_resolution_reason`: why); None: any
    size, or not an image model."""
    fixed_resolution_reason: str | None = None
    """Why the resolution is fixed: PyTorch refuses other sizes, or the exported graph does."""
    facts: ModelFacts = field(default_factory=ModelFacts)
    sentence_embedding: SentenceEmbeddingRecord | None = None
    """A sentence-transformers checkpoint's pooling and normalization (`modules.json`)."""
    padding: Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]] | None = None
    """Per output, which elements are padding for given inputs (True): values no user reads,
    left out of the comparison with PyTorch (a decoder's left-padded positions)."""
    run_unpadded: (
        Callable[
            [Callable[..., tuple[torch.Tensor, ...]], Mapping[str, torch.Tensor]],
            tuple[torch.Tensor, ...],
        ]
        | None
    ) = None
    """How the float64 reference runs a batch whose padding the model's code cannot take in
    float64: row by row without it (`GenerationInputs.run_unpadded`)."""
    trace_inputs: Callable[[int], dict[str, torch.Tensor]] | None = None
    """The inputs the export traces with, when they are not `make_inputs` at `example_shape`
    (a decoder traces a step with a past, so that no length is fixed at 0 or 1)."""

    def example_inputs(self, seed: int = 0) -> dict[str, torch.Tensor]:
        if self.trace_inputs is not None:
            return self.trace_inputs(seed)
        batch, size = self.example_shape
        return self.make_inputs(batch, size, seed)

    def record(self) -> SourceRecord:
        return SourceRecord(
            path=str(self.path.absolute()),
            kind=self.kind,
            task=self.task.value,
            architecture=self.architecture,
            model_type=self.model_type,
            num_parameters=self.num_parameters,
            weights_sha256={f.name: sha256_file(f) for f in self.weight_files},
            fixed_resolution=(
                [self.fixed_resolution] * 2 if self.fixed_resolution is not None else None
            ),
            fixed_resolution_reason=self.fixed_resolution_reason,
            sentence_embedding=self.sentence_embedding,
        )
