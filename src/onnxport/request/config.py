"""Typed configuration: `conversion.yaml` and the experiment config.

YAML files and CLI flags build the same pydantic objects. Unknown keys, wrong types and
out-of-range values are `ConfigError`s that name the file, the key and what is allowed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from enum import Enum
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic import ValidationError as PydanticValidationError

from onnxport.errors import ConfigError, one_line
from onnxport.names import StrEnum, Variant
from onnxport.tasks import Task

CONVERSION_CONFIG_FILENAME = "conversion.yaml"
EXPERIMENT_CONFIG_FILENAME = "experiment.yaml"

DEFAULT_OPSET = 18
DEFAULT_FILENAME_PATTERN = "model_{quantization}.onnx"
DEFAULT_MIN_TASK_AGREEMENT = 0.99
DEFAULT_GENERATE_TOKENS = 32
DEFAULT_MAX_ERROR_RATIO = 4.0
DEFAULT_FLOAT64_MAX_WEIGHTS_GB = 6.0
"""A float64 copy takes twice the float32 weights: 12 GB beside 6 GB fits a 24 GiB machine."""
DEFAULT_TIMEOUT_SECONDS = 3600.0
DEFAULT_CALIBRATION_SAMPLES = 32
DEFAULT_SEARCH_BUDGET_SECONDS = 600.0
DEFAULT_MAX_EXCLUDED_NODES = 4
DEFAULT_BLOCK_SIZE = 32
DEFAULT_ACCURACY_LEVEL = 4
"""int8 compute for MatMulNBits on CPU: the fastest, at no measurable cost in accuracy."""
DEFAULT_MIN_NEXT_TOKEN_AGREEMENT = 0.9
DEFAULT_MAX_PERPLEXITY_INCREASE = 0.05


class Quantization(str, Enum):
    NONE = "none"
    INT8 = "int8"
    INT8_STATIC = "int8-static"
    FP16 = "fp16"
    INT4 = "int4"
    """Weight-only: MatMul weights in 4 bits per block (`passes.weight_only`), for decoder
    LMs."""
    INT8_WEIGHTS = "int8-weights"
    """Weight-only: MatMul weights in 8 bits per block, activations in float (decoder LMs,
    whose outlier activations dynamic int8 cannot take)."""
    AUTO = "auto"
    """Search for the fastest variant that passes the gate (`passes.search`): int8 settings,
    or a decoder LM's `int8-weights` and `int4`."""

    @property
    def variant(self) -> Variant:
        """The published variant's name; `auto`'s is the int8 search's. A decoder LM's search
        publishes the variant it chooses under that one's name, `int8-weights` or `int4`
        (`passes.search.quantize_search`). `none` makes no variant: asking is a bug."""
        return Variant.INT8 if self is Quantization.AUTO else Variant(self.value)


# Spellings accepted for the same setting; `dynamic` is the platform's older name for int8.
_QUANTIZATION_ALIASES = {"dynamic": "int8", "int8-dynamic": "int8", "static": "int8-static"}


class OptimizeLevel(str, Enum):
    NONE = "none"
    BASIC = "basic"
    EXTENDED = "extended"
    AUTO = "auto"
    """Measure every level on this machine and keep the fastest that validates."""


class Exporter(StrEnum):
    AUTO = "auto"
    DYNAMO = "dynamo"
    TORCHSCRIPT = "torchscript"


EXPORTER_OPSETS = {Exporter.DYNAMO: range(18, 24), Exporter.TORCHSCRIPT: range(7, 21)}
"""The opsets each installed torch.onnx exporter writes: the one place they are written
(the settings, `export.strategies` and their messages read them here)."""
MIN_OPSET = min(opsets.start for opsets in EXPORTER_OPSETS.values())
MAX_OPSET = max(opsets.stop for opsets in EXPORTER_OPSETS.values()) - 1


def unsupported_opset(opset: int, exporters: Sequence[Exporter]) -> str | None:
    """Why none of `exporters` writes `opset`, with the opsets each does; None when one of
    them writes it."""
    if any(opset in EXPORTER_OPSETS[e] for e in exporters):
        return None
    spans = [(e, f"{EXPORTER_OPSETS[e].start}-{EXPORTER_OPSETS[e].stop - 1}") for e in exporters]
    if len(spans) == 1:
        ((exporter, span),) = spans
        return f"opset {opset} is not supported by the {exporter} exporter ({span})"
    each = ", ".join(f"{e}: {span}" for e, span in spans)
    return f"opset {opset} is not supported by the installed exporters ({each})"


class ExternalData(str, Enum):
    """Where the published model's weights go: in the `.onnx` file or in `<file>.data`."""

    AUTO = "auto"
    ALWAYS = "always"
    NEVER = "never"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=False)


