"""What every pass shares: a named unit from one ONNX file to another, with a small result.

Passes take paths, not in-memory models, because models with external data (over 2 GB) must
stay beside their `.data` file; each pass writes its output in the same directory.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import onnx

from onnxport.artifact.files import remove_model
from onnxport.artifact.records.export import PassRecord
from onnxport.errors import OnnxportError, PassError, one_line
from onnxport.passes.calibration import Calibration
from onnxport.request.export_config import Exporter
from onnxport.request.quantize_config import QuantizeConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PassContext:
    """What passes may need to know beyond the model file."""

    exporter: Exporter = Exporter.DYNAMO
    """The exporter that made the graph: the fusions differ (`passes.optimize`)."""
    model_type: str | None = None
    num_heads: int = 0
    hidden_size: int = 0
    max_positions: int = 0
    """The most positions the model reads: a decoder's fused rotary caches hold as many."""
    calibration: Calibration | None = None
    """Static quantization's samples (`passes.calibration`)."""
    settings: QuantizeConfig = field(default_factory=QuantizeConfig)
    """How the conversion quantizes (per-channel, nodes to exclude, ...)."""
    texts: tuple[np.ndarray, ...] = ()
    """A language model's real text, token ids per text, that its variants are judged on
    (`verify.next_token`); empty for other tasks."""


class OnnxPass(Protocol):
    name: str

    def run(self, model: Path, output: Path, context: PassContext) -> dict[str, Any]:
        """Write the transformed `model` to `output`; return what it changed."""
        ...


def count_nodes(path: Path) -> int:
    return len(onnx.load(str(path), load_external_data=False).graph.node)


def save_like(model: onnx.ModelProto, output: Path, source: Path) -> None:
    """Save a pass's `model` at `output`, its weights in `<output>.data` when the model it
    was made from (`source`) keeps them outside too."""
    onnx.save_model(
        model,
        str(output),
        save_as_external_data=has_external_data(source),
        all_tensors_to_one_file=True,
        location=output.name + ".data",
    )


def has_external_data(path: Path) -> bool:
    model = onnx.load(str(path), load_external_data=False)
    return any(init.data_location == onnx.TensorProto.EXTERNAL for init in model.graph.initializer)


def apply_pass(onnx_pass: OnnxPass, model: Path, output: Path, context: PassContext) -> PassRecord:
    """Run one pass, timing it; any failure becomes a `PassError` that names the pass."""
    started = time.perf_counter()
    try:
        before = count_nodes(model)
        logger.info("pass %s: %s -> %s (%d nodes)", onnx_pass.name, model.name, output.name, before)
        details = onnx_pass.run(model, output, context)
        after = count_nodes(output)
    except OnnxportError:
        raise
    except Exception as e:  # passes wrap libraries that raise anything
        message = one_line(e)
        raise PassError(
            f"pass '{onnx_pass.name}' failed on {model.name}: {type(e).__name__}: {message}",
            hint="try another onnx.optimize level or quantization setting",
        ) from e
    seconds = time.perf_counter() - started
    logger.info("pass %s done in %.1f s: %d -> %d nodes", onnx_pass.name, seconds, before, after)
    return PassRecord(
        name=onnx_pass.name,
        seconds=round(seconds, 3),
        nodes_before=before,
        nodes_after=after,
        details=details,
    )


def apply_sequence(
    passes: Sequence[OnnxPass], model: Path, output: Path, context: PassContext
) -> list[PassRecord]:
    """Compose passes: each reads the previous one's file; the last one writes `output`."""
    results: list[PassRecord] = []
    current = model
    for i, onnx_pass in enumerate(passes):
        target = (
            output
            if i == len(passes) - 1
            else output.with_name(f".{output.stem}.{onnx_pass.name}.onnx")
        )
        results.append(apply_pass(onnx_pass, current, target, context))
        if current != model:
            remove_model(current)
        current = target
    return results
