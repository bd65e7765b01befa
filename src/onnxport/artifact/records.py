"""The one set of typed records: each stage returns its record, the manifest is made of them,
and nothing edits one afterwards (they are frozen). Adding a manifest field is one edit here.

Other tools read `manifest.json`, so keys are only ever added, never renamed; a record keeps
keys it does not know (a newer onnxport's), so reading and writing back loses nothing.
This module imports no torch and no ONNX Runtime: a server reads these records too.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, computed_field

from onnxport.names import StrEnum, Variant
from onnxport.request.config import Exporter

PYTORCH = "pytorch"
SIZED_POSITION_EMBEDDINGS = "the model's position embeddings are sized for it"
"""Why a resolution is fixed when PyTorch refuses other sizes (ViT), and in manifests
written before the reason was recorded."""
"""The benchmark's name for PyTorch eager, the reference of every speed-up."""


class Record(BaseModel):
    # A field whose key predates its name (`alias`) is written under its key and read under
    # either.
    model_config = ConfigDict(
        extra="allow",
        frozen=True,
        ser_json_inf_nan="strings",
        serialize_by_alias=True,
        validate_by_alias=True,
        validate_by_name=True,
    )


# ------------------------------------------------------------------------------ load, export


class Pooling(str, Enum):
    """How token vectors become one sentence vector (feature extraction)."""

    MEAN = "mean"
    """The mean of the token vectors under the attention mask (sentence-transformers' way)."""
    CLS = "cls"
    """The first token's vector."""
    MAX = "max"
    """The largest value of each dimension over the tokens under the attention mask."""


class SentenceEmbeddingRecord(Record):
    """What `SentenceTransformer.encode` does after the transformer, as a sentence-transformers
    checkpoint's `modules.json` names it (`onnxport.sources.sentence_embedding`): the
    predictor computes the same sentence vectors from the ONNX model's token vectors."""

    pooling: Pooling
    """The Pooling module's mode (its `config.json`)."""
    normalize: bool = False
    """A Normalize module follows: vectors are scaled to unit length."""
    max_seq_length: int | None = None
    """The most tokens the checkpoint reads a text with (`sentence_bert_config.json`); None:
    the model's maximum."""


class SourceKind(StrEnum):
    """Which loader read the checkpoint (`onnxport.sources`)."""

    HUGGINGFACE = "huggingface"
    TORCH_EXPORT = "torch-export"
    TORCHSCRIPT = "torchscript"
    STATE_DICT = "state-dict"


class SourceRecord(Record):
    path: str
    kind: SourceKind
    task: str
    architecture: str
    model_type: str | None = None
    num_parameters: int = 0
    weights_sha256: dict[str, str] = Field(default_factory=dict)
    fixed_resolution: list[int] | None = None
    """[height, width]: the only image size the graph takes (`fixed_resolution_reason` says
    why); None: any size, or not images."""
    fixed_resolution_reason: str | None = None
    """Why the resolution is fixed: PyTorch refuses other sizes, or the graph exported with
    height and width dynamic refused them (a size fixed inside it at export)."""

    sentence_embedding: SentenceEmbeddingRecord | None = None
    """A sentence-transformers checkpoint's pooling and normalization; None: not one."""

    def why_fixed(self) -> str:
        """Why the resolution is fixed, for a message."""
        return self.fixed_resolution_reason or SIZED_POSITION_EMBEDDINGS


class AttemptRecord(Record):
    """One exporter's try: whether it produced the model, and why not."""

    exporter: Exporter
    ok: bool
    error: str | None = None
    seconds: float = 0.0


class CacheStatus(StrEnum):
    """What the export cache did for a conversion."""

    HIT = "hit"
    """The graph came from the cache and this checkpoint's weights were bound into it."""
    MISS = "miss"
    """Exported (and stored, when `ExportCacheRecord.stored`)."""
    REFRESH = "refresh"
    """Exported whatever the cache held (`ConversionRequest.refresh_export_cache`), then
    stored."""
    OFF = "off"
    """Not used (`execution.export_cache: false`, or a cache that cannot be used)."""
    UNSUPPORTED = "unsupported"
    """A source or exporter whose graph the cache cannot hold."""


