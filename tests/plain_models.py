"""Plain PyTorch models for the plain-source tests, importable by name for `--factory`.

`plain_models:build_model` is what a user's `--factory my_project.models:build_model`
would be: a callable that returns the module a state dict belongs to. pytest puts `tests/`
on `sys.path`, so the name resolves during the tests as a user's module does from its
project directory. `save_plain_files` writes the same model in every plain format.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

FEATURES = 16
HIDDEN = 32
CLASSES = 4
SEED = 0
FACTORY = "plain_models:build_model"
SPEC = {
    "inputs": [
        {"name": "features", "dtype": "float32", "shape": ["batch", "sequence", FEATURES]},
        {"name": "mask", "dtype": "int64", "shape": ["batch", "sequence"], "range": [0, 2]},
    ],
    "outputs": ["logits", "hidden"],
}


class TinyEncoder(torch.nn.Module):
    """Masked mean pooling over a sequence of feature vectors, then a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Linear(FEATURES, HIDDEN)
        self.head = torch.nn.Linear(HIDDEN, CLASSES)

    def forward(self, features: torch.Tensor, mask: torch.Tensor):
        weights = mask.unsqueeze(-1).to(features.dtype)
        hidden = torch.tanh(self.embed(features)) * weights
        pooled = hidden.sum(1) / weights.sum(1).clamp(min=1.0)
        return self.head(pooled), hidden


def build_model() -> TinyEncoder:
    torch.manual_seed(SEED)
    return TinyEncoder().eval()


def not_a_module() -> str:
    return "a string"


def example_args(batch: int = 2, length: int = 13) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(SEED)
    features = torch.randn(batch, length, FEATURES, generator=generator)
    return features, torch.ones(batch, length, dtype=torch.int64)


@dataclass(frozen=True)
class PlainFiles:
    program: Path
    """`torch.export.save` of the model, with dynamic batch and sequence."""
    torchscript: Path
    safetensors: Path
    pickle: Path
    """The state dict written by `torch.save`."""
    pickled_module: Path
    """The whole module written by `torch.save`: more than weights."""
    spec: Path


def plain_files(directory: Path) -> PlainFiles:
    """Where `save_plain_files(directory)` writes each form."""
    return PlainFiles(
        program=directory / "encoder.pt2",
        torchscript=directory / "encoder_ts.pt",
        safetensors=directory / "encoder.safetensors",
        pickle=directory / "encoder_state.pt",
        pickled_module=directory / "encoder_module.pt",
        spec=directory / "inputs.yaml",
    )


def copy_plain_files(files: PlainFiles, directory: Path) -> PlainFiles:
    """A private copy of saved plain files, free to damage."""
    shutil.copytree(files.spec.parent, directory)
    return plain_files(directory)


def save_plain_files(directory: Path) -> PlainFiles:
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    model = build_model()
    dims = {0: torch.export.Dim("batch"), 1: torch.export.Dim("sequence")}
    program = torch.export.export(model, example_args(), dynamic_shapes=(dims, dims))
    files = plain_files(directory)
    torch.export.save(program, files.program)
    torch.jit.script(model).save(str(files.torchscript))
    save_file(model.state_dict(), files.safetensors)
    torch.save(model.state_dict(), files.pickle)
    torch.save(model, files.pickled_module)
    files.spec.write_text(yaml.safe_dump(SPEC), encoding="utf-8")
    return files


class Bessel(torch.nn.Module):
    """`torch.special.i0`: an operator neither exporter converts (torch 2.13)."""

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.special.i0(features)


def build_unsupported() -> Bessel:
    return Bessel()
