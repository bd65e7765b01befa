"""`onnxport demo`: a small résumé entity tagger trained offline on synthetic lines
(`training`, `data`), laid out as a training run's output and converted (`project`)."""
