"""Fingerprints: the parent training run's, checked, and the conversion's own (`conv_fp`).

`conv_fp` hashes the parent fingerprints and the resolved conversion config as canonical
JSON, so YAML formatting and key order never change it and any changed setting does.
Settings that cannot change the published model (the child's timeout) are left out.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from onnxport.errors import ConfigError
from onnxport.request.config import ConversionConfig

CONV_FP_LENGTH = 16
_HEX = re.compile(r"[0-9a-fA-F]{4,64}")
# Config sections that decide how a conversion runs, not what it produces.
NON_SEMANTIC_SECTIONS = ("execution",)


def check_fingerprint(value: str, name: str) -> str:
    """`value` if it is a hex fingerprint (4 to 64 digits), else a `ConfigError` naming it."""
    if not isinstance(value, str) or not _HEX.fullmatch(value):
        raise ConfigError(
            f"{name} must be a hex fingerprint (4 to 64 characters of 0-9a-f), got {value!r}",
            hint="pass the fingerprints from the training run's output path",
        )
    return value.lower()


def canonical_json(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def _without_negative_zero(value: Any) -> Any:
    """-0.0 becomes 0.0: equal settings (`rtol: -0.0` is `rtol: 0`) hash alike."""
    if isinstance(value, float) and value == 0.0:
        return 0.0
    if isinstance(value, dict):
        return {k: _without_negative_zero(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_negative_zero(v) for v in value]
    return value


def conversion_fingerprint(
    parent_spec_fp: str, parent_exec_fp: str, config: ConversionConfig, *, version: str = "1"
) -> str:
    """The conversion's fingerprint: equal inputs give equal fingerprints, whatever order.
    `version`: the training run's `v<n>` (`ParentTrainingOutput.version`)."""
    settings = _without_negative_zero(config.model_dump(mode="json"))
    for section in NON_SEMANTIC_SECTIONS:
        settings.pop(section, None)
    payload = {
        "parent_spec_fp": check_fingerprint(parent_spec_fp, "parent_spec_fp"),
        "parent_exec_fp": check_fingerprint(parent_exec_fp, "parent_exec_fp"),
        # The platform's word for the run's `v<n>`; renaming the key would change every conv_fp.
        "parent_variant": str(version),
        "conversion": settings,
    }
    calibration = config.quantize.calibration_file
    if calibration is not None and Path(calibration).is_file():
        # The samples decide the static ranges: a changed file must not reuse an old result.
        payload["calibration_sha256"] = hashlib.sha256(Path(calibration).read_bytes()).hexdigest()
    evaluation = config.validation.eval_file
    if evaluation is not None and Path(evaluation).is_file():
        # The labelled set decides the metric gate: a changed file is another conversion.
        payload["eval_sha256"] = hashlib.sha256(Path(evaluation).read_bytes()).hexdigest()
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()[:CONV_FP_LENGTH]
