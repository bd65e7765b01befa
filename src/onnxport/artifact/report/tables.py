"""The report's content as tables of strings, rendered alike in Markdown, HTML and the
terminal: what the manifest says about the outputs, their validation and the benchmark."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from onnxport.artifact.manifest import Manifest
from onnxport.artifact.records.export import CacheStatus
from onnxport.artifact.records.outputs import CandidateRecord
from onnxport.artifact.records.validation import ValidationRecord
from onnxport.artifact.report.benchmark_tables import (
    benchmark_note,
    benchmark_tables,
    decode_note,
    decode_table,
)
from onnxport.artifact.report.labels import error_ratio_label, generation_label, shapes_label
from onnxport.artifact.report.table import Table, size


def resolution_note(manifest: Manifest) -> str | None:
    """What image sizes the model takes: its one fixed resolution, or any size with the
    sizes it was validated at; None for a model of other inputs."""
    fixed = manifest.source.fixed_resolution
    if fixed:
        size = "x".join(str(n) for n in fixed)
        return (
            f"fixed resolution {size}: the model takes {size} images only "
            f"({manifest.source.why_fixed()}); resize images to it"
        )
    validation = next((o.validation for o in manifest.outputs if o.validation), None)
    sides = sorted(
        {
            tuple(shape[2:])
            for shapes in (validation.input_shapes if validation else [])
            for name, shape in shapes.items()
            if name == "pixel_values" and len(shape) == 4
        }
    )
    if len(sides) < 2:
        return None
    validated = ", ".join("x".join(str(n) for n in side) for side in sides)
    return f"images of any size (validated at {validated})"


def inputs_fact(manifest: Manifest) -> str | None:
    """The inputs the published graph declares: a size where fixed, a name where it varies."""
    validation = next((o.validation for o in manifest.outputs if o.validation), None)
    if validation is None or not validation.graph_inputs:
        return None
    described = ", ".join(
        f"`{i.name}` {i.dtype} [{', '.join(str(d) for d in i.shape)}]"
        for i in validation.graph_inputs
    )
    note = resolution_note(manifest)
    return f"inputs: {described}" + (f"; {note}" if note else "")


def _from_cache(manifest: Manifest) -> str:
    cache = manifest.export.cache
    if cache is None or cache.status is not CacheStatus.HIT:
        return ""
    made = f"made {cache.created_at} with torch {cache.versions.get('torch', '?')}"
    return f" (graph from the export cache: entry `{cache.key}`, {made})"


def facts(manifest: Manifest) -> list[str]:
    source = manifest.source
    facts = [
        f"source: `{source.path}` ({source.kind}, task {source.task}, "
        f"{source.num_parameters:,} parameters)",
        f"exporter: {manifest.export.exporter}, opset {manifest.export.opset}"
        + _from_cache(manifest),
        f"created: {manifest.created_at} with onnxport {manifest.onnxport_version}",
    ]
    inputs = inputs_fact(manifest)
    if inputs:
        facts.append(inputs)
    if manifest.conv_fp:
        facts.append(f"conversion fingerprint: `{manifest.conv_fp}`")
    machine = machine_fact(manifest)
    if machine:
        facts.append(machine)
    facts += [f"{key}: `{value}`" for key, value in sorted(manifest.lineage.items())]
    return facts


def outputs_table(manifest: Manifest) -> Table:
    rows = []
    for out in manifest.outputs:
        v = out.validation
        agreement = (
            f"{v.task_agreement.metric} {v.task_agreement.value:.4f} "
            f"(min {v.task_agreement.minimum:g})"
            if v
            else "-"
        )
        if v is not None and v.task_metric is not None:
            m = v.task_metric
            agreement += (
                f"; {m.metric} {m.value:.4f} on {m.examples} labelled examples "
                f"(PyTorch {m.pytorch:.4f}, max drop {m.max_drop:g})"
            )
        if v is not None and v.generation is not None:
            agreement += f"; {generation_label(v.generation)}"
        if v is not None and v.next_token is not None:
            agreement += f"; {v.next_token.summary()}"
        validated = "-" if v is None else ("yes" if v.passed else "NO")
        rows.append(
            (
                out.file,
                out.variant,
                "yes" if out.published else "no",
                size(out.total_size_bytes),
                validated,
                error_ratio_label(v) if v else "-",
                agreement,
            )
        )
    headers = (
        "file",
        "variant",
        "published",
        "size",
        "validated",
        "error ÷ PyTorch's",
        "task agreement",
    )
    return Table(headers, tuple(rows), frozenset({3}))


def _judged_on(validation: ValidationRecord) -> str:
    """The task-level figures the gate judged a variant on, and its verdict."""
    a = validation.task_agreement
    figures = f"{a.metric} {a.value:.4f} (min {a.minimum:g})"
    if validation.task_metric is not None:
        m = validation.task_metric
        figures += f", {m.metric} {m.value:.4f} (PyTorch {m.pytorch:.4f}, max drop {m.max_drop:g})"
    return f"Judged on {figures}: {'passed' if validation.passed else 'failed'}."


def validation_sections(manifest: Manifest) -> list[Section]:
    """Per validated output, its differences from PyTorch. The fp32 model is judged on them
    against a tolerance; a quantized variant on the task-level figures alone, so its
    differences are shown without a tolerance that they could seem to pass or fail."""
    found = []
    for out in manifest.outputs:
        v = out.validation
        if v is None:
            continue
        title = f"{out.variant} (shapes {shapes_label(v)})"
        if v.elementwise_gate and v.yardstick is not None and v.yardstick.mode == "budget":
            found.append(Section(title, level=3, note=BUDGET_NOTE, tables=(_budget_table(v),)))
            continue
        if v.elementwise_gate:
            headers = ("output", "max abs diff", "max rel diff", "atol", "rtol", "within tolerance")
            rows = tuple(
                (
                    name,
                    f"{c.max_abs_diff:.3g}",
                    f"{c.max_rel_diff:.3g}",
                    f"{c.atol:g}",
                    f"{c.rtol:g}",
                    "yes" if c.passed else "no",
                )
                for name, c in v.outputs.items()
            )
            why = v.yardstick.reason if v.yardstick is not None else None
            note = f"Judged by the tolerance: {why}." if why else None
            table = Table(headers, rows, frozenset({1, 2}))
            found.append(Section(title, level=3, note=note, tables=(table,)))
            continue
        rows = tuple(
            (name, f"{c.max_abs_diff:.3g}", f"{c.max_rel_diff:.3g}")
            for name, c in v.outputs.items()
        )
        note = (
            f"{_judged_on(v)} The differences from PyTorch are recorded, not judged: "
            "quantization moves every value a little, and what counts is whether the model "
            "still gives PyTorch's answers."
        )
        table = Table(("output", "max abs diff", "max rel diff"), rows, frozenset({1, 2}))
        found.append(Section(title, level=3, note=note, tables=(table,)))
    return found


BUDGET_NOTE = (
    "Judged by the error budget: PyTorch also ran in float64 on the same inputs (the exact "
    "answer); the ONNX model's float32 error against it, by its maximum and its RMS, is at "
    "most the limit times PyTorch's own float32 error (floored at a few float32 roundings of "
    "the output's scale)."
)


def _budget_table(validation: ValidationRecord) -> Table:
    """Per output and validation input: both errors against float64, the ratio, the limit."""
    rows = []
    for name, c in validation.outputs.items():
        limit = f"{c.max_error_ratio:g}" if c.max_error_ratio is not None else "-"
        for b in c.budget:
            rows.append(
                (
                    name,
                    "x".join(map(str, b.shape)),
                    f"{b.onnx_max:.3g}",
                    f"{b.onnx_rms:.3g}",
                    f"{b.pytorch_max:.3g}",
                    f"{b.pytorch_rms:.3g}",
                    f"{b.ratio:.3g}",
                    limit,
                    "yes" if c.max_error_ratio is None or b.ratio <= c.max_error_ratio else "no",
                )
            )
    headers = (
        "output",
        "shape",
        "ONNX error max",
        "ONNX error RMS",
        "PyTorch error max",
        "PyTorch error RMS",
        "ratio",
        "limit",
        "within",
    )
    return Table(headers, tuple(rows), frozenset(range(2, 8)))


def candidate_label(candidate: CandidateRecord) -> str:
    """A candidate of a search as a reader names it: `dynamic per-channel, 2 nodes left in
    float`."""
    count = len(candidate.excluded_nodes)
    if not count:
        return candidate.name
    return f"{candidate.name}, {count} node{'s' if count > 1 else ''} left in float"


def _judged_agreement(candidate: CandidateRecord) -> str:
    """The agreement the gate judged a candidate on: a language model's next token on real
    text, else the task agreement on the validation inputs."""
    if candidate.next_token is not None:
        return f"next token {candidate.next_token.agreement:.4f}"
    return "-" if candidate.agreement is None else f"{candidate.agreement:.4f}"


def search_tables(manifest: Manifest) -> list[tuple[str, Table]]:
    """Per searched output: every candidate, what the gate said, how fast it ran here."""
    tables = []
    for out in manifest.outputs:
        search = out.search
        if search is None:
            continue
        shapes = list(dict.fromkeys(s for c in search.candidates for s in c.latency_ms))
        rows = tuple(
            (
                candidate.name,
                ", ".join(candidate.excluded_nodes) or "-",
                "yes" if candidate.passed else "no",
                _judged_agreement(candidate),
                *(
                    f"{candidate.latency_ms[s]:.2f}" if s in candidate.latency_ms else "-"
                    for s in shapes
                ),
                "yes" if candidate.chosen else "",
            )
            for candidate in search.candidates
        )
        headers = (
            "candidate",
            "left in float",
            "validated",
            "agreement",
            *(f"{s} p50 ms" for s in shapes),
            "chosen",
        )
        what = "optimization levels" if search.target == "optimize" else "settings"
        searched = search.target if search.target == "weight-only" else out.variant
        title = f"{searched} {what} tried, timed with {search.threads} threads"
        if search.note:
            title += f" ({search.note})"
        tables.append((title, Table(headers, rows, frozenset(range(3, 4 + len(shapes))))))
    return tables


def fusions_table(manifest: Manifest) -> Table | None:
    """The fused operators each optimization pass left in the published graphs."""
    rows = tuple(
        (out.file, p.name, f"{op} x{count}")
        for out in manifest.outputs
        for p in out.passes
        for op, count in sorted(p.details.get("fused_operators", {}).items())
    )
    return Table(("file", "pass", "fused operator"), rows) if rows else None


def machine_fact(manifest: Manifest) -> str | None:
    m = manifest.machine
    if m is None:
        return None
    return f"converted on: {m.cpu_model}, {m.logical_cpus} CPUs, {' '.join(m.isa) or 'no SIMD'}"


@dataclass(frozen=True)
class Section:
    """One part of a report, in the order both reports show it."""

    heading: str
    level: int = 2
    note: str | None = None
    items: tuple[str, ...] = ()
    """A bulleted list (facts, versions)."""
    tables: tuple[Table, ...] = ()
    plot: str | None = None
    """Which plot follows the tables (`PLOT_BENCHMARK` or `PLOT_SEARCH`), if any."""


PLOT_BENCHMARK = "benchmark"
PLOT_SEARCH = "search"


def sections(manifest: Manifest) -> list[Section]:
    """The report's parts below its title: what report.md and report.html both show."""
    found = [
        Section("", items=tuple(facts(manifest))),
        Section("Outputs", tables=(outputs_table(manifest),)),
        Section("Validation against PyTorch"),
        *validation_sections(manifest),
    ]
    searches = search_tables(manifest)
    found += [Section(f"Search: {title}", tables=(t,)) for title, t in searches]
    if searches:
        found[-1] = dataclasses.replace(found[-1], plot=PLOT_SEARCH)
    fusions = fusions_table(manifest)
    if fusions is not None:
        found.append(Section("Graph optimization", tables=(fusions,)))
    result = manifest.benchmark
    if result is not None:
        found.append(
            Section(
                "Benchmark",
                note=benchmark_note(result),
                tables=benchmark_tables(result),
                plot=PLOT_BENCHMARK,
            )
        )
        if result.generation is not None:
            found.append(
                Section(
                    "Benchmark: decode",
                    note=decode_note(result),
                    tables=(decode_table(result),),
                )
            )
    timings = Table(
        ("stage", "seconds"),
        tuple((k, f"{v:.2f}") for k, v in manifest.timings.items()),
        frozenset({1}),
    )
    found.append(Section("Timings", tables=(timings,)))
    if manifest.peak_rss_mb is not None:
        found.append(Section("", note=f"Peak memory (RSS): {manifest.peak_rss_mb:.0f} MB"))
    versions = tuple(f"{k}: {v}" for k, v in manifest.versions.items())
    found.append(Section("Versions", items=versions))
    return found
