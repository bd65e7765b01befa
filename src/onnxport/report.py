"""Render a `Manifest` as the reports beside every published model.

`report.md` (Markdown), `report.html` (one self-contained page: inline CSS, the plot as a
data URI) and, once a benchmark is recorded, `report.png` (median latency by sequence
length, one line per runtime, one panel per batch size). Everything is rendered from the
manifest alone, so `onnxport report OUT_DIR` can render them again at any time.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import html
import io
import os
from dataclasses import dataclass
from pathlib import Path

from onnxport.benchmark import PYTORCH, BenchmarkResult, Timing
from onnxport.errors import EXIT_BAD_INPUT, OnnxportError
from onnxport.manifest import (
    MANIFEST_FILENAME,
    REPORT_FILENAME,
    Manifest,
    read_manifest,
    verify_directory,
)

REPORT_HTML_FILENAME = "report.html"
REPORT_PLOT_FILENAME = "report.png"
REPORT_FILENAMES = (REPORT_FILENAME, REPORT_HTML_FILENAME, REPORT_PLOT_FILENAME)
_PLOT_DPI = 100
_LOG_SCALE_RATIO = 10.0

_CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1d2330;
       max-width: 1100px; margin: 2em auto; padding: 0 1.2em; }
h1 { font-size: 1.6em; margin-bottom: .3em; }
h2 { font-size: 1.25em; border-bottom: 1px solid #d8dde6; padding-bottom: .2em; margin-top: 1.8em; }
h3 { font-size: 1.05em; margin-bottom: .4em; }
table { border-collapse: collapse; margin: .6em 0 1.2em; font-size: .92em; }
th, td { border: 1px solid #d8dde6; padding: .3em .7em; text-align: left; }
th { background: #f1f4f8; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.ok { color: #17803d; font-weight: 600; }
.bad { color: #b42318; font-weight: 600; }
.faster { color: #17803d; }
.slower { color: #b42318; }
code { background: #f1f4f8; padding: 0 .25em; border-radius: 3px; }
img { max-width: 100%; border: 1px solid #d8dde6; }
.note { color: #5b6475; font-size: .9em; }
"""


class ReportError(OnnxportError):
    """The directory cannot be reported on; the user can fix it."""

    stage = "report"
    exit_code = EXIT_BAD_INPUT


@dataclass(frozen=True)
class _Table:
    headers: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    numeric: frozenset[int] = frozenset()
    """Column indexes right-aligned in HTML."""


def _size(num_bytes: int | None) -> str:
    if num_bytes is None:
        return "-"
    return f"{num_bytes / 1e6:.1f} MB"


def _facts(manifest: Manifest) -> list[str]:
    source = manifest.source
    facts = [
        f"source: `{source.path}` ({source.kind}, task {source.task}, "
        f"{source.num_parameters:,} parameters)",
        f"exporter: {manifest.export.exporter}, opset {manifest.export.opset}",
        f"created: {manifest.created_at} with onnxport {manifest.onnxport_version}",
    ]
    if manifest.conv_fp:
        facts.append(f"conversion fingerprint: `{manifest.conv_fp}`")
    facts += [f"{key}: `{value}`" for key, value in sorted(manifest.lineage.items())]
    return facts


def _outputs_table(manifest: Manifest) -> _Table:
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
                _size(out.total_size_bytes),
                validated,
                agreement,
            )
        )
    headers = ("file", "variant", "published", "size", "validated", "task agreement")
    return _Table(headers, tuple(rows), frozenset({3}))


def _validation_tables(manifest: Manifest) -> list[tuple[str, _Table]]:
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
        table = _Table(headers, rows, frozenset({1, 2}))
        tables.append((f"{out.variant} (shapes {shapes})", table))
    return tables


def _speedup(result: BenchmarkResult, timing: Timing) -> str:
    if timing.runtime == PYTORCH:
        return "reference"
    ratio = result.speedup(timing)
    return "-" if ratio is None else f"{ratio:.2f}x"


def latency_row(result: BenchmarkResult, t: Timing) -> tuple[str, ...]:
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