class TargetConfig(_Strict):
    format: Literal["onnx"] = "onnx"


class OnnxConfig(_Strict):
    opset_version: int = DEFAULT_OPSET
    quantization: Quantization = Quantization.NONE
    optimize: OptimizeLevel = OptimizeLevel.NONE
    run_smoke_test: bool = True
    exporter: Exporter = Exporter.AUTO

    @field_validator("opset_version")
    @classmethod
    def _supported_opset(cls, value: int) -> int:
        refused = unsupported_opset(value, tuple(EXPORTER_OPSETS))
        if refused is not None:
            raise ValueError(f"{refused}; use {DEFAULT_OPSET}")
        return value

    @model_validator(mode="after")
    def _opset_of_the_exporter(self) -> OnnxConfig:
        # Refused with the settings, not once the model is loaded and handed to the exporter.
        if self.exporter is not Exporter.AUTO:
            refused = unsupported_opset(self.opset_version, (self.exporter,))
            if refused is not None:
                raise ValueError(f"{refused}; choose an opset in that range, or exporter: auto")
        return self

    @field_validator("quantization", mode="before")
    @classmethod
    def _alias(cls, value: Any) -> Any:
        if isinstance(value, str):
            return _QUANTIZATION_ALIASES.get(value.strip().lower(), value.strip().lower())
        return value


