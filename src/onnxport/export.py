"""Export a `Source` to an ONNX file: an ordered tuple of strategies, first success wins.

The dynamo-based exporter (`torch.export`) goes first; the TorchScript-based exporter is the
fallback. Each strategy returns an `ExportAttempt` instead of raising, so that the manifest
can record which one produced the model and why the others did not.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import io
import logging
import os
import re
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch
from onnx.external_data_helper import ExternalDataInfo, uses_external_data

from onnxport.config import DEFAULT_OPSET, Exporter, ExternalData
from onnxport.errors import ConfigError, ExportError
from onnxport.sources.base import Source

logger = logging.getLogger(__name__)

# ONNX protobuf files cannot exceed 2 GiB; larger weights must go to `<model file>.data`.
EXTERNAL_DATA_THRESHOLD_BYTES = 2 * 1024**3 - 64 * 1024**2
DYNAMO_OPSETS = range(18, 24)
TORCHSCRIPT_OPSETS = range(7, 21)


@dataclass(frozen=True)
class ExportAttempt:
    exporter: str
    ok: bool
    error: str | None
    seconds: float


@dataclass(frozen=True)
class ExportResult:
    path: Path
    data_file: Path | None
    exporter: str
    opset: int
    seconds: float
    attempts: tuple[ExportAttempt, ...]


class ExportAdapter(torch.nn.Module):
    """Positional named inputs in, a tuple of named outputs out: one calling convention for
    every exporter and for the PyTorch reference that validation compares against."""

    def __init__(
        self, model: torch.nn.Module, input_names: tuple[str, ...], output_names: tuple[str, ...]
    ) -> None:
        super().__init__()
        self.model = model
        self.input_names = input_names
        self.output_names = output_names

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs = self.model(**dict(zip(self.input_names, args)))
        if isinstance(outputs, torch.Tensor):
            outputs = (outputs,)
        if isinstance(outputs, dict):  # transformers' ModelOutput is a dict
            return tuple(outputs[name] for name in self.output_names)
        return tuple(outputs)[: len(self.output_names)]


def adapter_for(source: Source) -> ExportAdapter:
    return ExportAdapter(source.module, source.input_names, source.output_names).eval()


def _weights_bytes(module: torch.nn.Module) -> int:
    tensors = list(module.parameters()) + list(module.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


def wants_external_data(weights_bytes: int, setting: ExternalData) -> bool:
    """Whether the weights go to `<file>.data`, by `output.external_data` and their size."""
    if weights_bytes > EXTERNAL_DATA_THRESHOLD_BYTES:
        if setting is ExternalData.NEVER:
            raise ConfigError(
                f"the model's {weights_bytes / 1024**3:.1f} GiB of weights cannot go into one "
                "ONNX file (protobuf's limit is 2 GiB)",
                hint="set output.external_data: auto",
            )
        return True
    return setting is ExternalData.ALWAYS


@contextlib.contextmanager
def captured_stdout() -> Iterator[None]:
    """Capture what an exporter prints, at the file-descriptor level.

    torch's TorchScript exporter writes its IR graph to fd 1 when it fails, below Python's
    `sys.stdout`, so `redirect_stdout` alone would let ~70 KB through to the user.
    """
    sys.stdout.flush()
    saved = os.dup(1)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 1)
        buffer = io.StringIO()
        try:
            with contextlib.redirect_stdout(buffer):
                yield
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)
            sink.seek(0)
            printed = buffer.getvalue() + sink.read().decode("utf-8", "replace")
            if printed:
                logger.debug("exporter output:\n%s", printed[-4000:])


_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")
_CLASS_REPR = re.compile(r"<class '(?:\w+\.)*(\w+)'>")
# How each exporter names an operator it cannot convert: dynamo "op='aten.i0'" (or
# 'prims.bessel_i0' after decomposition), TorchScript "the operator 'aten::i0'".
_OPERATOR = re.compile(r"op='([\w.]+)'|operator '([\w:.]+)'")


def _one_line(error: BaseException) -> str:
    text = _ANSI_ESCAPE.sub("", str(error))
    # The dynamo exporter's message opens with generic next steps; its summary names the cause.
    _, summary, cause = text.partition("## Exception summary")
    if summary:
        text = _CLASS_REPR.sub(r"\1", cause)
    text = " ".join(text.split())
    return f"{type(error).__name__}: {text[:300]}"


def _report_deprecations(exporter: str, raised: list[warnings.WarningMessage]) -> None:
    """Say once that an exporter torch has deprecated made the model (the TorchScript-based
    one, since torch 2.9); the exporters' other warnings are about their internals."""
    deprecations = {str(w.message) for w in raised if issubclass(w.category, DeprecationWarning)}
    for message in sorted(m for m in deprecations if "ONNX export" in m):
        logger.warning("the %s exporter is deprecated by torch: %s", exporter, message[:200])
    for warning in raised:
        logger.debug("the %s exporter warned: %s", exporter, warning.message)


