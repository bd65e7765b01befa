"""The library side of `onnxport verify`: a conversion's proof run again, without converting.

- `verify_published(directory)`: the checksums first (`artifact.manifest.verify_directory`),
  then every published model against the checkpoint the manifest records (or another one),
  loaded with the manifest's settings and judged by the conversion's rules (`verify.rules`)
  on the shapes the conversion validated.
- `verify_onnx_file(model, against=...)`: an ONNX file onnxport did not make (exported by
  `torch.onnx.export`, Optimum, ...), judged as the fp32 model of a conversion. Its input and
  output names are matched to the checkpoint's (`match_names`), its validation shapes fitted
  to the sizes the graph fixes (`shapes_for_graph`).

Both return a `VerificationRecord` and print nothing. What cannot be checked as asked raises
`VerifyInputError` (or the loaders' own errors); a model that is refused is a record with
`proven` false, its failures and, where it can be said, the node where it diverges.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from onnxport.artifact.manifest import MANIFEST_FILENAME, read_manifest, verify_directory
from onnxport.artifact.records.validation import InputRecord
from onnxport.artifact.records.verification import VerificationRecord, VerifiedModelRecord
from onnxport.errors import VerifyInputError, one_line
from onnxport.names import Variant
from onnxport.request.config import ConversionConfig, parse_conversion_config
from onnxport.tasks import Task
from onnxport.verify.evaluation import Evaluation
from onnxport.verify.gate import Candidate, DivergenceSearch, Rules, judge
from onnxport.verify.generation import GenerationProof
from onnxport.verify.rules import fp32_rules, variant_rules
from onnxport.verify.runtime import create_session, declared_inputs
from onnxport.verify.shapes import describe_shapes, validation_shapes
from onnxport.verify.validate import Reference

if TYPE_CHECKING:  # loading imports torch: only the proof does, when it runs
    from onnxport.sources.base import Source

logger = logging.getLogger(__name__)

BATCH_AXIS = "batch"
"""The dynamic axis a validation shape's batch sets; every other takes its size (the
sources' convention, `sources.plain`)."""


def verify_published(directory: Path, *, against: Path | None = None) -> VerificationRecord:
    """Check a directory `onnxport convert` published: its files against the manifest's
    checksums, then each published model against `against` (default: the checkpoint the
    manifest records). A damaged directory is refused without running its models."""
    from onnxport.sources import load_source

    directory = Path(directory)
    manifest = read_manifest(directory)  # none, or unreadable: not an onnxport output
    checkpoint = Path(against or manifest.source.path)
    problems = verify_directory(directory)
    if problems:
        return VerificationRecord(
            target=str(directory),
            against=str(checkpoint),
            files=len(manifest.files),
            checksum_problems=problems,
        )
    if against is None and not checkpoint.exists():
        raise VerifyInputError(
            f"the checkpoint {directory / MANIFEST_FILENAME} records, {checkpoint}, is not there",
            hint="pass the checkpoint to prove against (against=CHECKPOINT)",
        )
    config = parse_conversion_config(manifest.config, origin=str(directory / MANIFEST_FILENAME))
    source = load_source(checkpoint, config.source)
    notes = _changed_weights(source, manifest.source.weights_sha256)
    fp32 = manifest.output(Variant.FP32)
    recorded = fp32.validation.shapes if fp32 and fp32.validation else None
    shapes = [(b, s) for b, s in recorded] if recorded else validation_shapes(source, config)
    task = source.task
    answers = _answers(source, shapes, config)
    references = answers.references
    del source  # loaded again to find where a refusal diverges: never beside ONNX Runtime's

    def reload() -> Source:
        return load_source(checkpoint, config.source)

    models = []
    for out in manifest.published_outputs():
        path = directory / out.file
        if out.variant is Variant.FP32:
            rules = answers.fp32_rules(config)
            search = _fp32_divergence(reload, references, opset=manifest.export.opset)
        else:
            rules = variant_rules(config, answers.evaluation)
            # The variants are made from the exported graph; the published fp32 model is
            # that graph only when no pass changed it (else its nodes have other names).
            base = directory / fp32.file if fp32 is not None and not fp32.passes else None
            search = _variant_divergence(base, references) if base is not None else None
        models.append(_prove(Candidate(out.variant, path), references, task, rules, search))
    return VerificationRecord(
        target=str(directory),
        against=str(checkpoint),
        files=len(manifest.files),
        models=models,
        notes=notes,
    )