class ExportCacheRecord(Record):
    """What the export cache did for this conversion (`onnxport.export.cache`)."""

    status: CacheStatus
    key: str | None = None
    """The entry's key: a digest of what decides the graph (config, task, settings, versions)."""
    created_at: str | None = None
    """When the entry used or stored was made."""
    versions: dict[str, str] = Field(default_factory=dict)
    """The library versions the entry was made with."""
    stored: bool = False
    reason: str | None = None
    """Why the cache was not used, or why its entry was made again (a damaged one)."""


class ExportRecord(Record):
    exporter: Exporter
    """The exporter that produced the model."""
    opset: int
    seconds: float
    attempts: list[AttemptRecord]
    cache: ExportCacheRecord | None = None
    """Whether the graph came from the export cache."""


class PassRecord(Record):
    """One pass from one ONNX file to the next (`onnxport.passes`)."""

    name: str
    seconds: float = 0.0
    nodes_before: int | None = None
    nodes_after: int | None = None
    details: dict[str, Any] = Field(default_factory=dict)


# ------------------------------------------------------------------------------ validation


class InputRecord(Record):
    """One input a graph declares: each dimension a size fixed at export, or the name of one
    that varies (`batch`, `sequence`, `height`, `width`)."""

    name: str
    dtype: str
    shape: list[int | str]


class ErrorBudgetRecord(Record):
    """One output at one validation input, against PyTorch in float64 (the exact answer):
    ONNX's float32 error, PyTorch's own, and how many times PyTorch's ONNX's is
    (`onnxport.verify.compare.error_budget`)."""

    shape: list[int]
    onnx_max: float
    onnx_rms: float
    pytorch_max: float
    pytorch_rms: float
    ratio: float


class OutputComparisonRecord(Record):
    """One output of the ONNX model against PyTorch's, over every validation shape."""

    max_abs_diff: float
    max_rel_diff: float
    atol: float
    rtol: float
    passed: bool
    worst_shape: list[int] = Field(default_factory=list)
    """The (batch, size) pair of the validation input with the largest difference."""
    budget: list[ErrorBudgetRecord] = Field(default_factory=list)
    """Per validation input, the errors against float64; empty where float64 did not run."""
    max_error_ratio: float | None = None
    """The budget's limit when it judged this output (`validation.max_error_ratio`); None
    when the tolerance did, or the figures are recorded only (a quantized variant)."""

    @property
    def error_ratio(self) -> float | None:
        """The worst ratio over the validation inputs."""
        return max((b.ratio for b in self.budget), default=None)


class YardstickRecord(Record):
    """What judged the values of a model against PyTorch's: the error budget against float64,
    or the tolerance against PyTorch's float32 answer (with why)."""

    mode: str
    """`budget` or `tolerance`."""
    reason: str | None = None
    """Why the tolerance judged: set in the config, or float64 could not run (and why)."""


class TaskAgreementRecord(Record):
    metric: str
    value: float
    minimum: float
    passed: bool


class TaskMetricRecord(Record):
    """The task metric on the labelled evaluation set (`validation.eval_file`)."""

    metric: str
    value: float
    pytorch: float
    max_drop: float
    passed: bool
    examples: int


class GreedyDivergenceRecord(Record):
    """Where the ONNX model's greedy tokens first differ from PyTorch's, for one prompt."""

    prompt: int
    """Which of the proof's prompts (0-based)."""
    step: int
    """The first new token that differs (0-based)."""
    pytorch_token: int
    onnx_token: int
    pytorch_margin: float
    """PyTorch's logit of its token minus its second best there: a margin within the
    float32 error is a near-tie that any rounding may flip, a large one a bug."""
    onnx_margin: float
    """The ONNX model's logit of its own token minus its logit of PyTorch's token."""


class GenerationProofRecord(Record):
    """Greedy generation, token by token against transformers' `generate()`."""

    prompts: int
    new_tokens: int
    """The most new tokens asked per prompt (`validation.generate_tokens`)."""
    identical: int
    """The prompts whose tokens are all PyTorch's."""
    chat_template: bool
    passed: bool
    divergences: list[GreedyDivergenceRecord] = Field(default_factory=list)


