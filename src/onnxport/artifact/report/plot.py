"""`report.png`: median latency by sequence length (or image size), one line per runtime,
one panel per batch size; rendered only once a benchmark is recorded."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

from onnxport.artifact.manifest import Manifest
from onnxport.artifact.records.benchmark import PYTORCH
from onnxport.artifact.report.tables import candidate_label

if TYPE_CHECKING:
    from matplotlib.figure import Figure

_PLOT_DPI = 100
_LOG_SCALE_RATIO = 10.0


def render_plot(manifest: Manifest) -> bytes | None:
    """The latency plot as PNG bytes; None when no benchmark is recorded."""
    result = manifest.benchmark
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
    title = f"{manifest.source.architecture}: {result.settings.threads} threads"
    if result.unstable:  # the lines are drawn, but no one should read a speed-up off them
        title += "\nunstable timings (see the report): no speed-up claimed"
    figure.suptitle(title, color="firebrick" if result.unstable else None)
    buffer = io.BytesIO()
    # No Software tag: the same manifest renders the same bytes, so checksums stay stable.
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def render_search_plot(manifest: Manifest) -> bytes | None:
    """The candidates of every search, their median latency per input shape as bars; None
    when no search ran. Embedded in report.html."""
    figure = search_figure(manifest)
    if figure is None:
        return None
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def search_figure(manifest: Manifest) -> Figure | None:
    """The figure `render_search_plot` draws; None when no search timed a candidate."""
    searches = [(out.variant, out.search) for out in manifest.outputs if out.search]
    timed = [(v, s) for v, s in searches if any(c.latency_ms for c in s.candidates)]
    if not timed:
        return None
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5.2 * len(timed), 3.8), dpi=_PLOT_DPI, layout="constrained")
    axes = figure.subplots(1, len(timed), squeeze=False)[0]
    for ax, (variant, search) in zip(axes, timed):
        candidates = [c for c in search.candidates if c.latency_ms]
        shapes = list(dict.fromkeys(s for c in candidates for s in c.latency_ms))
        width = 0.8 / len(candidates)
        for i, candidate in enumerate(candidates):
            ax.bar(
                [x + i * width for x in range(len(shapes))],
                [candidate.latency_ms.get(s, 0.0) for s in shapes],
                width,
                label=candidate_label(candidate) + (" (chosen)" if candidate.chosen else ""),
            )
        ax.set_xticks([x + width * (len(candidates) - 1) / 2 for x in range(len(shapes))], shapes)
        ax.set_xlabel("input (batch x length)")
        ax.set_ylabel("median latency (ms)")
        ax.set_title(f"{variant}: {search.target} candidates that passed")
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize="small")
    return figure
