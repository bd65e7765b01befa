"""The strict base of every section of `conversion.yaml` (unknown keys are errors), and the
small sections: `target`, `source`, `execution`."""

from __future__ import annotations

import re
from enum import Enum
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from onnxport.tasks import Task

DEFAULT_TIMEOUT_SECONDS = 3600.0


class Section(BaseModel):
    """A section of the settings: unknown keys are errors, and it is frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=False)


class TargetConfig(Section):
    format: Literal["onnx"] = "onnx"


class SourceConfig(Section):
    task: Task | None = None
    allow_pickle: bool = False
    """Load pickle-based weights (`pytorch_model.bin`, a `torch.save` state dict), with
    torch.load(weights_only=True) only: never an unrestricted unpickler, so `.pt2` archives
    that hold pickled members stay refused."""
    trust_remote_code: bool = False
    factory: str | None = None
    """`module:callable` returning the `nn.Module` a state dict file belongs to. Importing it
    runs that module's code, which is why only the user ever names it."""
    input_spec: Path | None = None
    """YAML or JSON file describing a plain PyTorch model's inputs (`onnxport.sources.plain`)."""

    @field_validator("factory")
    @classmethod
    def _module_and_callable(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[\w.]+:[\w.]+", value):
            raise ValueError("must be `module:callable`, e.g. my_project.models:build_model")
        return value


class IsolateExport(str, Enum):
    """Whether loading and exporting run in a process of their own (`onnxport.preparation`)."""

    AUTO = "auto"
    """Above 64 MiB of weights: torch and the traced model leave memory before the passes."""
    ALWAYS = "always"
    NEVER = "never"


class ExecutionConfig(Section):
    timeout_seconds: float = Field(DEFAULT_TIMEOUT_SECONDS, gt=0)
    isolate_export: IsolateExport = IsolateExport.AUTO
    export_cache: bool = True
    """Take the graph from the export cache when it holds this architecture's, binding this
    checkpoint's weights into it (`onnxport.export.cache`); false: always export."""