class NextTokenRecord(Record):
    """A language model variant on real text, teacher-forced, against the fp32 model
    (`verify.next_token`): next-token argmax agreement and perplexity."""

    agreement: float
    min_agreement: float
    perplexity: float
    fp32_perplexity: float
    max_increase: float
    """The relative perplexity increase allowed (0.05: 5%)."""
    texts: int
    positions: int
    passed: bool

    @property
    def increase(self) -> float:
        return self.perplexity / self.fp32_perplexity - 1.0

    def summary(self) -> str:
        """The figures in a line, as the tables show them."""
        return (
            f"next token {self.agreement:.4f} (min {self.min_agreement:g}), perplexity "
            f"{self.increase:+.1%} (max {self.max_increase:+.0%}) on {self.texts} texts"
        )


class ValidationRecord(Record):
    passed: bool
    shapes: list[list[int]]
    """The validation settings' (batch, size) pairs: size is the sequence length for text,
    the image side for images. The inputs' own shapes are `input_shapes`."""
    input_shapes: list[dict[str, list[int]]] = Field(default_factory=list)
    """Per validation input, the full shape of every model input (`[2, 3, 224, 224]`); empty
    in manifests written before onnxport recorded it."""
    graph_inputs: list[InputRecord] = Field(default_factory=list)
    """The inputs the validated graph declares."""
    runtime_errors: list[str] = Field(default_factory=list)
    """ONNX Runtime's own words, per validation input the graph could not run (the
    failures say it in the user's terms)."""
    outputs: dict[str, OutputComparisonRecord]
    yardstick: YardstickRecord | None = None
    """What judged the values (None in manifests written before the error budget)."""
    task_agreement: TaskAgreementRecord
    task_metric: TaskMetricRecord | None = None
    generation: GenerationProofRecord | None = None
    next_token: NextTokenRecord | None = None
    """Text generation variants: the figures on real text that judged them."""
    elementwise_gate: bool = True
    failures: list[str] = Field(default_factory=list)
    seconds: float = 0.0


class NodeDivergenceRecord(Record):
    """One ONNX node's output against its reference (PyTorch's value, or the fp32 model's)."""

    value: str
    node: str
    op_type: str
    module: str | None
    max_abs_diff: float
    max_rel_diff: float
    input_max_abs_diff: float
    """The largest error among its compared inputs: small means this node introduced it."""
    relative_l2: float | None = None
    """||actual - expected|| / ||expected||: how much of the value is lost (variants)."""
    input_relative_l2: float | None = None
    """The largest `relative_l2` among its compared inputs (variants)."""
    error_ratio: float | None = None
    """Its error against PyTorch in float64 in multiples of PyTorch's own float32 error at
    the same node (`onnxport.verify.compare.error_budget`); None when the tolerance judged."""
    onnx_max: float | None = None
    onnx_rms: float | None = None
    pytorch_max: float | None = None
    pytorch_rms: float | None = None
    input_error_ratio: float | None = None
    """The largest `error_ratio` among its compared inputs: within the limit means this node
    introduced the error."""