class OutputConfig(_Strict):
    filename_pattern: str = DEFAULT_FILENAME_PATTERN
    external_data: ExternalData = ExternalData.AUTO
    """`auto`: one self-contained file, weights in `<file>.data` beside it only above
    protobuf's 2 GiB limit; `always`: in `<file>.data` at any size (ONNX Runtime then maps
    them instead of copying them: less memory per session); `never`: refused above 2 GiB."""
    keep_debug_metadata: bool = False
    """Keep the exporter's stack traces and source locations in the published models; they
    hold the converting machine's file paths (`onnxport.export.metadata`)."""

    @field_validator("external_data", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("filename_pattern")
    @classmethod
    def _plain_file_name(cls, value: str) -> str:
        if "{quantization}" not in value:
            raise ValueError("must contain '{quantization}' so that each variant gets its own file")
        if "/" in value or "\\" in value or ".." in value or value.startswith("~"):
            raise ValueError("must be a plain file name inside the output directory (no '/', '..')")
        if not value.endswith(".onnx"):
            raise ValueError("must end with '.onnx'")
        try:
            value.format(quantization=Variant.FP32)
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(f"has a placeholder other than '{{quantization}}': {e}") from None
        return value

    def filename(self, variant: Variant) -> str:
        return self.filename_pattern.format(quantization=variant)


class Yardstick(str, Enum):
    """How the fp32 model's values are judged against PyTorch's."""

    BUDGET = "budget"
    """ONNX's error against PyTorch in float64 (the exact answer), within
    `max_error_ratio` times PyTorch's own float32 error (`onnxport.verify.compare`)."""
    TOLERANCE = "tolerance"
    """|onnx - pytorch_fp32| <= atol + rtol * |pytorch_fp32|, element by element."""


class ValidationConfig(_Strict):
    shapes: list[tuple[int, int]] | None = None
    """(batch, sequence) pairs for text, (batch, image size) for vision; None: the defaults."""
    mode: Yardstick | None = None
    """None: `tolerance` when `atol` or `rtol` is set (an explicit override), else `budget`."""
    max_error_ratio: float = Field(DEFAULT_MAX_ERROR_RATIO, gt=0)
    """`budget`: how many times PyTorch's own float32 error ONNX's error may be."""
    float64_max_weights_gb: float = Field(DEFAULT_FLOAT64_MAX_WEIGHTS_GB, ge=0)
    """`budget`: above this many GB of float32 weights, PyTorch is not run in float64 (it
    needs twice the memory) and the tolerance judges, saying why; 0: never."""
    atol: float | None = Field(None, gt=0)
    rtol: float | None = Field(None, ge=0)
    min_task_agreement: float = Field(DEFAULT_MIN_TASK_AGREEMENT, ge=0.0, le=1.0)
    seed: int = 0
    localize: bool = True
    """After a failed validation, search for where the model diverges: its first diverging
    node (`onnxport.verify.divergence`)."""
    eval_file: str | None = None
    """A labelled evaluation set (JSON lines, see `onnxport.verify.evaluation`): every model must
    then also keep PyTorch's entity F1 (token classification) or accuracy (sequence
    classification) on it, within `max_metric_drop`. Relative: see `FILE_SETTINGS`."""
    max_metric_drop: float = Field(0.01, ge=0.0, le=1.0)
    generate_tokens: int = Field(DEFAULT_GENERATE_TOKENS, ge=0, le=4096)
    """text-generation: the new tokens each greedy generation proof prompt runs to; the
    ONNX model's tokens must be PyTorch's (transformers' `generate()`); 0: no such proof."""
    min_next_token_agreement: float = Field(DEFAULT_MIN_NEXT_TOKEN_AGREEMENT, ge=0.0, le=1.0)
    """Text generation: a variant's next-token argmax must equal the fp32 model's at this
    share of the positions of real text, teacher-forced (`onnxport.verify.next_token`)."""
    max_perplexity_increase: float = Field(DEFAULT_MAX_PERPLEXITY_INCREASE, ge=0.0)
    """Text generation: a variant's perplexity on that text may exceed the fp32 model's by
    this share (0.05: 5%)."""

    @property
    def yardstick(self) -> Yardstick:
        if self.mode is not None:
            return self.mode
        explicit = self.atol is not None or self.rtol is not None
        return Yardstick.TOLERANCE if explicit else Yardstick.BUDGET

    @field_validator("shapes")
    @classmethod
    def _positive(cls, value: list[tuple[int, int]] | None) -> list[tuple[int, int]] | None:
        if value is not None:
            if not value:
                raise ValueError("must list at least one shape, or be left out")
            for shape in value:
                if min(shape) < 1 or max(shape) > 65536:
                    raise ValueError(f"{list(shape)} has a dimension outside 1..65536")
        return value


class LmHead(str, Enum):
    """How int4 stores a language model's vocabulary projection (`QuantizeConfig.lm_head`)."""

    INT4 = "int4"
    INT8 = "int8"
    FLOAT = "float"


class QuantizeConfig(_Strict):
    """How the quantized variant is made (see `onnxport.passes.quantize`)."""

    per_channel: bool = False
    reduce_range: bool = False
    nodes_to_exclude: list[str] = Field(default_factory=list)
    """Node names left in float; a failed gate's message suggests which."""
    op_types: list[str] | None = None
    """Operator types to quantize; None: onnxruntime's defaults."""
    calibration_file: Path | None = None
    """Static quantization's samples: plain text, one per line, or JSON lines (`text`, or
    `words` as in an eval file); None: `validation.eval_file`'s texts, else built-in text."""
    calibration_samples: int = Field(DEFAULT_CALIBRATION_SAMPLES, ge=1, le=10000)
    on_failure: Literal["fail", "skip"] = "fail"
    """A variant under its accuracy gate fails the conversion, or is skipped (not published,
    recorded in the manifest) while the fp32 model is published."""
    search_budget_seconds: float = Field(DEFAULT_SEARCH_BUDGET_SECONDS, gt=0)
    """`quantization: auto`: no new candidate is tried once the search has run this long."""
    max_excluded_nodes: int = Field(DEFAULT_MAX_EXCLUDED_NODES, ge=0, le=100)
    """`quantization: auto`: at most this many nodes left in float per candidate setting."""
    block_size: int = DEFAULT_BLOCK_SIZE
    """int4, int8-weights: weights per quantization block (a scale and zero point each); a
    power of 2, 16 or more."""
    symmetric: bool = False
    """int4, int8-weights: blocks without a zero point (see `passes.weight_only`)."""
    accuracy_level: int = Field(DEFAULT_ACCURACY_LEVEL, ge=0, le=4)
    """int4, int8-weights: MatMulNBits' compute type; 0: the input's type, 1: fp32, 2: fp16,
    3: bf16, 4: int8 (the fast one on CPU)."""
    lm_head: LmHead = LmHead.INT8
    """int4, int8-weights: how the MatMul that makes the logits is stored: `int4` like the
    others (int8-weights: in 8 bits), `int8` (MatMulNBits with 8 bits), or `float`. The
    vocabulary projection decides the next token most directly, and a tied one is the
    embedding's weight."""

    @field_validator("block_size")
    @classmethod
    def _power_of_two(cls, value: int) -> int:
        if value < 16 or value & (value - 1):
            raise ValueError("must be a power of 2, at least 16 (MatMulNBits' blocks)")
        return value


class SourceConfig(_Strict):
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


class ExecutionConfig(_Strict):
    timeout_seconds: float = Field(DEFAULT_TIMEOUT_SECONDS, gt=0)
    isolate_export: IsolateExport = IsolateExport.AUTO
    export_cache: bool = True
    """Take the graph from the export cache when it holds this architecture's, binding this
    checkpoint's weights into it (`onnxport.export.cache`); false: always export."""


class ConversionConfig(_Strict):
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


class ExperimentConfig(_Strict):
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
