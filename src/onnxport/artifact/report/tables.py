"""The report's content as tables of strings, rendered alike in Markdown, HTML and the
terminal: what the manifest says about the outputs, their validation and the benchmark."""

from __future__ import annotations

from dataclasses import dataclass

from onnxport.artifact.manifest import Manifest
from onnxport.artifact.records import PYTORCH, BenchmarkRecord, TimingRecord


@dataclass(frozen=True)
class Table:
    headers: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    numeric: frozenset[int] = frozenset()
    """Column indexes right-aligned in HTML."""


def size(num_bytes: int | None) -> str:
    if num_bytes is None:
        return "-"
    return f"{num_bytes / 1e6:.1f} MB"


def _from_cache(manifest: Manifest) -> str:
    cache = manifest.export.cache
    if cache is None or cache.status != "hit":
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
        validated = "-" if v is None else ("yes" if v.passed else "NO")
        rows.append(
            (
                out.file,
                out.variant,
                "yes" if out.published else "no",
                size(out.total_size_bytes),
                validated,
                agreement,
            )
        )
    headers = ("file", "variant", "published", "size", "validated", "task agreement")
    return Table(headers, tuple(rows), frozenset({3}))


def validation_tables(manifest: Manifest) -> list[tuple[str, Table]]:
    tables = []
    for out in manifest.outputs:
        if out.validation is None:
            continue
        shapes = ", ".join(str(s) for s in out.validation.shapes)
        rows = tuple(
            (
                name,
                f"{c.max_abs_diff:.3g}",
                f"{c.max_rel_diff:.3g}",
                f"{c.atol:g}",
                f"{c.rtol:g}",
                "yes" if c.passed else "no",
            )
            for name, c in out.validation.outputs.items()
        )
        headers = ("output", "max abs diff", "max rel diff", "atol", "rtol", "within tolerance")
        table = Table(headers, rows, frozenset({1, 2}))
        tables.append((f"{out.variant} (shapes {shapes})", table))
    return tables


def _speedup(result: BenchmarkRecord, timing: TimingRecord) -> str:
    if timing.runtime == PYTORCH:
        return "reference"
    ratio = result.speedup(timing)
    return "-" if ratio is None else f"{ratio:.2f}x"


def latency_row(result: BenchmarkRecord, t: TimingRecord) -> tuple[str, ...]:
    """One row of the latency table, as the report and the terminal both show it."""
    return (
        str(t.batch_size),
        str(t.size),
        t.runtime,
        f"{t.p50_ms:.2f}",
        f"{t.p90_ms:.2f}",
        f"{t.p99_ms:.2f}",
        f"{t.throughput:.1f}",
        _speedup(result, t),
    )


def benchmark_tables(result: BenchmarkRecord) -> tuple[Table, Table]:
    runtimes = Table(
        ("runtime", "engine", "file", "size", "load s", "RSS growth after warm-up"),
        tuple(
            (
                r.name,
                r.engine,
                r.file or "-",
                size(r.size_bytes),
                f"{r.load_seconds:.2f}",
                "-" if r.rss_growth_mb is None else f"{r.rss_growth_mb:.0f} MB",
            )
            for r in result.runtimes
        ),
        frozenset({3, 4, 5}),
    )
    order = {r.name: i for i, r in enumerate(result.runtimes)}
    timings = sorted(result.timings, key=lambda t: (t.batch_size, t.size, order.get(t.runtime, 0)))
    latency = Table(
        (
            "batch",
            result.size_name,
            "runtime",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "samples/s",
            "speed-up vs PyTorch (p50)",
        ),
        tuple(latency_row(result, t) for t in timings),
        frozenset({0, 1, 3, 4, 5, 6, 7}),
    )
    return runtimes, latency


def benchmark_note(result: BenchmarkRecord) -> str:
    s = result.settings
    versions = ", ".join(f"{k} {v}" for k, v in result.versions.items())
    return (
        f"Measured {result.created_at} on {result.machine.get('cpu_model')} "
        f"({result.machine.get('logical_cpus')} logical CPUs), {s.threads} threads "
        f"({result.machine.get('threading')}). {s.iterations} timed runs per runtime and "
        f"shape after {s.warmup} warm-up runs, interleaved (each iteration runs every runtime "
        f"once, in rotating order) on the same inputs ({result.inputs}); {versions}."
    )


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
                "-" if candidate.agreement is None else f"{candidate.agreement:.4f}",
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
        title = f"{out.variant}: {search.target} search, {search.threads} threads"
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