class DivergenceRecord(Record):
    """Where a failed model parts ways with its reference (`onnxport.verify.divergence`)."""

    against: str
    """`pytorch`, or `fp32-onnx` for a variant."""
    shape: list[int]
    compared: int
    first: NodeDivergenceRecord | None
    following: list[NodeDivergenceRecord] = Field(default_factory=list)
    atol: float | None = None
    rtol: float | None = None
    """The tolerance, when it judged the values."""
    max_error_ratio: float | None = None
    """The error budget's limit (`validation.max_error_ratio`), when it judged the values."""
    suggestion: str | None = None
    note: str | None = None
    seconds: float = 0.0
    exclude: list[str] = Field(default_factory=list)

    def summary(self) -> str:
        """One line for the error message of a failed conversion."""
        if self.first is None:
            return f"no single diverging node found ({self.note or f'compared {self.compared}'})"
        f = self.first
        where = f"{f.op_type}, {f.module}" if f.module else f.op_type
        if self.against == "fp32-onnx":
            line = (
                f"the variant loses the most at node {f.node} ({where}): relative error "
                f"{f.relative_l2 or 0.0:.2g} against the fp32 model, from inputs at "
                f"{f.input_relative_l2 or 0.0:.2g}"
            )
            return line + (f"; try {self.suggestion}" if self.suggestion else "")
        if self.max_error_ratio is not None:
            ratio = f.error_ratio or 0.0
            times = f"{ratio:.0f}" if ratio >= 10 else f"{ratio:.2g}"
            line = (
                f"first divergence at node {f.node} ({where}): error {times}x PyTorch's own "
                f"(limit {self.max_error_ratio:g})"
            )
        else:
            line = (
                f"first divergence at node {f.node} ({where}): max abs {f.max_abs_diff:.2g} "
                f"vs tolerance {self.atol or 0.0:g}"
            )
        return line + (f"; {self.suggestion}" if self.suggestion else "")


class SmokeTestRecord(Record):
    passed: bool
    output_shapes: dict[str, list[int]] = Field(default_factory=dict)
    problems: list[str] = Field(default_factory=list)
    seconds: float = 0.0


# ---------------------------------------------------------------------------------- search


class CandidateRecord(Record):
    """One setting the search tried (`passes.search`): what it was, what the gate said, and
    how fast it ran here."""

    name: str
    settings: dict[str, Any] = Field(default_factory=dict)
    excluded_nodes: list[str] = Field(default_factory=list)
    """Nodes left in float (quantization)."""
    passed: bool
    agreement: float | None = None
    """The task-level agreement with PyTorch the gate judged."""
    task_metric: float | None = None
    next_token: NextTokenRecord | None = None
    """A language model's figures on real text, which judged it (`verify.next_token`)."""
    failures: list[str] = Field(default_factory=list)
    latency_ms: dict[str, float] = Field(default_factory=dict)
    """Median latency per input shape (`1x128`, `1x3x224x224`), batch 1, measured interleaved."""
    chosen: bool = False
    seconds: float = 0.0


class SearchRecord(Record):
    """How a published model was chosen among candidates measured on this machine."""

    target: str
    """`optimize` (the fp32 graph), `int8` (its settings) or `weight-only` (a language
    model's `int8-weights` and `int4`)."""
    candidates: list[CandidateRecord]
    chosen: str | None
    threads: int
    """The intra-op threads the latencies were measured with."""
    seconds: float = 0.0
    note: str | None = None
    """Why the search stopped early (its time budget), if it did."""


# ---------------------------------------------------------------------------------- outputs


class OutputRecord(Record):
    """One model the conversion made: the gate's verdict on it, and once published, its file
    facts and smoke test."""

    file: str
    variant: Variant
    published: bool = True
    sha256: str | None = None
    size_bytes: int | None = None
    data_file: str | None = None
    data_sha256: str | None = None
    data_size_bytes: int | None = None
    passes: list[PassRecord] = Field(default_factory=list)
    validation: ValidationRecord | None = None
    divergence: DivergenceRecord | None = Field(None, alias="localization")
    """Where a refused model diverges from its reference."""
    smoke_test: SmokeTestRecord | None = None
    search: SearchRecord | None = None
    """The candidates measured and judged when the model was chosen by a search."""

    @property
    def total_size_bytes(self) -> int | None:
        """The model file and its external data file together: what the variant weighs."""
        if self.size_bytes is None:
            return None
        return self.size_bytes + (self.data_size_bytes or 0)


# ----------------------------------------------------------------------------------- verify


class VerifiedModelRecord(Record):
    """One ONNX model proven again against its checkpoint (`onnxport verify`), by the rules
    of a conversion: the fp32 model's values and task agreement, a variant's task agreement."""

    file: str
    variant: Variant
    proven: bool
    validation: ValidationRecord
    divergence: DivergenceRecord | None = Field(None, alias="localization")
    """Where a refused model diverges from PyTorch (or a variant from the fp32 model)."""

    def refusal(self) -> str:
        """Why it was refused, on one line: the failures, then where it diverges."""
        failures = self.validation.failures
        found = failures[0] if failures else "refused"
        if len(failures) > 1:
            found += f" (and {len(failures) - 1} more)"
        if self.divergence is not None:
            found += f"; {self.divergence.summary()}"
        return f"{self.file} ({self.variant}): {found}"


