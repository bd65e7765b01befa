"""Short labels of a validation, one cell each, alike in the terminal, `onnxport verify` and
the report: the shapes validated, the error ratio and its limit, the generation proof."""

from __future__ import annotations

from onnxport.artifact.records.validation import GenerationProofRecord, ValidationRecord
from onnxport.tasks import generation_step


def shapes_label(validation: ValidationRecord) -> str:
    """The validation inputs' shapes, one per input: `1x8 2x37` for text, `1x1+12` for a
    generation step of one token after 12 cached, `1x3x224x224` for images (every input's
    full shape; a manifest from before `input_shapes` has the (batch, size) pairs only)."""
    if not validation.input_shapes:
        return " ".join("x".join(str(n) for n in shape) for shape in validation.shapes)
    labels = []
    for shapes in validation.input_shapes:
        step = generation_step(shapes)
        if step is not None:  # a generation step: its new tokens, + the cached ones
            tokens, cached = step
            labels.append("x".join(map(str, tokens)) + (f"+{cached}" if cached else ""))
            continue
        distinct = list(dict.fromkeys("x".join(str(n) for n in s) for s in shapes.values()))
        labels.append(
            distinct[0]
            if len(distinct) == 1
            else "("
            + ", ".join(f"{name} {'x'.join(map(str, s))}" for name, s in shapes.items())
            + ")"
        )
    return " ".join(labels)


def error_ratio_label(validation: ValidationRecord) -> str:
    """The worst ratio of ONNX's error to PyTorch's own against float64, with the limit it
    was judged by; what judged instead when it was not the budget."""
    if not validation.elementwise_gate:
        return "-"  # a variant: judged on the task
    judged = [c for c in validation.outputs.values() if c.max_error_ratio is not None]
    if not judged:
        return "tolerance"
    worst = max(judged, key=lambda c: c.error_ratio or 0.0)
    ratio, limit = worst.error_ratio or 0.0, worst.max_error_ratio or 0.0
    return f"{ratio:.2g} {'≤' if ratio <= limit else '>'} {limit:g}"


def generation_label(proof: GenerationProofRecord) -> str:
    """`greedy 3/3 prompts = PyTorch (32 tokens)`: how many prompts the ONNX model's greedy
    tokens equal transformers' `generate()` on, of how many."""
    mark = "=" if proof.passed else "≠"
    prompts = f"{proof.identical}/{proof.prompts} prompts"
    return f"greedy {prompts} {mark} PyTorch ({proof.new_tokens} tokens)"