def verify_onnx_file(
    model: Path, *, against: Path, config: ConversionConfig | None = None
) -> VerificationRecord:
    """Check an ONNX file against the checkpoint `against`, as a conversion checks its fp32
    model (`config`: the source and validation settings; default: a conversion's)."""
    from onnxport.sources import load_source

    model = Path(model)
    config = config or ConversionConfig()
    graph_inputs, graph_outputs, opset = _read_graph(model)
    source = load_source(Path(against), config.source)
    names = match_names(source, [i.name for i in graph_inputs], graph_outputs)
    shapes, fitted = shapes_for_graph(
        source, graph_inputs, names, validation_shapes(source, config), config
    )
    task = source.task
    answers = _answers(source, shapes, config)
    references = [names.rename(r) for r in answers.references]

    def reuse() -> Source:
        return source

    search = _fp32_divergence(reuse, references, opset=opset) if names.same_inputs else None
    rules = answers.fp32_rules(config)
    if not names.same_inputs:  # the proof's loop feeds the graph by the checkpoint's names
        rules = dataclasses.replace(rules, generation=None)
    proof = _prove(Candidate(Variant.FP32, model), references, task, rules, search)
    return VerificationRecord(
        target=str(model), against=str(against), models=[proof], notes=[*names.notes, *fitted]
    )


# --------------------------------------------------------------------------- names, shapes


@dataclass(frozen=True)
class NameMatch:
    """The checkpoint's input and output names, each to the graph's name for it."""

    inputs: dict[str, str]
    outputs: dict[str, str]
    notes: tuple[str, ...] = ()

    @property
    def same_inputs(self) -> bool:
        """Whether the graph's inputs have the checkpoint's names: the divergence search feeds both
        graphs one input by the checkpoint's names (it pairs values by the exporter's node
        names, whatever the outputs are called)."""
        return all(ours == theirs for ours, theirs in self.inputs.items())

    def rename(self, reference: Reference) -> Reference:
        """`reference` in the graph's names."""
        exact = reference.exact
        return dataclasses.replace(
            reference,
            inputs={self.inputs[k]: v for k, v in reference.inputs.items() if k in self.inputs},
            outputs={self.outputs[k]: v for k, v in reference.outputs.items()},
            exact={self.outputs[k]: v for k, v in exact.items()} if exact is not None else None,
        )


def match_names(source: Source, graph_inputs: list[str], graph_outputs: list[str]) -> NameMatch:
    """Match the graph's inputs and outputs to the checkpoint's: by name when the
    checkpoint's names cover them (the graph may leave inputs out, and add outputs), else
    by order when the counts agree; otherwise `VerifyInputError`."""
    wanted_inputs, wanted_outputs = list(source.input_names), list(source.output_names)
    inputs, input_note = _match(
        "inputs", graph_inputs, wanted_inputs, set(graph_inputs) <= set(wanted_inputs)
    )
    outputs, output_note = _match(
        "outputs", graph_outputs, wanted_outputs, set(wanted_outputs) <= set(graph_outputs)
    )
    return NameMatch(inputs, outputs, tuple(n for n in (input_note, output_note) if n))


