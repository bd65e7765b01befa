"""Export a `Source` to an ONNX file: the strategies in order, first success wins.

Each strategy's attempt is recorded instead of raised, so that the manifest can say which
one produced the model and why the others did not.
"""

from __future__ import annotations

import errno
import logging
import re
import time
import warnings
from collections.abc import Callable
from pathlib import Path

from onnxport.artifact.records.export import AttemptRecord, ExportRecord
from onnxport.errors import ConfigError, ExportError, one_line
from onnxport.export.external_data import (
    wants_external_data,
    weights_bytes,
)
from onnxport.export.strategies import (
    DYNAMO_OPSETS,
    EXPORT_STRATEGIES,
    Exported,
    ExportOptions,
    ExportStrategy,
    adapter_for,
)
from onnxport.export.template import TemplateData, bind, state_tensors, template_from_bytes
from onnxport.export.workarounds import captured_stdout
from onnxport.request.export_config import DEFAULT_OPSET, Exporter, ExternalData, unsupported_opset
from onnxport.request.sections import SourceConfig
from onnxport.sources import load_source
from onnxport.sources.base import Source
from onnxport.tasks import Task

logger = logging.getLogger(__name__)


_CLASS_REPR = re.compile(r"<class '(?:\w+\.)*(\w+)'>")
# How each exporter names an operator it cannot convert: dynamo "op='aten.i0'" (or
# 'prims.bessel_i0' after decomposition), TorchScript "the operator 'aten::i0'".
_OPERATOR = re.compile(r"op='([\w.]+)'|operator '([\w:.]+)'")


def _exporter_error(error: BaseException) -> str:
    """An exporter's error on one line, after its type's name."""
    text = one_line(str(error), limit=None)
    # The dynamo exporter's message opens with generic next steps; its summary names the cause.
    _, summary, cause = text.partition("## Exception summary")
    if summary:
        text = _CLASS_REPR.sub(r"\1", cause)
    return f"{type(error).__name__}: {one_line(text)}"


def _report_deprecations(exporter: str, raised: list[warnings.WarningMessage]) -> None:
    """Say once that an exporter torch has deprecated made the model (the TorchScript-based
    one, since torch 2.9); the exporters' other warnings are about their internals."""
    deprecations = {str(w.message) for w in raised if issubclass(w.category, DeprecationWarning)}
    for message in sorted(m for m in deprecations if "ONNX export" in m):
        logger.warning("the %s exporter is deprecated by torch: %s", exporter, message[:200])
    for warning in raised:
        logger.debug("the %s exporter warned: %s", exporter, warning.message)


def _operators(attempts: list[AttemptRecord]) -> list[str]:
    found = {a or b for attempt in attempts for a, b in _OPERATOR.findall(attempt.error or "")}
    return sorted(found)


def _remove_new_files(directory: Path, before: set[Path]) -> None:
    for leftover in set(directory.iterdir()) - before:
        if leftover.is_file():
            leftover.unlink()


_DISK_FULL = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


def _disk_full(error: BaseException) -> OSError | None:
    """The OSError saying the disk (or the file size limit) is full, if that is the cause."""
    seen: BaseException | None = error
    for _ in range(10):  # exporters wrap the error they met
        if seen is None:
            return None
        if isinstance(seen, OSError) and seen.errno in _DISK_FULL:
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _attempt(
    strategy: ExportStrategy,
    source: Source,
    output_path: Path,
    options: ExportOptions,
) -> tuple[AttemptRecord, TemplateData | None]:
    """Run one strategy into `output_path`, which leaves the file as published models need
    it (checked, without this machine's paths, weights inline or in one `.data` file): its
    record, and the template it kept. A failure is recorded, its files removed; a full disk
    raises."""
    logger.info("exporting with the %s exporter (opset %d)", strategy.name, options.opset)
    t0 = time.perf_counter()
    before = set(output_path.parent.iterdir())
    try:
        with warnings.catch_warnings(record=True) as raised, captured_stdout():
            warnings.simplefilter("always")
            exported = strategy.run(source, output_path, options)
        _report_deprecations(strategy.name, raised)
    except Exception as e:  # every exporter failure is recorded, then the next one runs
        _remove_new_files(output_path.parent, before)
        full = _disk_full(e)
        if full is not None:  # another exporter would not find more room
            raise ExportError(
                f"cannot write the ONNX model into {output_path.parent}: {full.strerror}",
                hint="free space there, or raise the file size limit (ulimit -f)",
            ) from e
        logger.debug("the %s exporter failed", strategy.name)
        logger.warning("the %s exporter failed: %s", strategy.name, _exporter_error(e))
        seconds = round(time.perf_counter() - t0, 3)
        failed = AttemptRecord(
            exporter=strategy.name, ok=False, error=_exporter_error(e), seconds=seconds
        )
        return failed, None
    seconds = round(time.perf_counter() - t0, 3)
    record = AttemptRecord(
        exporter=strategy.name,
        ok=True,
        seconds=seconds,
        traced_layers=exported.traced_layers,
    )
    return record, exported.template


