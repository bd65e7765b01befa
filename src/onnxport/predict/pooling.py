"""One sentence vector from a text's token vectors, as sentence-transformers' Pooling and
Normalize modules compute it (`SentenceTransformer.encode`)."""

from __future__ import annotations

import numpy as np

from onnxport.artifact.records.source import Pooling

# torch.nn.functional.normalize's default: a zero vector stays zero instead of dividing by 0.
NORMALIZE_EPSILON = 1e-12


def sentence_vector(tokens: np.ndarray, pooling: Pooling, *, normalize: bool) -> np.ndarray:
    """Pool `tokens` (the text's token vectors, exactly those under the attention mask: the
    padding already cut off) into one vector, scaled to unit length when `normalize`."""
    if pooling is Pooling.MEAN:
        vector = tokens.mean(axis=0)
    elif pooling is Pooling.MAX:
        vector = tokens.max(axis=0)
    else:
        vector = tokens[0]
    if normalize:
        vector = vector / max(float(np.linalg.norm(vector)), NORMALIZE_EPSILON)
    return vector