def _match(
    kind: str, graph: list[str], wanted: list[str], by_name: bool
) -> tuple[dict[str, str], str | None]:
    """The checkpoint's name -> the graph's, and a note when matched by order."""
    if by_name:
        return {name: name for name in wanted if name in graph}, None
    if len(graph) == len(wanted):
        pairs = dict(zip(wanted, graph))
        return pairs, f"{kind} matched by order: {_pairs(pairs)}"
    raise VerifyInputError(
        f"the graph's {kind} ({', '.join(graph)}) are not the checkpoint's "
        f"({', '.join(wanted)}), by name or in number",
        hint=f"export with {kind[:-1]}_names={wanted} (in that order)",
    )


def _pairs(names: dict[str, str]) -> str:
    return ", ".join(f"{ours} as {theirs}" for ours, theirs in names.items())


def shapes_for_graph(
    source: Source,
    graph_inputs: Sequence[InputRecord],
    names: NameMatch,
    shapes: list[tuple[int, int]],
    config: ConversionConfig,
) -> tuple[list[tuple[int, int]], list[str]]:
    """The validation shapes the graph takes, and a note where they were fitted to it.

    A dynamic axis of the checkpoint's inputs that the graph declares with a number fixes
    the batch (the `batch` axis) or the size (any other) of every validation shape: the
    defaults are fitted to it; shapes the config names are refused. Every other dimension
    the graph fixes, and each input's rank and type, must be what the checkpoint makes.
    """
    by_graph_name = {theirs: ours for ours, theirs in names.inputs.items()}
    fixed: dict[str, tuple[int, str]] = {}
    for graph_input in graph_inputs:
        ours = by_graph_name[graph_input.name]
        for axis, label in source.dynamic_axes.get(ours, {}).items():
            size = graph_input.shape[axis] if axis < len(graph_input.shape) else None
            if not isinstance(size, int):
                continue
            role = BATCH_AXIS if label == BATCH_AXIS else "size"
            where = f"{graph_input.name} dimension {axis}"
            if role in fixed and fixed[role][0] != size:
                raise VerifyInputError(
                    f"the graph fixes {fixed[role][1]} at {fixed[role][0]} and {where} at "
                    f"{size}, which the checkpoint's inputs always have equal",
                    hint="export with these dimensions dynamic",
                )
            fixed.setdefault(role, (size, where))
    batch, size = fixed.get(BATCH_AXIS), fixed.get("size")
    fitted = list(
        dict.fromkeys((batch[0] if batch else b, size[0] if size else s) for b, s in shapes)
    )
    notes = []
    if fitted != shapes:
        said = "; ".join(f"{where} is fixed at {n}" for n, where in filter(None, (batch, size)))
        if config.validation.shapes is not None:
            raise VerifyInputError(
                f"the graph does not take validation.shapes {[list(s) for s in shapes]}: {said}",
                hint=f"validation.shapes {[list(s) for s in fitted]}, or leave them out",
            )
        notes.append(f"validated at {[list(s) for s in fitted]}: {said} in the graph")
    _check_inputs(source, graph_inputs, by_graph_name, fitted[0])
    return fitted, notes


def _check_inputs(
    source: Source,
    graph_inputs: Sequence[InputRecord],
    by_graph_name: dict[str, str],
    shape: tuple[int, int],
) -> None:
    """Each graph input has the rank, type and fixed sizes of the checkpoint's at `shape`."""
    made = source.make_inputs(*shape, 0)
    for graph_input in graph_inputs:
        value = made[by_graph_name[graph_input.name]]
        ours = list(value.shape)
        dtype = str(value.dtype).removeprefix("torch.")
        problem = None
        if graph_input.dtype != dtype:
            problem = f"is {graph_input.dtype} where the checkpoint's is {dtype}"
        elif len(graph_input.shape) != len(ours):
            problem = (
                f"has {len(graph_input.shape)} dimensions where the checkpoint's has {len(ours)}"
            )
        else:
            for axis, (theirs, size) in enumerate(zip(graph_input.shape, ours)):
                if isinstance(theirs, int) and theirs != size:
                    problem = f"fixes dimension {axis} at {theirs} where the checkpoint's is {size}"
                    break
        if problem is not None:
            raise VerifyInputError(
                f"the graph's input {graph_input.name} {graph_input.shape} {problem} "
                f"({describe_shapes({graph_input.name: ours})})",
                hint="verify against the checkpoint this graph was exported from",
            )