def export_to_onnx(
    source: Source | Path | str,
    output_path: Path,
    *,
    source_config: SourceConfig | None = None,
    opset_version: int = DEFAULT_OPSET,
    exporter: Exporter = Exporter.AUTO,
    external_data: ExternalData = ExternalData.AUTO,
    keep_debug_metadata: bool = False,
    repeat_layers: bool = True,
    keep_template: Callable[[TemplateData], None] | None = None,
) -> ExportRecord:
    """Export `source` to `output_path` with the first strategy that works; the record says
    which one made the model and why the others did not. External data, when the weights
    go there, is `<output_path>.data`.

    Args:
        source: the loaded model and its example inputs, or the path of a checkpoint (a
            directory or a file, as a training run wrote it), loaded by `load_source`.
        output_path: where the `.onnx` file goes; its directory must be empty or new, since
            external data files are written beside it.
        source_config: how a `source` given as a path is loaded (its task, pickled weights,
            a weights file's factory and input spec); by default `SourceConfig()`.
        opset_version: the ONNX opset to target.
        exporter: `auto` tries every strategy in order; otherwise only the one named.
        external_data: whether the weights go to `<output_path>.data` (`auto`: by size).
        keep_debug_metadata: keep the exporter's stack traces and source locations, which
            hold this machine's file paths (`export.metadata`); by default they are removed.
        repeat_layers: trace a decoder whose layers are alike with four of them and repeat
            the others (`export.layers`); False traces every layer.
        keep_template: receives the graph without weights the dynamo exporter made
            (`export.template`), when it made the model; the export cache keeps it.
    """
    if isinstance(source, Source):
        if source_config is not None:
            raise ConfigError(
                "source_config says how to load a source given as a path, and export_to_onnx "
                "was given a loaded Source",
                hint="pass the checkpoint path with source_config, or the Source alone",
            )
    else:
        # Loaded before anything is written: a path that holds no model leaves no directory.
        source = load_source(Path(source), source_config)
    output_path = Path(output_path)
    wanted = [s for s in EXPORT_STRATEGIES if exporter in (Exporter.AUTO, s.name)]
    if source.task is Task.TEXT_GENERATION:
        # The TorchScript tracer fixes the cache's lengths at the example's.
        wanted = [s for s in wanted if s.name is Exporter.DYNAMO]
        if not wanted:
            raise ConfigError(
                "the TorchScript exporter cannot keep a KV cache's lengths dynamic, and "
                "text-generation exports the cache",
                hint="set onnx.exporter to dynamo (or auto), or source.task to causal-lm for "
                "the logits alone",
            )
    refused = unsupported_opset(opset_version, [s.name for s in wanted])
    if refused is not None:
        # A setting the user can fix, found before any export work: bad input, not a failure.
        raise ConfigError(refused, hint=f"set onnx.opset_version to {DEFAULT_OPSET}")
    output_path.parent.mkdir(parents=True, exist_ok=True)
    external = wants_external_data(weights_bytes(source.module), external_data)
    attempts: list[AttemptRecord] = []
    started = time.perf_counter()
    for strategy in wanted:
        if opset_version not in strategy.opsets:
            attempts.append(
                AttemptRecord(
                    exporter=strategy.name,
                    ok=False,
                    error=unsupported_opset(opset_version, [strategy.name]),
                )
            )
            continue
        options = ExportOptions(
            opset=opset_version,
            external=external,
            keep_template=keep_template is not None,
            keep_debug_metadata=keep_debug_metadata,
            repeat_layers=repeat_layers,
        )
        attempt, kept = _attempt(strategy, source, output_path, options)
        attempts.append(attempt)
        if not attempt.ok:
            continue
        if kept is not None and keep_template is not None:
            keep_template(kept)
        seconds = time.perf_counter() - started
        logger.info("exported with %s in %.1f s to %s", strategy.name, seconds, output_path)
        return ExportRecord(
            exporter=strategy.name,
            opset=opset_version,
            seconds=round(seconds, 3),
            attempts=attempts,
        )
    reasons = "; ".join(f"{a.exporter}: {a.error}" for a in attempts)
    operators = _operators(attempts)
    if operators:
        raise ExportError(
            f"no exporter could convert {source.architecture}: unsupported operator"
            f"{'s' if len(operators) > 1 else ''} {', '.join(operators)} ({reasons})",
            hint="the TorchScript exporter knows more operators at higher opsets "
            "(onnx.exporter: torchscript, onnx.opset_version up to 20); otherwise replace the "
            "operator in the model",
        )
    raise ExportError(
        f"no exporter could convert {source.architecture}: {reasons}",
        hint="try another opset (onnx.opset_version) or exporter (onnx.exporter)",
    )


def export_from_template(
    source: Source,
    output_path: Path,
    template: TemplateData,
    *,
    opset_version: int = DEFAULT_OPSET,
    external_data: ExternalData = ExternalData.AUTO,
) -> AttemptRecord:
    """Write `source`'s weights into `template`, the graph a dynamo export of the same
    architecture with the same settings kept, and finish the file as `export_to_onnx` does.
    The record says whether it worked: a template that does not fit the weights fails."""

    def run(source: Source, path: Path, options: ExportOptions) -> Exported:
        # The template holds the debug metadata the export that made it kept (the cache's
        # key says which): nothing to strip.
        graph = template_from_bytes(template.graph, template.bindings)
        bind(graph, state_tensors(adapter_for(source)), path, external=options.external)
        return Exported()

    output_path = Path(output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    attempt, _ = _attempt(
        ExportStrategy(Exporter.DYNAMO, DYNAMO_OPSETS, run),
        source,
        output_path,
        ExportOptions(
            opset=opset_version,
            external=wants_external_data(weights_bytes(source.module), external_data),
        ),
    )
    return attempt
