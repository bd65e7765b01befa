"""The conversion pipeline, wiring only: load, export, passes, the gate, smoke test, publish.

`convert(request)` runs the stages in order inside a staging directory and publishes it only
when every stage passed. Each stage is a typed function of another module that returns its
record; this module times the stages, reports them, and makes the manifest of the records.
"""

from __future__ import annotations

import datetime as dt
import logging
import platform as _platform
import shutil
from collections.abc import Callable
from pathlib import Path

from onnxport import __version__, interrupts
from onnxport.artifact.companions import publish_companions
from onnxport.artifact.files import move_model, remove_model
from onnxport.artifact.manifest import Manifest
from onnxport.artifact.publish import Staging, check_output_location, finish_output, seal
from onnxport.artifact.records.export import PassRecord
from onnxport.artifact.records.outputs import OutputRecord
from onnxport.artifact.records.validation import SmokeTestRecord, ValidationRecord
from onnxport.errors import (
    PassError,
    PublishError,
    QuantizationError,
    SmokeTestError,
    TrackingError,
    ValidationError,
)
from onnxport.names import Variant
from onnxport.passes import (
    apply_pass,
    apply_sequence,
    check_nodes_to_exclude,
    optimize_passes,
    quantization_pass,
)
from onnxport.passes.search import SearchContext, search_optimization, search_quantization
from onnxport.passes.search_timing import Timer
from onnxport.preparation import Prepared, isolated, prepare, prepare_in_a_child
from onnxport.process import peak_rss_mb
from onnxport.progress import ProgressCallback, Stage, StageClock, ignore_progress
from onnxport.request import ConversionRequest
from onnxport.request.config import ConversionConfig
from onnxport.request.export_config import OptimizeLevel, Quantization
from onnxport.tasks import Task
from onnxport.testing import smoke_test_onnx_model
from onnxport.verify.decode import generate_ids
from onnxport.verify.divergence import fp32_divergence, variant_divergence
from onnxport.verify.gate import Candidate, judge
from onnxport.verify.next_token import next_token_gate
from onnxport.verify.rules import fp32_rules, variant_rules
from onnxport.verify.shapes import export_origin
from onnxport.verify.timing import default_threads, machine_record

logger = logging.getLogger(__name__)

EXPORT_DIRNAME = ".export"
DECODE_TOKENS = 16
"""New tokens a language model generates when it is timed (`_timer`)."""


def library_versions() -> dict[str, str]:
    """The versions that made the model, read from the installed distributions: importing
    torch here only to ask would bring it into a process that does not need it."""
    from importlib.metadata import version

    found = {"onnxport": __version__, "python": _platform.python_version()}
    for name in ("torch", "transformers", "onnx", "onnxruntime", "onnxscript"):
        found[name] = version(name)
    return found


def convert(
    request: ConversionRequest,
    progress: ProgressCallback = ignore_progress,
    *,
    before_publish: Callable[[Manifest, Path], None] | None = None,
) -> Manifest:
    """Convert `request.source_path` into a validated ONNX model in `request.output_dir`.

    Args:
        request: what to convert, where, with which settings.
        progress: receives a `StageEvent` as each stage starts and ends.
        before_publish: called with the sealed manifest and the staging directory just
            before it is renamed into place (tracking uses it); if it raises, nothing is
            published.

    Returns the manifest of the published directory. Raises an `OnnxportError` subclass
    naming the failed stage, or `interrupts.Interrupted` for SIGINT (Ctrl-C) or SIGTERM at any
    moment before publishing; nothing is published then, and an earlier output is untouched.
    """
    config = request.config
    check_output_location(request.output_dir, force=request.force)
    run = StageClock(progress)
    with interrupts.handling(), Staging(request.output_dir) as staging:
        work = staging.path
        fp32_file = config.output.filename(Variant.FP32)
        exported = work / EXPORT_DIRNAME / fp32_file
        if isolated(request):
            prepared = prepare_in_a_child(request, exported, run)
        else:
            prepared = prepare(request, exported, run)
        if config.onnx.quantization is not Quantization.NONE:
            # Now, not after the fp32 model's validation (or search): a misspelt name is
            # known as soon as the graph the variants are made from is.
            check_nodes_to_exclude(exported, config.quantize.nodes_to_exclude)
        timer = _timer(prepared)
        fp32 = _fp32(exported, work / fp32_file, request, prepared, timer, run)
        # Variants are quantized from the graph as exported: fused attention ops hide their
        # weights from the quantizer (DistilBERT-base int8 from the fused graph: 37% of
        # fp32's size; from the exported graph: 25%). ONNX Runtime fuses it at load time.
        base = exported if exported.is_file() else work / fp32_file
        outputs = [fp32]
        if config.onnx.quantization is not Quantization.NONE:
            with run.stage(Stage.QUANTIZE, QuantizationError):
                outputs.append(_variant(base, work / fp32.file, prepared, config, timer))
        shutil.rmtree(work / EXPORT_DIRNAME, ignore_errors=True)
        smoke: dict[str, SmokeTestRecord] = {}
        if config.onnx.run_smoke_test:
            with run.stage(Stage.SMOKE_TEST, SmokeTestError):
                for out in (o for o in outputs if o.published):
                    smoke[out.variant] = smoke_test_onnx_model(
                        work / out.file, prepared.references[0].inputs
                    )
                    if not smoke[out.variant].passed:
                        raise SmokeTestError(
                            f"the published {out.file} fails its smoke test: "
                            f"{'; '.join(smoke[out.variant].problems)}"
                        )
        with run.stage(Stage.PUBLISH, PublishError) as publishing:
            publish_companions(prepared.files_to_copy, work)
            outputs = [finish_output(o, work, smoke.get(o.variant)) for o in outputs]
            manifest = Manifest(
                onnxport_version=__version__,
                created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                conv_fp=request.conv_fp,
                lineage=dict(request.lineage),
                source=prepared.source,
                export=prepared.export,
                outputs=outputs,
                # Publishing's figure is taken here, its copying and checksumming: the
                # reports and the manifest written next show it (and so does its event).
                timings={**run.timings, "publish": publishing.record()},
                # This process's, or the export child's (`preparation`), reaped by now.
                peak_rss_mb=round(peak_rss_mb(), 1),
                machine=machine_record(),
                versions=library_versions(),
                config=config.model_dump(mode="json"),
            )
            manifest = seal(manifest, work)
            if before_publish is not None:
                # Its own stage (MLflow logging takes seconds), before the directory takes
                # its final name: a failure there publishes nothing.
                with run.stage(Stage.TRACK, TrackingError):
                    before_publish(manifest, work)
            # Inside the stage: publishing is done once the directory has its name.
            final = staging.publish()
        logger.info("conversion complete: %s", final)
        return manifest


