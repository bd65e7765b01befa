"""What proved a model computes what PyTorch computes: the values, the task, generation,
and the smoke test of a published file (`onnxport.verify`, `onnxport.testing`)."""

from __future__ import annotations

from pydantic import Field

from onnxport.artifact.records import Record


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


class SmokeTestRecord(Record):
    passed: bool
    output_shapes: dict[str, list[int]] = Field(default_factory=dict)
    problems: list[str] = Field(default_factory=list)
    seconds: float = 0.0
