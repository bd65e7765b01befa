"""Whether the export cache probably holds a checkpoint's graph, known without torch.

`execution.isolate_export: auto` exports a large model in a process of its own, to leave the
export's memory behind. Binding weights into a cached graph has no such memory to leave, and
the process's start and second imports of torch and transformers cost more than the whole
bind (DistilBERT-base's next checkpoint, fp32: 12.4 s isolated, 9.5 s not; a conversion
that quantizes stays isolated, see `preparation.isolated`). The entry's key needs
the loaded model (`key.key_material`), so the choice is made from this hint instead: a digest
of the checkpoint's config.json and the export settings and versions, recorded in each entry
when it is stored. A wrong hint changes only where the export runs; what the conversion
binds or exports is still decided by the key.

Also here, since both the hint and the key use them and this module imports no torch: the
config fields left out, and the library versions put in.
"""

from __future__ import annotations

import hashlib
import json
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from onnxport import __version__
from onnxport.request.fingerprints import canonical_json

EXCLUDED_CONFIG_KEYS: dict[str, str] = {
    "_name_or_path": "where the checkpoint was read from; no model code reads it",
    "transformers_version": "the transformers that wrote config.json; the one that runs the "
    "model code is in the key's versions",
    "id2label": "the label names, which no model code reads; their number sizes the "
    "classifier and is in the key (num_labels, and the classifier's shape)",
    "label2id": "the same names, the other way round",
}
"""Config fields left out of the key, each with why it cannot change the graph."""
VERSIONED = ("torch", "transformers", "onnx", "onnxscript", "onnx-ir")
HINT_FIELD = "checkpoint_hint"
"""The field of an entry's `entry.json` that holds the hint of the checkpoint that made it."""


def exporter_versions() -> dict[str, str]:
    """The versions of onnxport and of the libraries that write the graph."""
    found = {"onnxport": __version__}
    for name in VERSIONED:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "absent"
    return found


def checkpoint_hint(
    checkpoint: Path, *, opset: int, keep_debug_metadata: bool, repeat_layers: bool = True
) -> str | None:
    """The hint for a Hugging Face checkpoint directory exported with these settings; None
    for a path that is not one (its export is not cached)."""
    # Not `sources.checkpoint_files.read_config_json`: importing the `onnxport.sources`
    # package imports torch (its loaders), which this decision must not pay for.
    try:
        raw = json.loads((Path(checkpoint) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(raw, dict):
        return None
    material = {
        "config": {k: v for k, v in raw.items() if k not in EXCLUDED_CONFIG_KEYS},
        "num_labels": len(raw.get("id2label") or {}),
        "opset": opset,
        "keep_debug_metadata": keep_debug_metadata,
        "versions": exporter_versions(),
    }
    if not repeat_layers:  # as `key.key_material` names it
        material["repeat_layers"] = False
    return hashlib.sha256(canonical_json(material).encode()).hexdigest()[:32]