def _fp32(
    exported: Path,
    final: Path,
    request: ConversionRequest,
    prepared: Prepared,
    timer: Timer,
    run: StageClock,
) -> OutputRecord:
    """The fp32 model at `final`: the exported graph, optimized as configured (or the fastest
    level that validates, for `optimize: auto`), through the gate. The exported graph stays
    where it is when the variants are made from it (any optimization), else it is moved."""
    config = request.config

    def search_divergence(model: Path, validation: ValidationRecord):
        from onnxport.sources import load_source  # a failure can afford torch's import

        return fp32_divergence(
            lambda: load_source(request.source_path, config.source),
            model,
            prepared.references,
            validation,
            opset=config.onnx.opset_version,
        )

    first_inputs = list(prepared.references[0].inputs) if prepared.references else []
    origin = export_origin(prepared.export, first_inputs)
    rules = fp32_rules(
        config, prepared.evaluation, origin, prepared.float64_skipped, prepared.generation
    )
    divergence_search = search_divergence if config.validation.localize else None
    if config.onnx.optimize is OptimizeLevel.AUTO:
        search = SearchContext(
            prepared.context, prepared.references, prepared.task, rules, timer, divergence_search
        )
        with run.stage(Stage.PASSES, PassError):
            return search_optimization(exported, final, search)
    passes: tuple[PassRecord, ...] = ()
    if optimize_passes(config):
        with run.stage(Stage.PASSES, PassError):
            passes = tuple(
                apply_sequence(optimize_passes(config), exported, final, prepared.context)
            )
    else:
        move_model(exported, final)
    with run.stage(Stage.VALIDATE, ValidationError):
        return judge(
            Candidate(Variant.FP32, final, passes),
            prepared.references,
            task=prepared.task,
            rules=rules,
            divergence_search=divergence_search,
        )


def _timer(prepared: Prepared) -> Timer:
    """How the searches time their candidates: a language model by its time per token
    generating `DECODE_TOKENS` greedily after the first validation prompt, batch 1."""
    threads = default_threads()
    if prepared.task is not Task.TEXT_GENERATION:
        return Timer(prepared.references, threads=threads)
    first = prepared.references[0].inputs
    prompt = [int(i) for i in first["input_ids"][0][first["attention_mask"][0] == 1]]

    def decode(session) -> int:
        generated = generate_ids(
            session, [prompt], max_new_tokens=DECODE_TOKENS, end_ids=(), pad_id=0
        )
        return len(generated.tokens[0])

    label = f"decode {DECODE_TOKENS} tokens, per token"
    return Timer(prepared.references, threads=threads, decode=decode, decode_label=label)


def _variant(
    base: Path, fp32: Path, prepared: Prepared, config: ConversionConfig, timer: Timer
) -> OutputRecord:
    """Make the quantized or float16 model from `base` and put it through the gate (or, for
    `quantization: auto`, search for the fastest variant that passes it, published under its
    own name). A language model's variant is judged on real text against the published
    `fp32` model."""
    texts = prepared.context.texts
    gate = None
    if texts:
        gate = next_token_gate(
            fp32,
            texts,
            min_agreement=config.validation.min_next_token_agreement,
            max_increase=config.validation.max_perplexity_increase,
        )
    rules = variant_rules(config, prepared.evaluation, gate)

    def search_divergence(model: Path, validation: ValidationRecord):
        return variant_divergence(base, model, prepared.references, validation)

    if config.onnx.quantization is Quantization.AUTO:
        # The search needs the divergence search to know which node to leave in float.
        search = SearchContext(
            prepared.context, prepared.references, prepared.task, rules, timer, search_divergence
        )
        return search_quantization(
            base, lambda variant: fp32.with_name(config.output.filename(variant)), search=search
        )
    variant = config.onnx.quantization.variant
    path = fp32.with_name(config.output.filename(variant))
    record = apply_pass(quantization_pass(config), base, path, prepared.context)
    judged = judge(
        Candidate(variant, path, (record,)),
        prepared.references,
        task=prepared.task,
        rules=rules,
        divergence_search=search_divergence if config.validation.localize else None,
    )
    if not judged.published:
        remove_model(path)
    return judged
