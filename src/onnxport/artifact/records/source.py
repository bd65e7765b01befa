"""What was loaded: the checkpoint, its loader and its model facts (`onnxport.sources`)."""

from __future__ import annotations

from enum import Enum

from pydantic import Field

from onnxport.artifact.records import Record
from onnxport.names import StrEnum

SIZED_POSITION_EMBEDDINGS = "the model's position embeddings are sized for it"
"""Why a resolution is fixed when PyTorch refuses other sizes (ViT), and in manifests
written before the reason was recorded."""


class Pooling(str, Enum):
    """How token vectors become one sentence vector (feature extraction)."""

    MEAN = "mean"
    """The mean of the token vectors under the attention mask (sentence-transformers' way)."""
    CLS = "cls"
    """The first token's vector."""
    MAX = "max"
    """The largest value of each dimension over the tokens under the attention mask."""


class SentenceEmbeddingRecord(Record):
    """What `SentenceTransformer.encode` does after the transformer, as a sentence-transformers
    checkpoint's `modules.json` names it (`onnxport.sources.sentence_embedding`): the
    predictor computes the same sentence vectors from the ONNX model's token vectors."""

    pooling: Pooling
    """The Pooling module's mode (its `config.json`)."""
    normalize: bool = False
    """A Normalize module follows: vectors are scaled to unit length."""
    max_seq_length: int | None = None
    """The most tokens the checkpoint reads a text with (`sentence_bert_config.json`); None:
    the model's maximum."""


class SourceKind(StrEnum):
    """Which loader read the checkpoint (`onnxport.sources`)."""

    HUGGINGFACE = "huggingface"
    TORCH_EXPORT = "torch-export"
    TORCHSCRIPT = "torchscript"
    STATE_DICT = "state-dict"


class SourceRecord(Record):
    path: str
    kind: SourceKind
    task: str
    architecture: str
    model_type: str | None = None
    num_parameters: int = 0
    weights_sha256: dict[str, str] = Field(default_factory=dict)
    fixed_resolution: list[int] | None = None
    """[height, width]: the only image size the graph takes (`fixed_resolution_reason` says
    why); None: any size, or not images."""
    fixed_resolution_reason: str | None = None
    """Why the resolution is fixed: PyTorch refuses other sizes, or the graph exported with
    height and width dynamic refused them (a size fixed inside it at export)."""

    sentence_embedding: SentenceEmbeddingRecord | None = None
    """A sentence-transformers checkpoint's pooling and normalization; None: not one."""

    def why_fixed(self) -> str:
        """Why the resolution is fixed, for a message."""
        return self.fixed_resolution_reason or SIZED_POSITION_EMBEDDINGS