def _operators(attempts: list[ExportAttempt]) -> list[str]:
    found = {a or b for attempt in attempts for a, b in _OPERATOR.findall(attempt.error or "")}
    return sorted(found)


def dynamo_program(
    source: Source, args: tuple[torch.Tensor, ...], *, opset: int, optimize: bool = True
) -> torch.onnx.ONNXProgram:
    """Trace `source` with the dynamo-based exporter; its `exported_program` is the FX
    program whose node names the ONNX graph's values and metadata refer to."""
    shapes = tuple(source.dynamic_axes.get(name, {}) for name in source.input_names)
    program = torch.onnx.export(
        adapter_for(source),
        args,
        dynamo=True,
        opset_version=opset,
        input_names=list(source.input_names),
        output_names=list(source.output_names),
        dynamic_shapes=(shapes,),
        optimize=optimize,
    )
    if program is None:
        raise ExportError("the dynamo exporter returned no program")
    return program


def _holds_torchscript(module: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.jit.ScriptModule) for m in module.modules())


def _export_dynamo(source: Source, path: Path, opset: int, external: bool) -> None:
    if _holds_torchscript(source.module):
        raise ExportError(
            "torch.export cannot trace a TorchScript module; the TorchScript-based exporter "
            "converts it"
        )
    inputs = source.example_inputs()
    args = tuple(inputs[name] for name in source.input_names)
    program = dynamo_program(source, args, opset=opset)
    # Always with external data: the save then streams the weights out one by one, where a
    # self-contained save builds two in-memory copies of them (measured on DistilBERT-base:
    # peak 1580 MiB vs 793 MiB). Small models are made self-contained again, streaming.
    program.save(str(path), external_data=True)
    del program
    release_rewriter_state()


def _output_axes(source: Source) -> dict[str, dict[int, str]]:
    """Dynamic axes for outputs, for the TorchScript exporter (dynamo infers them)."""
    batch, size = source.example_shape
    # The inputs' dynamic axis other than the batch (`sequence` for text), if they have one.
    size_names = sorted({n for axes in source.dynamic_axes.values() for a, n in axes.items() if a})
    with torch.no_grad():
        outputs = adapter_for(source)(*source.example_inputs().values())
    axes: dict[str, dict[int, str]] = {}
    for name, value in zip(source.output_names, outputs):
        dims: dict[int, str] = {}
        if value.dim() >= 1 and value.shape[0] == batch:
            dims[0] = "batch"
        if value.dim() >= 2 and value.shape[1] == size and size_names:
            dims[1] = size_names[0]
        axes[name] = dims
    return axes


def _export_torchscript(source: Source, path: Path, opset: int, external: bool) -> None:
    adapter: torch.nn.Module = adapter_for(source)
    inputs = source.example_inputs()
    args = tuple(inputs[name] for name in source.input_names)
    if _holds_torchscript(adapter):
        # torch.onnx's tracer cannot call into a ScriptModule held by a Python module ("not
        # part of the active trace"); traced first, the whole is one ScriptModule it takes.
        adapter = torch.jit.trace(adapter, args)
    torch.onnx.export(
        adapter,
        args,
        str(path),
        dynamo=False,
        opset_version=opset,
        input_names=list(source.input_names),
        output_names=list(source.output_names),
        dynamic_axes={**source.dynamic_axes, **_output_axes(source)},
        do_constant_folding=True,
    )


