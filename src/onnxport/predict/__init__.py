"""Answer real text with a converted model: ONNX Runtime, the `tokenizers` package and numpy.

`OnnxPredictor(directory)` opens an onnxport output directory (a model variant, the tokenizer,
the label map of `config.json`) and turns texts into entities (token classification, words
grouped by an `AggregationStrategy`), a label (sequence classification) or a vector (feature
extraction); an image classifier labels batches of pixel arrays (`predict_images`); a decoder
LM writes text after prompts (`generate`, with `OnnxGenerator`). Nothing on this path imports
torch or transformers, so a serving process stays small and starts fast.
"""

from onnxport.artifact.records.source import Pooling
from onnxport.errors import PredictError, TextTooLongError
from onnxport.predict.generator import DEFAULT_MAX_NEW_TOKENS, OnnxGenerator
from onnxport.predict.predictions import (
    AggregationStrategy,
    Entity,
    EntityPrediction,
    FinishReason,
    GeneratedText,
    ImagePrediction,
    LabelPrediction,
    Prediction,
    VectorPrediction,
)
from onnxport.predict.predictor import (
    LongText,
    OnnxPredictor,
    length_buckets,
)
from onnxport.predict.tokens import model_max_length
from onnxport.verify.decode import Sampling

__all__ = [
    "DEFAULT_MAX_NEW_TOKENS",
    "AggregationStrategy",
    "Entity",
    "EntityPrediction",
    "FinishReason",
    "GeneratedText",
    "ImagePrediction",
    "LabelPrediction",
    "LongText",
    "OnnxGenerator",
    "OnnxPredictor",
    "Pooling",
    "PredictError",
    "Prediction",
    "Sampling",
    "TextTooLongError",
    "VectorPrediction",
    "length_buckets",
    "model_max_length",
]