def _benchmark_tables(result: BenchmarkResult) -> tuple[_Table, _Table]:
    runtimes = _Table(
        ("runtime", "engine", "file", "size", "load s", "RSS growth after warm-up"),
        tuple(
            (
                r.name,
                r.engine,
                r.file or "-",
                _size(r.size_bytes),
                f"{r.load_seconds:.2f}",
                "-" if r.rss_growth_mb is None else f"{r.rss_growth_mb:.0f} MB",
            )
            for r in result.runtimes
        ),
        frozenset({3, 4, 5}),
    )
    order = {r.name: i for i, r in enumerate(result.runtimes)}
    timings = sorted(result.timings, key=lambda t: (t.batch_size, t.size, order.get(t.runtime, 0)))
    latency = _Table(
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


def _benchmark_note(result: BenchmarkResult) -> str:
    s = result.settings
    versions = ", ".join(f"{k} {v}" for k, v in result.versions.items())
    return (
        f"Measured {result.created_at} on {result.machine.get('cpu_model')} "
        f"({result.machine.get('logical_cpus')} logical CPUs), {s.threads} threads "
        f"({result.machine.get('threading')}). {s.iterations} timed runs per runtime and "
        f"shape after {s.warmup} warm-up runs, interleaved (each iteration runs every runtime "
        f"once, in rotating order) on the same inputs ({result.inputs}); {versions}."
    )


def _benchmark(manifest: Manifest) -> BenchmarkResult | None:
    return None if manifest.benchmark is None else BenchmarkResult.from_dict(manifest.benchmark)


# --------------------------------------------------------------------------- Markdown


def _markdown_table(table: _Table) -> list[str]:
    lines = ["| " + " | ".join(table.headers) + " |", "|" + "---|" * len(table.headers)]
    lines += ["| " + " | ".join(row) + " |" for row in table.rows]
    return lines


def render_markdown(manifest: Manifest) -> str:
    lines = [f"# onnxport conversion: {manifest.source.architecture}", ""]
    lines += [f"- {fact}" for fact in _facts(manifest)]
    lines += ["", "## Outputs", "", *_markdown_table(_outputs_table(manifest))]
    lines += ["", "## Validation against PyTorch", ""]
    for title, table in _validation_tables(manifest):
        lines += [f"### {title}", "", *_markdown_table(table), ""]
    result = _benchmark(manifest)
    if result is not None:
        runtimes, latency = _benchmark_tables(result)
        lines += ["## Benchmark", "", _benchmark_note(result), ""]
        lines += [*_markdown_table(runtimes), "", *_markdown_table(latency), ""]
        lines += [f"![median latency by {result.size_name}]({REPORT_PLOT_FILENAME})", ""]
    lines += ["## Timings", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.2f} |" for k, v in manifest.timings.items()]
    if manifest.peak_rss_mb is not None:
        lines += ["", f"Peak memory (RSS): {manifest.peak_rss_mb:.0f} MB"]
    lines += ["", "## Versions", ""]
    lines += [f"- {k}: {v}" for k, v in manifest.versions.items()]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------- plot


def render_plot(manifest: Manifest) -> bytes | None:
    """The latency plot as PNG bytes; None when no benchmark is recorded."""
    result = _benchmark(manifest)
    if result is None:
        return None
    from matplotlib.figure import Figure  # no pyplot: no global backend, no display needed

    batches = sorted({t.batch_size for t in result.timings})
    figure = Figure(figsize=(4.6 * len(batches), 3.6), dpi=_PLOT_DPI, layout="constrained")
    axes = figure.subplots(1, len(batches), squeeze=False)[0]
    for ax, batch in zip(axes, batches):
        for runtime in result.runtimes:
            points = sorted(
                (t.size, t.p50_ms)
                for t in result.timings
                if t.runtime == runtime.name and t.batch_size == batch
            )
            label = "PyTorch eager" if runtime.name == PYTORCH else f"ONNX {runtime.name}"
            ax.plot(*zip(*points), marker="o", label=label)
        ax.set_title(f"batch {batch}")
        ax.set_xlabel(result.size_name)
        latencies = [t.p50_ms for t in result.timings if t.batch_size == batch]
        if max(latencies) > _LOG_SCALE_RATIO * min(latencies):
            ax.set_yscale("log")  # else the fast runtimes' lines lie flat on the axis
            ax.set_ylabel("median latency (ms, log scale)")
        else:
            ax.set_ylim(bottom=0)
            ax.set_ylabel("median latency (ms)")
        ax.grid(alpha=0.3)
    axes[0].legend()
    figure.suptitle(f"{manifest.source.architecture}: {result.settings.threads} threads")
    buffer = io.BytesIO()
    # No Software tag: the same manifest renders the same bytes, so checksums stay stable.
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


# ------------------------------------------------------------------------------- HTML


def _inline(text: str) -> str:
    """Markdown-ish `code` spans of our own fact lines, HTML-escaped."""
    parts = html.escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def _cell_class(header: str, value: str, numeric: bool) -> str:
    classes = ["num"] if numeric else []
    if header in ("validated", "within tolerance") and value in ("yes", "no", "NO"):
        classes.append("ok" if value == "yes" else "bad")
    if header.startswith("speed-up") and value.endswith("x"):
        classes.append("faster" if float(value[:-1]) >= 1.0 else "slower")
    return f' class="{" ".join(classes)}"' if classes else ""


def _html_table(table: _Table) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table.headers)
    body = "".join(
        "<tr>"
        + "".join(
            f"<td{_cell_class(h, v, i in table.numeric)}>{html.escape(v)}</td>"
            for i, (h, v) in enumerate(zip(table.headers, row))
        )
        + "</tr>"
        for row in table.rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(manifest: Manifest, plot: bytes | None = None) -> str:
    """One self-contained page: no script, no external stylesheet or image."""
    title = f"onnxport conversion: {manifest.source.architecture}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        "<ul>" + "".join(f"<li>{_inline(f)}</li>" for f in _facts(manifest)) + "</ul>",
        "<h2>Outputs</h2>",
        _html_table(_outputs_table(manifest)),
        "<h2>Validation against PyTorch</h2>",
    ]
    for heading, table in _validation_tables(manifest):
        parts += [f"<h3>{html.escape(heading)}</h3>", _html_table(table)]
    result = _benchmark(manifest)
    if result is not None:
        runtimes, latency = _benchmark_tables(result)
        parts += [
            "<h2>Benchmark</h2>",
            f'<p class="note">{html.escape(_benchmark_note(result))}</p>',
            _html_table(runtimes),
            _html_table(latency),
        ]
        if plot is not None:
            data = base64.b64encode(plot).decode("ascii")
            parts.append(
                f'<img src="data:image/png;base64,{data}" '
                f'alt="median latency by {html.escape(result.size_name)}, per batch size">'
            )
    timings = _Table(
        ("stage", "seconds"),
        tuple((k, f"{v:.2f}") for k, v in manifest.timings.items()),
        frozenset({1}),
    )
    parts += ["<h2>Timings</h2>", _html_table(timings)]
    if manifest.peak_rss_mb is not None:
        parts.append(f"<p>Peak memory (RSS): {manifest.peak_rss_mb:.0f} MB</p>")
    parts += [
        "<h2>Versions</h2>",
        "<ul>"
        + "".join(
            f"<li>{html.escape(k)}: {html.escape(v)}</li>" for k, v in manifest.versions.items()
        )
        + "</ul>",
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


# ---------------------------------------------------------------------------- writing


def render_reports(manifest: Manifest) -> dict[str, bytes]:
    """File name -> content of every report file the manifest calls for."""
    plot = render_plot(manifest)
    files = {
        REPORT_FILENAME: render_markdown(manifest).encode("utf-8"),
        REPORT_HTML_FILENAME: render_html(manifest, plot).encode("utf-8"),
    }
    if plot is not None:
        files[REPORT_PLOT_FILENAME] = plot
    return files


def write_reports(directory: Path, manifest: Manifest) -> Manifest:
    """Render the reports into a published `directory`, and the manifest with their checksums.

    Each file is written to a temporary name and moved into place with `os.replace`, the
    manifest last. Returns the manifest as written.
    """
    directory = Path(directory)
    contents = render_reports(manifest)
    checksums = dict(manifest.files)
    checksums.update({name: hashlib.sha256(data).hexdigest() for name, data in contents.items()})
    updated = manifest.model_copy(update={"files": dict(sorted(checksums.items()))})
    contents[MANIFEST_FILENAME] = updated.to_json().encode("utf-8")
    temporary = {name: directory / f".{name}.tmp-{os.getpid()}" for name in contents}
    try:
        for name, data in contents.items():
            temporary[name].write_bytes(data)
        for name in contents:  # the manifest was added last
            os.replace(temporary[name], directory / name)
    except OSError as e:
        for path in temporary.values():
            with contextlib.suppress(OSError):
                path.unlink()
        raise ReportError(f"cannot write the reports in {directory}: {e.strerror or e}") from e
    return updated


def rerender_reports(directory: Path) -> Manifest:
    """Render the reports of a published directory again from its manifest."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ReportError(
            f"{directory} is not a directory", hint="pass the output directory of onnxport convert"
        )
    try:
        manifest = read_manifest(directory)
    except OnnxportError as e:
        raise ReportError(e.message, hint=e.hint) from e
    # Missing or edited report files are what rendering repairs; anything else is damage.
    problems = [p for p in verify_directory(directory) if not p.startswith(REPORT_FILENAMES)]
    if problems:
        raise ReportError(
            f"{directory} is damaged: {'; '.join(problems[:3])}", hint="convert again"
        )
    return write_reports(directory, manifest)
