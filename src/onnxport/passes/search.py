"""Find the fastest model that passes the proof, on this machine.

`optimize: auto` makes the fp32 graph at every optimization level, puts each through the gate
and keeps the fastest that passes. `quantization: auto` tries int8 settings (dynamic
per-tensor, dynamic per-channel, static QDQ per-channel calibrated on real text); when one
fails the gate it leaves in float the node the divergence search blames and tries again,
within `quantize.max_excluded_nodes` and `quantize.search_budget_seconds`; it keeps the
fastest that passes. For a decoder LM it tries the weight-only variants instead, `int8-weights`
and `int4`, judged on real text like an explicit one, and publishes the fastest that passes
under its own name (`quantize_search` says which candidates a task gets). Every candidate
goes through the one gate (`verify.gate`), unchanged: the search looks for a model that
passes, it never lowers the bar. Latency is measured interleaved, batch 1, at the validation
lengths, with the benchmark's threads (a language model's: decoding, `Timer.decode`).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import onnxruntime as ort

from onnxport.artifact.files import copy_model, data_file_of, move_model, remove_model
from onnxport.artifact.records.export import PassRecord
from onnxport.artifact.records.outputs import CandidateRecord, OutputRecord, SearchRecord
from onnxport.errors import ValidationError
from onnxport.names import Variant
from onnxport.passes.base import OnnxPass, PassContext, apply_pass
from onnxport.passes.optimize import OptimizePass
from onnxport.passes.quantize import DynamicInt8Pass, StaticInt8Pass
from onnxport.passes.weight_only import Int4Pass, Int8WeightsPass
from onnxport.request.export_config import OptimizeLevel
from onnxport.request.quantize_config import QuantizeConfig
from onnxport.tasks import Task
from onnxport.verify.gate import Candidate, DivergenceSearch, Rules, judge, refusal
from onnxport.verify.rules import FLOAT_LM_HEAD, SKIP_THE_VARIANT, SMALLER_BLOCKS
from onnxport.verify.runtime import create_session, session_options
from onnxport.verify.timing import measure_interleaved, open_onnx
from onnxport.verify.validate import Reference

logger = logging.getLogger(__name__)

TIMING_ITERATIONS = 30
"""Interleaved runs per candidate and shape. Levels a few percent apart need this many on a
shared 2-core machine: with 10, `basic` beat `extended` on DistilBERT-base by 2% at 1x128 in
one search, while 200 runs (benchmarks/variant_search.py) put `extended` 5% ahead."""
TIMING_WARMUP = 3
DECODE_ROUNDS = 5
"""Interleaved generations per candidate, when a language model is timed decoding."""

Decode = Callable[[ort.InferenceSession], int]
"""A short greedy generation, batch 1, in the session; returns the tokens it made."""


class QuantizeSetting(Protocol):
    """One kind of candidate the quantization search makes."""

    @property
    def name(self) -> str: ...
    @property
    def variant(self) -> Variant:
        """The name it is published as (and its file's, `output.filename`)."""
        ...

    @property
    def static(self) -> bool:
        """Whether its pass needs the calibration samples."""
        ...

    def onnx_pass(self) -> OnnxPass: ...
    def configure(self, settings: QuantizeConfig, excluded: list[str]) -> QuantizeConfig: ...
    def recorded(self, settings: QuantizeConfig) -> dict[str, object]: ...


@dataclass(frozen=True)
class Int8Setting:
    name: str
    static: bool
    per_channel: bool
    op_types: tuple[str, ...] | None = None
    """What to quantize when the user names nothing; None: onnxruntime's defaults."""
    variant: Variant = Variant.INT8

    def onnx_pass(self) -> OnnxPass:
        return StaticInt8Pass() if self.static else DynamicInt8Pass()

    def configure(self, settings: QuantizeConfig, excluded: list[str]) -> QuantizeConfig:
        return settings.model_copy(
            update={
                "per_channel": self.per_channel,
                "nodes_to_exclude": list(excluded),
                "op_types": settings.op_types or self.op_types,
            }
        )

    def recorded(self, settings: QuantizeConfig) -> dict[str, object]:
        return {
            "static": self.static,
            "per_channel": self.per_channel,
            "op_types": list(settings.op_types or []),
        }


@dataclass(frozen=True)
class WeightOnlySetting:
    """A decoder LM's weight-only variant, made as the explicit one is (the user's
    `quantize.block_size`, `symmetric`, `lm_head`)."""

    variant: Variant
    make: type[Int4Pass] | type[Int8WeightsPass]
    static: bool = False

    @property
    def name(self) -> str:
        return str(self.variant)

    def onnx_pass(self) -> OnnxPass:
        return self.make()

    def configure(self, settings: QuantizeConfig, excluded: list[str]) -> QuantizeConfig:
        return settings.model_copy(update={"nodes_to_exclude": list(excluded)})

    def recorded(self, settings: QuantizeConfig) -> dict[str, object]:
        return {
            "bits": self.make.bits,
            "block_size": settings.block_size,
            "symmetric": settings.symmetric,
            "lm_head": settings.lm_head.value,
        }


INT8_SETTINGS: tuple[QuantizeSetting, ...] = (
    Int8Setting("dynamic per-tensor", static=False, per_channel=False),
    Int8Setting("dynamic per-channel", static=False, per_channel=True),
    # Static QDQ of every op type puts the residual Adds and LayerNorms of a transformer in
    # int8 too, which costs it the most accuracy (a sentence encoder: cosine 0.58); its
    # MatMuls carry the speed-up.
    Int8Setting("static QDQ per-channel", static=True, per_channel=True, op_types=("MatMul",)),
)
WEIGHT_ONLY_SETTINGS: tuple[QuantizeSetting, ...] = (
    WeightOnlySetting(Variant.INT8_WEIGHTS, Int8WeightsPass),
    WeightOnlySetting(Variant.INT4, Int4Pass),
)
"""fp16 is not a candidate: it is the variant for GPU serving, and the search times on ONNX
Runtime's CPU provider (`verify.runtime.PROVIDERS`), where its ranking would say nothing
about the device it is for; an explicit `quantization: fp16` still makes it."""


@dataclass(frozen=True)
class QuantizeSearch:
    """The candidates `quantization: auto` tries, in order, and what to try when none
    passes."""

    target: str
    """What the search record and its refusal call the candidates."""
    settings: tuple[QuantizeSetting, ...]
    remedies: tuple[str, ...]
    leave_in_float: bool = True
    """Whether a failed candidate is tried again with the node the divergence search blames
    left in float. That search blames by the validation inputs' values, which judge int8
    candidates; a weight-only candidate is judged by its next tokens on real text, which a
    few float MatMuls do not restore (SmolLM2-135M int4: agreement 0.652, then 0.658, 0.656,
    0.652 and 0.653 with 1 to 4 left in float, 60 s of a 71 s search)."""


INT8_SEARCH = QuantizeSearch(
    "int8",
    INT8_SETTINGS,
    (SKIP_THE_VARIANT, "a larger quantize.max_excluded_nodes or quantize.search_budget_seconds"),
)
WEIGHT_ONLY_SEARCH = QuantizeSearch(
    "weight-only",
    WEIGHT_ONLY_SETTINGS,
    (SKIP_THE_VARIANT, SMALLER_BLOCKS, FLOAT_LM_HEAD),
    leave_in_float=False,
)


def quantize_search(task: Task) -> QuantizeSearch:
    """Which candidates `quantization: auto` tries for `task`: a decoder LM's weight-only
    variants (dynamic int8 quantizes its outlier activations per tensor and loses its next
    tokens: SmolLM2-135M keeps 0.57 of them), any other model's int8 settings."""
    return WEIGHT_ONLY_SEARCH if task is Task.TEXT_GENERATION else INT8_SEARCH


OPTIMIZE_LEVELS = (OptimizeLevel.NONE, OptimizeLevel.BASIC, OptimizeLevel.EXTENDED)


@dataclass(frozen=True)
class Timer:
    """How candidates are timed: interleaved, batch 1 of each reference input; a language
    model (`decode`) by what its users wait for, the time per generated token."""

    references: Sequence[Reference]
    threads: int
    decode: Decode | None = None
    decode_label: str = "decode"

    def latencies(self, models: dict[str, Path]) -> dict[str, dict[str, float]]:
        """Median milliseconds per model and batch-1 input shape (`1x128`, `1x3x224x224`);
        with `decode`, median milliseconds per generated token, under `decode_label`."""
        if self.decode is not None:
            return self._decoding(models, self.decode)
        runtimes = [open_onnx(name, path, threads=self.threads) for name, path in models.items()]
        inputs = {
            "x".join(str(n) for n in (1, *next(iter(r.inputs.values())).shape[1:])): {
                k: np.ascontiguousarray(v[:1]) for k, v in r.inputs.items()
            }
            for r in self.references
        }
        shapes = [(1, i) for i in range(len(inputs))]
        keyed = list(inputs.values())
        timings = measure_interleaved(
            runtimes,
            shapes,
            lambda _, i: keyed[i],
            iterations=TIMING_ITERATIONS,
            warmup=TIMING_WARMUP,
        )
        names = list(inputs)
        found: dict[str, dict[str, float]] = {name: {} for name in models}
        for t in timings:
            found[t.runtime][names[t.size]] = t.p50_ms
        return found

    def _decoding(self, models: dict[str, Path], decode: Decode) -> dict[str, dict[str, float]]:
        options = session_options(threads=self.threads, spinning=False)
        sessions = {name: create_session(path, options) for name, path in models.items()}
        for session in sessions.values():
            decode(session)  # warm-up: the first run allocates and picks kernels
        per_token: dict[str, list[float]] = {name: [] for name in sessions}
        names = list(sessions)
        for round_ in range(DECODE_ROUNDS):
            # Rotating order: the machine's drift hits every candidate alike.
            for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
                started = time.perf_counter()
                tokens = decode(sessions[name])
                per_token[name].append((time.perf_counter() - started) * 1000 / max(tokens, 1))
        return {name: {self.decode_label: float(np.median(ms))} for name, ms in per_token.items()}


@dataclass(frozen=True)
class SearchContext:
    """What every candidate of a search is made, judged and timed with."""

    context: PassContext
    references: Sequence[Reference]
    task: Task
    rules: Rules
    timer: Timer
    divergence_search: DivergenceSearch | None

    def judge(self, candidate: Candidate, *, search_divergence: bool = True) -> OutputRecord:
        """The one gate, unchanged; a failing candidate is recorded, not raised: the search
        goes on to the next. Its refusal is logged at INFO: the manifest and the report list
        every candidate, and a search that then succeeds has nothing to warn of."""
        return judge(
            candidate,
            self.references,
            task=self.task,
            rules=dataclasses.replace(self.rules, on_failure="skip"),
            divergence_search=self.divergence_search if search_divergence else None,
            skip_log_level=logging.INFO,
        )


def _fastest(latencies: dict[str, dict[str, float]]) -> str:
    """The candidate with the smallest total of medians over the shapes (for a language
    model, the most tokens per second decoding: `Timer.decode`)."""
    return min(latencies, key=lambda name: sum(latencies[name].values()))


@dataclass
class _Tried:
    """A candidate as the search goes; recorded once the choice is made."""

    name: str
    settings: dict[str, object]
    excluded: list[str]
    output: OutputRecord
    path: Path | None
    seconds: float
    final: Path
    """Where it is published if chosen."""

    def record(self, latency: dict[str, float], chosen: bool) -> CandidateRecord:
        validation = self.output.validation
        return CandidateRecord(
            name=self.name,
            settings=self.settings,
            excluded_nodes=self.excluded,
            passed=self.output.published,
            agreement=validation.task_agreement.value if validation else None,
            task_metric=validation.task_metric.value
            if validation and validation.task_metric
            else None,
            next_token=validation.next_token if validation else None,
            failures=list(validation.failures[:2]) if validation else [],
            latency_ms=latency,
            chosen=chosen,
            seconds=round(self.seconds, 3),
        )


def _finish(
    target: str,
    tried: list[_Tried],
    timer: Timer,
    started: float,
    note: str | None,
    keep: Path | None = None,
) -> tuple[_Tried | None, SearchRecord]:
    """Time the candidates that passed, publish the fastest under its `final` name, remove
    the others (but `keep`, which is copied if chosen), and record them all."""
    # Keyed by position: one setting is tried again with more nodes left in float.
    passing = {str(i): t for i, t in enumerate(tried) if t.output.published and t.path}
    latencies = timer.latencies({key: t.path for key, t in passing.items()}) if passing else {}
    chosen = passing[_fastest(latencies)] if passing else None
    for t in passing.values():
        if t is not chosen and t.path != keep:
            remove_model(t.path)
    if chosen is not None and chosen.path == keep:
        copy_model(chosen.path, chosen.final)  # the base of the variants stays
    elif chosen is not None:
        move_model(chosen.path, chosen.final)
    record = SearchRecord(
        target=target,
        candidates=[t.record(latencies.get(str(i), {}), t is chosen) for i, t in enumerate(tried)],
        chosen=chosen.name if chosen else None,
        threads=timer.threads,
        seconds=round(time.perf_counter() - started, 3),
        note=note,
    )
    if chosen is not None:
        logger.info("search (%s): %s, of %d candidates", target, chosen.name, len(tried))
    return chosen, record


def _figure(candidate: CandidateRecord) -> str:
    """The figure that judged a candidate: a language model's on real text, else the
    task-level agreement."""
    if candidate.next_token is not None:
        return f": {candidate.next_token.summary()}"
    return f": agreement {candidate.agreement:.4f}" if candidate.agreement is not None else ""


def _refusal(plan: QuantizeSearch, record: SearchRecord) -> ValidationError:
    tried = "; ".join(
        f"{c.name}"
        + (f" leaving {', '.join(c.excluded_nodes)} in float" if c.excluded_nodes else "")
        + _figure(c)
        for c in record.candidates
    )
    return ValidationError(
        f"no {plan.target} candidate passes the accuracy gate (tried {tried})"
        + (f"; {record.note}" if record.note else ""),
        hint="nothing was published; try " + ", or ".join(plan.remedies),
    )


def search_quantization(
    base: Path, publish_at: Callable[[Variant], Path], *, search: SearchContext
) -> OutputRecord:
    """The fastest variant made from `base` that passes the search's rules, of the
    candidates `quantize_search` gives the task, published at `publish_at(its variant)`.

    `search.divergence_search` finds where a candidate made from `base` diverges: the node
    it blames is left in float in the next try. Raises `ValidationError` with what was tried
    when none passes (unless `rules.on_failure` is `skip`: then the last record is returned
    unpublished).
    """
    plan = quantize_search(search.task)
    if not plan.leave_in_float:
        search = dataclasses.replace(search, divergence_search=None)
    settings = search.context.settings
    budget, most = settings.search_budget_seconds, settings.max_excluded_nodes
    started = time.perf_counter()
    tried: list[_Tried] = []
    note = None
    for setting in plan.settings:
        final = publish_at(setting.variant)
        excluded = list(settings.nodes_to_exclude)
        while True:
            if tried and time.perf_counter() - started > budget:
                note = f"the search stopped at its budget of {budget:g} s"
                break
            attempt = final.with_name(f".{final.stem}.candidate-{len(tried)}.onnx")
            try_started = time.perf_counter()
            candidate_settings = setting.configure(settings, excluded)
            pass_record = apply_pass(
                setting.onnx_pass(),
                base,
                attempt,
                dataclasses.replace(search.context, settings=candidate_settings),
            )
            output = search.judge(Candidate(setting.variant, attempt, (pass_record,)))
            tried.append(
                _Tried(
                    setting.name,
                    setting.recorded(candidate_settings),
                    list(excluded),
                    output,
                    attempt if output.published else None,
                    time.perf_counter() - try_started,
                    final,
                )
            )
            if not output.published:
                remove_model(attempt)
            blamed = _blamed(output)
            if output.published or blamed is None or blamed in excluded:
                break
            if len(excluded) - len(settings.nodes_to_exclude) >= most:
                break
            excluded.append(blamed)
        if note is not None:
            break
    chosen, record = _finish(plan.target, tried, search.timer, started, note)
    if chosen is not None:
        return chosen.output.model_copy(
            update={
                "file": chosen.final.name,
                "data_file": data_file_of(chosen.final),
                "search": record,
            }
        )
    if search.rules.on_failure == "skip":
        last = tried[-1]
        logger.warning("%s; it is not published", _refusal(plan, record).message)
        return last.output.model_copy(
            update={"file": last.final.name, "published": False, "search": record}
        )
    raise _refusal(plan, record)


def _blamed(output: OutputRecord) -> str | None:
    found = output.divergence
    return found.first.node if found is not None and found.first is not None else None


def search_optimization(exported: Path, final: Path, search: SearchContext) -> OutputRecord:
    """The fastest fp32 graph, at any optimization level, that passes the search's rules,
    published at `final`. Raises the gate's error for the graph as exported when no level
    passes."""
    started = time.perf_counter()
    tried: list[_Tried] = []
    for level in OPTIMIZE_LEVELS:
        # The graph as exported is judged where it is: it stays the base of the variants.
        path = exported
        try_started = time.perf_counter()
        passes: tuple[PassRecord, ...] = ()
        if level is not OptimizeLevel.NONE:
            path = final.with_name(f".{final.stem}.{level.value}.onnx")
            passes = (apply_pass(OptimizePass(level), exported, path, search.context),)
        # The divergence search compares with PyTorch: once, for the graph as exported.
        output = search.judge(
            Candidate(Variant.FP32, path, passes), search_divergence=level is OptimizeLevel.NONE
        )
        if not output.published and path != exported:
            remove_model(path)
        tried.append(
            _Tried(
                f"optimize: {level.value}",
                {"level": level.value},
                [],
                output,
                path if output.published else None,
                time.perf_counter() - try_started,
                final,
            )
        )
    chosen, record = _finish("optimize", tried, search.timer, started, None, keep=exported)
    if chosen is None:
        # The graph as exported fails: the conversion fails as it would without a search.
        raise refusal(tried[0].output, search.rules, where="at any optimization level")
    return chosen.output.model_copy(
        update={"file": final.name, "data_file": data_file_of(final), "search": record}
    )