# ------------------------------------------------------------------------------- the proof


def _read_graph(model: Path) -> tuple[list[InputRecord], list[str], int]:
    """The graph's declared inputs, its output names and its opset, or why it cannot be
    verified."""
    import onnx

    if not model.is_file():
        raise VerifyInputError(
            f"{model} does not exist" if not model.exists() else f"{model} is not a file",
            hint="pass an .onnx file, or a directory onnxport published",
        )
    try:
        session = create_session(model)
        # The weights stay on disk: only the opset is read.
        opsets = onnx.load(str(model), load_external_data=False).opset_import
    except Exception as e:  # ONNX Runtime raises a different type per way a file is wrong
        raise VerifyInputError(
            f"{model} is not an ONNX model ONNX Runtime can load: {one_line(e, 200)}",
            hint="pass an .onnx file, or a directory onnxport published",
        ) from e
    opset = next((o.version for o in opsets if o.domain in ("", "ai.onnx")), 0)
    return declared_inputs(session), [o.name for o in session.get_outputs()], opset


@dataclass(frozen=True)
class _Answers:
    """What PyTorch answers, for the rules and the references of a proof."""

    references: list[Reference]
    float64_skipped: str | None
    """Why the float64 answers are missing, when the budget asked for them."""
    evaluation: Evaluation | None
    """Its score on the labelled set the settings name."""
    generation: GenerationProof | None
    """Its greedy generations (a text-generation model)."""

    def fp32_rules(self, config: ConversionConfig) -> Rules:
        return fp32_rules(
            config,
            self.evaluation,
            float64_skipped=self.float64_skipped,
            generation=self.generation,
        )


def _answers(source: Source, shapes: list[tuple[int, int]], config: ConversionConfig) -> _Answers:
    from onnxport.request.config import check_named_files
    from onnxport.verify.references import (
        pytorch_answers,
        pytorch_evaluation,
        pytorch_generation,
    )

    check_named_files(config)
    references, skipped = pytorch_answers(source, shapes, config)
    return _Answers(
        references,
        skipped,
        pytorch_evaluation(source, config),
        pytorch_generation(source, config),
    )


def _prove(
    candidate: Candidate,
    references: list[Reference],
    task: Task,
    rules: Rules,
    divergence_search: DivergenceSearch | None,
) -> VerifiedModelRecord:
    """The gate's verdict as a record: a refusal is a result here, not an error."""
    judged = judge(
        candidate,
        references,
        task=task,
        rules=dataclasses.replace(rules, on_failure="skip"),
        divergence_search=divergence_search,
        skip_log_level=logging.DEBUG,  # the command says it, once
    )
    assert judged.validation is not None  # the gate validates every candidate
    return VerifiedModelRecord(
        file=candidate.path.name,
        variant=candidate.variant,
        proven=judged.published,
        validation=judged.validation,
        divergence=judged.divergence,
    )


def _fp32_divergence(load, references: list[Reference], *, opset: int) -> DivergenceSearch:
    from onnxport.verify.divergence import fp32_divergence

    def search(model: Path, validation):
        return fp32_divergence(load, model, references, validation, opset=opset)

    return search


def _variant_divergence(base: Path, references: list[Reference]) -> DivergenceSearch:
    from onnxport.verify.divergence import variant_divergence

    def search(model: Path, validation):
        return variant_divergence(base, model, references, validation)

    return search


def _changed_weights(source: Source, recorded: dict[str, str]) -> list[str]:
    """A note when the checkpoint's weights are not the ones the conversion read: a refusal
    is then about other weights, not the published models."""
    current = source.record().weights_sha256
    changed = sorted(n for n, digest in recorded.items() if current.get(n, digest) != digest)
    if not changed:
        return []
    return [f"the checkpoint's {', '.join(changed)} changed since the conversion"]
