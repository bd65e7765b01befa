"""`report.md`: the manifest as Markdown."""

from __future__ import annotations

from onnxport.artifact.manifest import Manifest
from onnxport.artifact.report.table import Table
from onnxport.artifact.report.tables import PLOT_BENCHMARK, sections

REPORT_PLOT_FILENAME = "report.png"


def _markdown_table(table: Table) -> list[str]:
    lines = ["| " + " | ".join(table.headers) + " |", "|" + "---|" * len(table.headers)]
    lines += ["| " + " | ".join(row) + " |" for row in table.rows]
    return lines


def render_markdown(manifest: Manifest) -> str:
    lines = [f"# onnxport conversion: {manifest.source.architecture}"]
    for section in sections(manifest):
        lines.append("")
        if section.heading:
            lines += ["#" * section.level + " " + section.heading, ""]
        if section.note:
            lines += [section.note, ""]
        lines += [f"- {item}" for item in section.items]
        for table in section.tables:
            lines += [*_markdown_table(table), ""]
        if section.plot == PLOT_BENCHMARK and manifest.benchmark is not None:
            size_name = manifest.benchmark.size_name
            lines += [f"![median latency by {size_name}]({REPORT_PLOT_FILENAME})", ""]
    return "\n".join(line for line in _single_blank_lines(lines)).rstrip("\n") + "\n"


def _single_blank_lines(lines: list[str]) -> list[str]:
    kept: list[str] = []
    for line in lines:
        if not (line == "" and kept and kept[-1] == ""):
            kept.append(line)
    return kept