@dataclass(frozen=True)
class ExportStrategy:
    name: str
    opsets: range
    run: Callable[[Source, Path, int, bool], None]


EXPORT_STRATEGIES: tuple[ExportStrategy, ...] = (
    ExportStrategy("dynamo", DYNAMO_OPSETS, _export_dynamo),
    ExportStrategy("torchscript", TORCHSCRIPT_OPSETS, _export_torchscript),
)


def supported_opsets() -> range:
    return range(
        min(s.opsets.start for s in EXPORT_STRATEGIES),
        max(s.opsets.stop for s in EXPORT_STRATEGIES),
    )


def _external_data(path: Path, before: set[Path]) -> Path:
    """The one `<model file>.data` beside `path`: kept when the exporter wrote exactly that,
    else gathered from the files it wrote (the TorchScript exporter writes one per tensor)."""
    data = path.with_name(path.name + ".data")
    if set(path.parent.iterdir()) - before - {path} == {data}:
        return data
    model = onnx.load(str(path), load_external_data=True)
    for stray in set(path.parent.iterdir()) - before - {path}:
        stray.unlink()
    data_name = path.name + ".data"
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=data_name,
        size_threshold=1024,
    )
    return path.with_name(data_name)


_GRAPH = onnx.ModelProto.DESCRIPTOR.fields_by_name["graph"].number
_INITIALIZER = onnx.GraphProto.DESCRIPTOR.fields_by_name["initializer"].number
_RAW_DATA = onnx.TensorProto.DESCRIPTOR.fields_by_name["raw_data"].number
_COPY_CHUNK = 16 * 1024 * 1024


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _length_delimited(field: int, length: int) -> bytes:
    return _varint(field << 3 | 2) + _varint(length)


def inline_external_data(path: Path) -> None:
    """Make `path` self-contained again, streaming each tensor from its data file.

    Protobuf merges repeated occurrences of a message field, so the model without its
    external initializers, followed by one `graph { initializer { ... raw_data } }` record
    per tensor, parses as the whole model. Each record is written in wire format around
    bytes copied in chunks from the data file, so memory never holds a tensor (building the
    records with the protobuf API copies each tensor three times: +440 MiB on DistilBERT).
    """
    model = onnx.load(str(path), load_external_data=False)
    external = [t for t in model.graph.initializer if uses_external_data(t)]
    if not external:
        return
    kept = [t for t in model.graph.initializer if not uses_external_data(t)]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    data_files = set()
    merged = path.with_name(f".{path.name}.inline")
    with merged.open("wb") as out:
        out.write(model.SerializeToString())
        for tensor in external:
            info = ExternalDataInfo(tensor)
            data_file = path.parent / info.location
            data_files.add(data_file)
            offset = info.offset or 0
            length = info.length or data_file.stat().st_size - offset
            del tensor.external_data[:]
            tensor.data_location = onnx.TensorProto.DEFAULT
            head = tensor.SerializeToString() + _length_delimited(_RAW_DATA, length)
            record = _length_delimited(_INITIALIZER, len(head) + length)
            out.write(_length_delimited(_GRAPH, len(record) + len(head) + length))
            out.write(record + head)
            with data_file.open("rb") as data:
                data.seek(offset)
                remaining = length
                while remaining:
                    chunk = data.read(min(_COPY_CHUNK, remaining))
                    if not chunk:
                        raise ExportError(f"{data_file} ends before tensor {tensor.name}")
                    out.write(chunk)
                    remaining -= len(chunk)
    os.replace(merged, path)
    for data_file in data_files:
        data_file.unlink()


