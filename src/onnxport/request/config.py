"""Typed configuration: `conversion.yaml` and the experiment config.

YAML files and CLI flags build the same pydantic objects. Unknown keys, wrong types and
out-of-range values are `ConfigError`s that name the file, the key and what is allowed.
Each section is defined in a module of its own (`sections`, `export_config`,
`validation_config`, `quantize_config`); the names users build a config from are
importable from here too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, field_validator
from pydantic import ValidationError as PydanticValidationError

from onnxport.errors import ConfigError, one_line
from onnxport.request.export_config import (
    Exporter,
    ExternalData,
    OnnxConfig,
    OptimizeLevel,
    OutputConfig,
    Quantization,
)
from onnxport.request.quantize_config import LmHead, QuantizeConfig
from onnxport.request.sections import (
    ExecutionConfig,
    IsolateExport,
    Section,
    SourceConfig,
    TargetConfig,
)
from onnxport.request.validation_config import ValidationConfig, Yardstick

__all__ = [
    "CONVERSION_CONFIG_FILENAME",
    "EXPERIMENT_CONFIG_FILENAME",
    "FILE_SETTINGS",
    "ConversionConfig",
    "ExecutionConfig",
    "ExperimentConfig",
    "Exporter",
    "ExternalData",
    "IsolateExport",
    "LmHead",
    "OnnxConfig",
    "OptimizeLevel",
    "OutputConfig",
    "Quantization",
    "QuantizeConfig",
    "SourceConfig",
    "TargetConfig",
    "ValidationConfig",
    "Yardstick",
    "check_named_files",
    "load_conversion_config",
    "load_experiment_config",
    "parse_conversion_config",
]

CONVERSION_CONFIG_FILENAME = "conversion.yaml"
EXPERIMENT_CONFIG_FILENAME = "experiment.yaml"


class ConversionConfig(Section):
    target: TargetConfig = TargetConfig()
    onnx: OnnxConfig = OnnxConfig()
    output: OutputConfig = OutputConfig()
    validation: ValidationConfig = ValidationConfig()
    quantize: QuantizeConfig = QuantizeConfig()
    source: SourceConfig = SourceConfig()
    execution: ExecutionConfig = ExecutionConfig()

    def with_overrides(self, **sections: dict[str, Any]) -> ConversionConfig:
        """A copy with some settings replaced, validated like the YAML (CLI flags use this)."""
        data = self.model_dump(mode="json")
        for section, values in sections.items():
            data.setdefault(section, {}).update({k: v for k, v in values.items() if v is not None})
        return parse_conversion_config(data, origin="command-line options")


class ExperimentConfig(Section):
    """Where conversions are tracked. Read from `<config_dir>/experiment.yaml` when present."""

    experiment_name: str = "conversion"
    tracking_uri: str | None = None
    """None: a SQLite store at `<root_dir>/mlflow.db`."""
    artifact_location: str | None = None
    """None: `<root_dir>/mlartifacts`."""
    tags: dict[str, str] = Field(default_factory=dict)
    registered_model_name: str | None = None

    @field_validator("experiment_name")
    @classmethod
    def _non_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value


FILE_SETTINGS = (
    ("validation", "eval_file"),
    ("quantize", "calibration_file"),
    ("source", "input_spec"),
)
"""The settings that name a file. A relative path in `conversion.yaml` is read from that file's
directory (`load_conversion_config` makes it absolute); in a config built in code or from
command-line options, from the working directory."""


def check_named_files(config: ConversionConfig) -> None:
    """Every file the settings name is there: a `ConfigError` naming the first that is not,
    before any model is loaded."""
    for section, key in FILE_SETTINGS:
        value = getattr(getattr(config, section), key)
        if value is None or Path(value).is_file():
            continue
        path = Path(value).absolute()
        problem = "is not a file" if path.exists() else "does not exist"
        raise ConfigError(
            f"{section}.{key} {path} {problem}",
            hint="a relative path is read from the directory of the conversion.yaml that "
            "names it (from the working directory for a command-line option or a config "
            f"built in code); correct the path, or leave {section}.{key} out",
        )


def _relative_to(data: Any, directory: Path) -> Any:
    """`data` with the relative paths of `FILE_SETTINGS` made absolute below `directory`."""
    if not isinstance(data, dict):
        return data
    data = dict(data)
    for section, key in FILE_SETTINGS:
        values = data.get(section)
        if isinstance(values, dict) and isinstance(values.get(key), str):
            path = Path(values[key])
            if not path.is_absolute():
                data[section] = {**values, key: str(directory.resolve() / path)}
    return data


def _describe(error: PydanticValidationError, origin: str) -> str:
    problems = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key (check its spelling)"
        problems.append(f"{key}: {message}")
    return f"{origin}: " + "; ".join(problems)


def parse_conversion_config(data: Any, *, origin: str) -> ConversionConfig:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{origin}: expected a mapping of sections (target, onnx, output, ...), "
            f"got a {type(data).__name__}",
            hint="see the README for an example conversion.yaml",
        )
    try:
        return ConversionConfig.model_validate(data)
    except PydanticValidationError as e:
        raise ConfigError(_describe(e, origin)) from e


def _read_yaml(path: Path, *, what: str) -> Any:
    if not path.is_file():
        raise ConfigError(f"{what} not found: {path}", hint="create it or pass the right directory")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read {what} {path}: {e}") from e
    if not text.strip():
        raise ConfigError(f"{path} is empty", hint=f"write the {what} settings into it")
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        # Whole: it quotes the user's own lines and where in them the problem is.
        raise ConfigError(f"{path} is not valid YAML: {one_line(e, limit=None)}") from e


def load_conversion_config(path: Path) -> ConversionConfig:
    """Load `conversion.yaml`, from the file itself or from the directory that holds it; the
    files it names by a relative path are found beside it (`FILE_SETTINGS`)."""
    path = Path(path)
    if path.is_dir():
        path = path / CONVERSION_CONFIG_FILENAME
    data = _relative_to(_read_yaml(path, what="conversion config"), path.parent)
    return parse_conversion_config(data, origin=str(path))


def load_experiment_config(config_dir: Path) -> ExperimentConfig:
    """Load `<config_dir>/experiment.yaml`; defaults when the file does not exist."""
    path = Path(config_dir) / EXPERIMENT_CONFIG_FILENAME
    if not path.exists():
        return ExperimentConfig()
    data = _read_yaml(path, what="experiment config")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping, got a {type(data).__name__}")
    try:
        return ExperimentConfig.model_validate(data)
    except PydanticValidationError as e:
        raise ConfigError(_describe(e, str(path))) from e
