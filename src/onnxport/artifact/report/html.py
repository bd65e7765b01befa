"""`report.html`: one self-contained page (inline CSS, the plot as a data URI, no script)."""

from __future__ import annotations

import base64
import html

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
        "<ul>" + "".join(f"<li>{_inline(f)}</li>" for f in facts(manifest)) + "</ul>",
        "<h2>Outputs</h2>",
        _html_table(outputs_table(manifest)),
        "<h2>Validation against PyTorch</h2>",
    ]
    for heading, table in validation_tables(manifest):
        parts += [f"<h3>{html.escape(heading)}</h3>", _html_table(table)]
    for heading, table in search_tables(manifest):
        parts += [f"<h2>Search: {html.escape(heading)}</h2>", _html_table(table)]
    if search_plot is not None:
        parts.append(_image(search_plot, "median latency of the search's candidates"))
    fusions = fusions_table(manifest)
    if fusions is not None:
        parts += ["<h2>Graph optimization</h2>", _html_table(fusions)]
    result = manifest.benchmark
    if result is not None:
        runtimes, latency = benchmark_tables(result)
        parts += [
            "<h2>Benchmark</h2>",
            f'<p class="note">{html.escape(benchmark_note(result))}</p>',
            _html_table(runtimes),
            _html_table(latency),
        ]
        if plot is not None:
            parts.append(_image(plot, f"median latency by {result.size_name}, per batch size"))
    timings = Table(
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