class VerificationRecord(Record):
    """`onnxport verify`: a published directory's checksums, then the proof of each of its
    models; or the proof of one ONNX file, against a checkpoint."""

    target: str
    """The directory or the ONNX file verified."""
    against: str
    """The checkpoint the models were proven against."""
    files: int = 0
    """How many files were checked against the manifest's checksums (0: an ONNX file)."""
    checksum_problems: list[str] = Field(default_factory=list)
    """Files of the directory missing or unlike their checksum; the models are then not run
    (their numbers would prove nothing about the files the manifest proved)."""
    models: list[VerifiedModelRecord] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)
    """How a file made elsewhere was fitted to the checkpoint (names matched by order,
    validation shapes set to the sizes the graph fixes), and what else a reader should know."""

    @computed_field  # type: ignore[prop-decorator]
    @property
    def proven(self) -> bool:
        """Intact, and every model proven."""
        return (
            not self.checksum_problems and bool(self.models) and all(m.proven for m in self.models)
        )


# -------------------------------------------------------------------------------- benchmark


class MachineRecord(Record):
    """The machine a measurement was taken on: a measured choice is only true for it."""

    cpu_model: str
    logical_cpus: int
    isa: list[str] = Field(default_factory=list)
    """The x86 instruction sets that decide the kernels used (avx2, avx512_vnni, amx...)."""
    machine: str = ""


class BenchmarkSettingsRecord(Record):
    batch_sizes: list[int]
    seq_lengths: list[int]
    threads: int
    iterations: int
    warmup: int
    seed: int = 0
    onnx_spinning: bool = False


class RuntimeRecord(Record):
    """One runtime: what it costs to load and hold, whatever the input shape."""

    name: str
    """`pytorch`, or the ONNX variant (`fp32`, `int8`, ...)."""
    engine: str
    """`pytorch-eager` or `onnxruntime`."""
    file: str | None
    size_bytes: int
    """The ONNX file with its external data; for PyTorch, the checkpoint's weight files."""
    load_seconds: float
    """Session creation; for PyTorch, loading the checkpoint (model and tokenizer)."""
    rss_growth_mb: float | None = None
    """Growth of the process's resident memory over loading and warm-up at the largest
    shape. Not an isolated peak: memory that another runtime freed may be reused."""


class TimingRecord(Record):
    """One runtime on one input shape."""

    runtime: str
    batch_size: int
    size: int
    iterations: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    throughput: float
    """Samples per second at the median latency: batch_size / p50."""


class BenchmarkRecord(Record):
    """`onnxport benchmark`'s figures: every runtime on every shape, measured interleaved."""

    settings: BenchmarkSettingsRecord
    runtimes: list[RuntimeRecord]
    timings: list[TimingRecord]
    size_name: str
    """`sequence length`, or `image size` for vision models."""
    inputs: str
    """How the inputs were made: tokenized sample text, generated ids, random pixels."""
    machine: dict[str, Any]
    versions: dict[str, str]
    created_at: str
    seconds: float
    unstable: list[str] = Field(default_factory=list)
    """Why the figures are the machine's noise rather than the models' (a wide spread, a
    larger input faster than a smaller one); empty when they are consistent. No speed-up is
    claimed from unstable figures."""

    def timing(self, runtime: str, batch_size: int, size: int) -> TimingRecord | None:
        key = (runtime, batch_size, size)
        return next((t for t in self.timings if (t.runtime, t.batch_size, t.size) == key), None)

    def speedup(self, timing: TimingRecord) -> float | None:
        """PyTorch's median latency over this one's, on the same shape (2.0: twice as fast);
        None without a reference, or from unstable figures."""
        reference = self.timing(PYTORCH, timing.batch_size, timing.size)
        if reference is None or timing.p50_ms <= 0 or self.unstable:
            return None
        return reference.p50_ms / timing.p50_ms
