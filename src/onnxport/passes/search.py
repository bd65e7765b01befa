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

from onnxport.artifact.files import copy_model, data_file_of, move_model, remove_model
from onnxport.artifact.records.export import PassRecord
from onnxport.artifact.records.outputs import CandidateRecord, OutputRecord, SearchRecord
from onnxport.errors import ValidationError
from onnxport.names import Variant
from onnxport.passes.base import PassContext, apply_pass
from onnxport.passes.candidates import OPTIMIZE_LEVELS, QuantizeSearch, quantize_search
from onnxport.passes.optimize import OptimizePass
from onnxport.passes.search_timing import Timer, fastest
from onnxport.request.export_config import OptimizeLevel
from onnxport.tasks import Task
from onnxport.verify.gate import Candidate, DivergenceSearch, Rules, judge, refusal
from onnxport.verify.validate import Reference

logger = logging.getLogger(__name__)


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
    chosen = passing[fastest(latencies)] if passing else None
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
