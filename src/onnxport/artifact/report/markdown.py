"""`report.md`: the manifest as Markdown."""

from __future__ import annotations

from onnxport.artifact.manifest import Manifest
from onnxport.artifact.report.tables import (
    Table,
    benchmark_note,
    benchmark_tables,
    facts,
    fusions_table,
    outputs_table,
    search_tables,
    validation_tables,
)

REPORT_PLOT_FILENAME = "report.png"


def _markdown_table(table: Table) -> list[str]:
    lines = ["| " + " | ".join(table.headers) + " |", "|" + "---|" * len(table.headers)]
    lines += ["| " + " | ".join(row) + " |" for row in table.rows]
    return lines


def render_markdown(manifest: Manifest) -> str:
    lines = [f"# onnxport conversion: {manifest.source.architecture}", ""]
    lines += [f"- {fact}" for fact in facts(manifest)]
    lines += ["", "## Outputs", "", *_markdown_table(outputs_table(manifest))]
    lines += ["", "## Validation against PyTorch", ""]
    for title, table in validation_tables(manifest):
        lines += [f"### {title}", "", *_markdown_table(table), ""]
    for title, table in search_tables(manifest):
        lines += [f"## Search: {title}", "", *_markdown_table(table), ""]
    fusions = fusions_table(manifest)
    if fusions is not None:
        lines += ["## Graph optimization", "", *_markdown_table(fusions), ""]
    result = manifest.benchmark
    if result is not None:
        runtimes, latency = benchmark_tables(result)
        lines += ["## Benchmark", "", benchmark_note(result), ""]
        lines += [*_markdown_table(runtimes), "", *_markdown_table(latency), ""]
        lines += [f"![median latency by {result.size_name}]({REPORT_PLOT_FILENAME})", ""]
    lines += ["## Timings", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.2f} |" for k, v in manifest.timings.items()]
    if manifest.peak_rss_mb is not None:
        lines += ["", f"Peak memory (RSS): {manifest.peak_rss_mb:.0f} MB"]
    lines += ["", "## Versions", ""]
    lines += [f"- {k}: {v}" for k, v in manifest.versions.items()]
    return "\n".join(lines) + "\n"
