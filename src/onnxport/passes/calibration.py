"""Calibration samples for static quantization: lines of `quantize.calibration_file`
through the checkpoint's tokenizer, else the source's own sample inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from onnxport.errors import ConfigError
from onnxport.request.config import ConversionConfig
from onnxport.sources.base import Source

CALIBRATION_LENGTH = 128


def _calibration_texts(config: ConversionConfig) -> list[str] | None:
    file = config.quantize.calibration_file
    if file is None:
        return None
    try:
        lines = [ln.strip() for ln in Path(file).read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read quantize.calibration_file {file}: {e}") from e
    lines = [ln for ln in lines if ln]
    if not lines:
        raise ConfigError(f"quantize.calibration_file {file} has no samples")
    return lines[: config.quantize.calibration_samples]


def calibration_inputs(
    source: Source, config: ConversionConfig
) -> tuple[dict[str, np.ndarray], ...]:
    """Calibration samples, one input dict each: from the calibration file, else sample text."""
    texts = _calibration_texts(config)
    if texts is not None:
        if source.encode is None:
            raise ConfigError(
                "quantize.calibration_file needs a tokenizer in the checkpoint",
                hint="leave calibration_file out to calibrate on generated inputs",
            )
        return tuple(
            {k: v.numpy() for k, v in source.encode([text], CALIBRATION_LENGTH).items()}
            for text in texts
        )
    _, size = source.example_shape
    length = max(size, min(CALIBRATION_LENGTH, max(s for _, s in source.default_shapes)))
    return tuple(
        {k: v.numpy() for k, v in source.make_inputs(1, length, 1000 + i).items()}
        for i in range(config.quantize.calibration_samples)
    )
