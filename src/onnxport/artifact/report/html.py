"""`report.html`: one self-contained page (inline CSS, the plot as a data URI, no script)."""

from __future__ import annotations

import base64
import html

from onnxport.artifact.manifest import Manifest
from onnxport.artifact.report.table import Table
from onnxport.artifact.report.tables import PLOT_BENCHMARK, PLOT_SEARCH, sections

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


def _html_table(table: Table) -> str:
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


def _image(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


def render_html(
    manifest: Manifest, plot: bytes | None = None, search_plot: bytes | None = None
) -> str:
    """One self-contained page: no script, no external stylesheet or image."""
    title = f"onnxport conversion: {manifest.source.architecture}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    size_name = manifest.benchmark.size_name if manifest.benchmark else "input size"
    plots = {
        PLOT_BENCHMARK: (plot, f"median latency by {size_name}, per batch size"),
        PLOT_SEARCH: (search_plot, "median latency of the search's candidates"),
    }
    for section in sections(manifest):
        if section.heading:
            h = f"h{section.level}"
            parts.append(f"<{h}>{html.escape(section.heading)}</{h}>")
        if section.note:
            parts.append(f'<p class="note">{html.escape(section.note)}</p>')
        if section.items:
            items = "".join(f"<li>{_inline(item)}</li>" for item in section.items)
            parts.append(f"<ul>{items}</ul>")
        parts += [_html_table(table) for table in section.tables]
        png, alt = plots.get(section.plot or "", (None, ""))
        if png is not None:
            parts.append(_image(png, alt))
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
