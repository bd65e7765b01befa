"""The export cache's key: what decides the exported graph, and nothing that does not.

In the key: the model's class and its config (minus `EXCLUDED_CONFIG_KEYS`), the attention
implementation the loader chose, the task, the inputs and outputs and their dynamic axes, the
example shape the exporter traces with, each parameter's and buffer's name, shape and dtype,
which of them are tied, the content of tensors the model holds outside its state (the
exporter bakes them into the graph), the export settings, and the versions of the libraries
that write the graph. Not in it: the weights, which are bound into the graph afterwards.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch

from onnxport.artifact.records.source import SourceKind
from onnxport.export.cache.hint import EXCLUDED_CONFIG_KEYS, exporter_versions
from onnxport.export.strategies import DYNAMO_OPSETS, adapter_for
from onnxport.export.template import state_tensors
from onnxport.request.export_config import Exporter
from onnxport.request.fingerprints import canonical_json
from onnxport.sources.base import Source
from onnxport.sources.generative import CausalLMWithPast

KEY_FORMAT = 1
"""Raised when what the key holds changes meaning: older entries are then never found."""
KEY_LENGTH = 32


def _transformers_model(source: Source) -> torch.nn.Module:
    """The transformers model a source holds: a text-generation source wraps its
    `*ForCausalLM` in onnxport's flat-signature `CausalLMWithPast` (its code is onnxport's,
    versioned in the key)."""
    module = source.module
    return module.model if isinstance(module, CausalLMWithPast) else module


def uncacheable(source: Source, exporter: Exporter, opset: int) -> str | None:
    """Why `source`'s export cannot come from the cache, or None when it can."""
    if opset not in DYNAMO_OPSETS:
        return f"only the dynamo exporter's graph can be kept, and it does not export opset {opset}"
    if exporter is Exporter.TORCHSCRIPT:
        return (
            "the TorchScript exporter folds the weights into the graph and names the results "
            "itself: its graph cannot take another checkpoint's weights"
        )
    if source.kind is not SourceKind.HUGGINGFACE:
        return (
            f"a {source.kind} source's graph comes from code the key cannot see (a factory, "
            "a program, a script): it is exported every time"
        )
    if not type(_transformers_model(source)).__module__.startswith("transformers."):
        return "remote model code (trust_remote_code) can change without config.json changing"
    return None


def _held_tensors(module: torch.nn.Module) -> dict[str, str]:
    """Tensors held as plain attributes (not parameters or buffers): the exporter bakes their
    values into the graph, so their content belongs in the key."""
    found = {}
    for prefix, sub in module.named_modules():
        for attribute, value in vars(sub).items():
            if isinstance(value, torch.Tensor):
                raw = value.detach().cpu().contiguous().flatten().view(torch.uint8).numpy()
                digest = hashlib.sha256(raw.tobytes()).hexdigest()
                name = f"{prefix}.{attribute}" if prefix else attribute
                found[name] = f"{value.dtype} {list(value.shape)} {digest}"
    return found


def _tied(state: dict[str, torch.Tensor]) -> list[list[str]]:
    """Groups of names for one tensor (a tied embedding and output layer)."""
    groups: dict[int, list[str]] = {}
    for name, tensor in state.items():
        groups.setdefault(id(tensor), []).append(name)
    return sorted(sorted(names) for names in groups.values() if len(names) > 1)


def key_material(
    source: Source, *, opset: int, keep_debug_metadata: bool, repeat_layers: bool = True
) -> dict[str, Any]:
    """What decides the graph of `source`'s dynamo export with these settings."""
    module = _transformers_model(source)
    config = module.config
    settings = {k: v for k, v in config.to_dict().items() if k not in EXCLUDED_CONFIG_KEYS}
    adapter = adapter_for(source)
    state = state_tensors(adapter)
    material = {
        "format": KEY_FORMAT,
        "model": {
            "class": f"{type(module).__module__}.{type(module).__qualname__}",
            "config": settings,
            "num_labels": len(getattr(config, "id2label", None) or {}),
            "attn_implementation": getattr(config, "_attn_implementation", None),
            "task": source.task.value,
            "inputs": list(source.input_names),
            "outputs": list(source.output_names),
            "dynamic_axes": source.dynamic_axes,
            "example_shape": list(source.example_shape),
            "state": [[n, list(t.shape), str(t.dtype)] for n, t in sorted(state.items())],
            "tied": _tied(state),
            "held_tensors": _held_tensors(adapter),
        },
        "export": {
            "exporter": Exporter.DYNAMO.value,
            "opset": opset,
            "keep_debug_metadata": keep_debug_metadata,
        },
        "versions": exporter_versions(),
    }
    if not repeat_layers:  # named only when off: the default's keys are the keys of before
        material["export"]["repeat_layers"] = False
    # Through JSON once: config values that are not JSON types (a dtype) become strings.
    return json.loads(json.dumps(material, default=str))


def cache_key(material: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(material).encode()).hexdigest()[:KEY_LENGTH]
