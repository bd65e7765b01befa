"""Render a `Manifest` as the reports beside every published model.

`report.md` (Markdown), `report.html` (one self-contained page: inline CSS, the plot as a
data URI) and, once a benchmark is recorded, `report.png` (median latency by sequence
length, one line per runtime, one panel per batch size). Everything is rendered from the
manifest alone, so `onnxport report OUT_DIR` can render them again at any time.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path

from onnxport.artifact.manifest import (
    MANIFEST_FILENAME,
    REPORT_FILENAME,
    Manifest,
)
from onnxport.artifact.reader import PublishedDirectory
from onnxport.artifact.report.html import render_html
from onnxport.artifact.report.markdown import REPORT_PLOT_FILENAME, render_markdown
from onnxport.artifact.report.plot import render_plot, render_search_plot
from onnxport.errors import ReportError

REPORT_HTML_FILENAME = "report.html"
REPORT_FILENAMES = (REPORT_FILENAME, REPORT_HTML_FILENAME, REPORT_PLOT_FILENAME)


def render_reports(manifest: Manifest) -> dict[str, bytes]:
    """File name -> content of every report file the manifest calls for."""
    plot = render_plot(manifest)
    files = {
        REPORT_FILENAME: render_markdown(manifest).encode("utf-8"),
        REPORT_HTML_FILENAME: render_html(manifest, plot, render_search_plot(manifest)).encode(
            "utf-8"
        ),
    }
    if plot is not None:
        files[REPORT_PLOT_FILENAME] = plot
    return files


def write_reports(directory: Path, manifest: Manifest) -> Manifest:
    """Render the reports into `directory`, and the manifest with their checksums beside the
    others it holds: the one way a manifest is written, when a conversion is sealed
    (`publish.seal`) and when a benchmark or `onnxport report` changes it.

    Each file is written to a temporary name and moved into place with `os.replace`, the
    manifest last, so that no reader of a published directory sees a half-written file.
    Returns the manifest as written.
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
    """Render the reports of a published directory again from its manifest. Missing or
    edited report files are what rendering repairs; any other damage refuses."""
    published = PublishedDirectory.open(directory, tolerate=REPORT_FILENAMES)
    return write_reports(published.path, published.manifest)