def release_rewriter_state() -> None:
    """Let go of the last graph onnxscript's rewriter matched.

    onnxscript 0.7's module-level rewrite rules keep their pattern matcher's last graph
    (`_graph`, `_match`, ...), which holds the exported initializers and so every
    Parameter of the model: without this, freeing the PyTorch model frees nothing.
    """
    try:
        from onnxscript.rewriter import _matcher
    except ImportError:
        return
    for obj in gc.get_objects():
        if isinstance(obj, _matcher.SimplePatternMatcher):
            for attr in ("_graph", "_current_node", "_match", "_tracer"):
                if hasattr(obj, attr):
                    setattr(obj, attr, None)
    gc.collect()


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


def export_to_onnx(
    source: Source,
    output_path: Path,
    *,
    opset_version: int = DEFAULT_OPSET,
    exporter: Exporter = Exporter.AUTO,
    external_data: ExternalData = ExternalData.AUTO,
) -> ExportResult:
    """Export `source` to `output_path` with the first strategy that works.

    Args:
        source: the loaded model and its example inputs.
        output_path: where the `.onnx` file goes; its directory must be empty or new, since
            external data files are written beside it.
        opset_version: the ONNX opset to target.
        exporter: `auto` tries every strategy in order; otherwise only the one named.
        external_data: whether the weights go to `<output_path>.data` (`auto`: by size).
    """
    output_path = Path(output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    external = wants_external_data(_weights_bytes(source.module), external_data)
    wanted = [s for s in EXPORT_STRATEGIES if exporter is Exporter.AUTO or s.name == exporter.value]
    if not any(opset_version in s.opsets for s in wanted):
        # A setting the user can fix, found before any export work: bad input, not a failure.
        allowed = ", ".join(f"{s.name}: {s.opsets.start}-{s.opsets.stop - 1}" for s in wanted)
        raise ConfigError(
            f"opset {opset_version} is not supported by the installed exporter ({allowed})",
            hint=f"set onnx.opset_version to {DEFAULT_OPSET}",
        )
    attempts: list[ExportAttempt] = []
    started = time.perf_counter()
    for strategy in wanted:
        if opset_version not in strategy.opsets:
            attempts.append(
                ExportAttempt(
                    strategy.name,
                    False,
                    f"opset {opset_version} outside "
                    f"{strategy.opsets.start}-{strategy.opsets.stop - 1}",
                    0.0,
                )
            )
            continue
        logger.info("exporting with the %s exporter (opset %d)", strategy.name, opset_version)
        t0 = time.perf_counter()
        before = set(output_path.parent.iterdir())
        try:
            with warnings.catch_warnings(record=True) as raised, captured_stdout():
                warnings.simplefilter("always")
                strategy.run(source, output_path, opset_version, external)
            _report_deprecations(strategy.name, raised)
            # Checked while the weights are still external: the checker reads a
            # self-contained file whole, twice over.
            onnx.checker.check_model(str(output_path), full_check=False)
            data_file = _external_data(output_path, before) if external else None
            if data_file is None:
                inline_external_data(output_path)
        except Exception as e:  # every exporter failure is recorded, then the next one runs
            full = _disk_full(e)
            if full is not None:  # another exporter would not find more room
                _remove_new_files(output_path.parent, before)
                raise ExportError(
                    f"cannot write the ONNX model into {output_path.parent}: {full.strerror}",
                    hint="free space there, or raise the file size limit (ulimit -f)",
                ) from e
            logger.debug("the %s exporter failed", strategy.name)
            logger.warning("the %s exporter failed: %s", strategy.name, _one_line(e))
            attempts.append(
                ExportAttempt(strategy.name, False, _one_line(e), time.perf_counter() - t0)
            )
            _remove_new_files(output_path.parent, before)
            continue
        attempts.append(ExportAttempt(strategy.name, True, None, time.perf_counter() - t0))
        seconds = time.perf_counter() - started
        logger.info("exported with %s in %.1f s to %s", strategy.name, seconds, output_path)
        return ExportResult(
            path=output_path,
            data_file=data_file,
            exporter=strategy.name,
            opset=opset_version,
            seconds=seconds,
            attempts=tuple(attempts),
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
