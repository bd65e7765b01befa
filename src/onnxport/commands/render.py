"""Terminal rendering of progress and manifests (rich). Only the CLI imports this module."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from onnxport.artifact.manifest import Manifest
from onnxport.artifact.report.labels import error_ratio_label, generation_label, shapes_label
from onnxport.artifact.report.table import Table as ReportTable
from onnxport.artifact.report.tables import resolution_note, search_tables
from onnxport.commands.console import literal, print_path
from onnxport.progress import Stage, StageEvent, Status


class ProgressPrinter:
    """One line per stage as it starts and ends, after `indent` (the demo nests them); a
    stage that runs inside another (logging to MLflow, inside publishing) two spaces in."""

    def __init__(self, console: Console, indent: str = "") -> None:
        self.console = console
        self.indent = indent
        self.running: list[Stage] = []

    def __call__(self, event: StageEvent) -> None:
        label = event.stage.label
        if event.status in (Status.DONE, Status.FAILED) and event.stage in self.running:
            self.running.remove(event.stage)
        indent = self.indent + "  " * len(self.running)
        if event.status is Status.START:
            self.running.append(event.stage)
            line = f"[dim]…[/dim] {label}"
            if event.detail:
                line += f" [dim]({escape(event.detail)})[/dim]"
        elif event.status is Status.DONE:
            line = f"[green]✓[/green] {label} [dim]{event.seconds:.1f} s[/dim]"
        else:
            line = f"[red]✗[/red] {label} [dim]{event.seconds:.1f} s[/dim]"
        self.console.print(indent + line, highlight=False)


class ChildLines:
    """A conversion child's log lines: shown with `verbose`, dropped otherwise (its
    warnings and errors reach this process's logging as records, shown either way)."""

    def __init__(self, console: Console, verbose: bool, indent: str = "") -> None:
        self.console = console
        self.verbose = verbose
        self.indent = indent

    def __call__(self, line: str) -> None:
        if self.verbose:
            # Literal and unfolded: a library's line keeps its brackets and stays one line.
            self.console.print(literal(self.indent + line, "dim"), highlight=False, soft_wrap=True)


def _mb(num: int | None) -> str:
    return "-" if num is None else f"{num / 1e6:.1f} MB"


def print_manifest(console: Console, manifest: Manifest, output_dir: object) -> None:
    """Where the conversion is, on a line of its own, then its tables."""
    print_path(console, "output", output_dir)
    for table in manifest_tables(manifest):
        console.print(table)


def manifest_tables(manifest: Manifest) -> list[Table]:
    """The outputs with their validation, any variant search, and the seconds per stage.
    Every cell from the manifest is literal text (`console.literal`)."""
    note = resolution_note(manifest)
    outputs = Table(
        title=literal(f"onnxport: {manifest.source.architecture}"),
        caption=literal(note) if note else None,
    )
    # "÷ PyTorch": the ONNX model's error against float64 over PyTorch's own, and its limit.
    columns = ("file", "variant", "size", "valid", "shapes", "max |Δ|", "÷ PyTorch", "agreement")
    for column in columns:
        outputs.add_column(column, no_wrap=column in ("file", "size", "max |Δ|", "÷ PyTorch"))
    for out in manifest.outputs:
        v = out.validation
        if v is None:
            outputs.add_row(
                literal(out.file),
                literal(out.variant),
                _mb(out.total_size_bytes),
                "-",
                "-",
                "-",
                "-",
                "-",
            )
            continue
        worst = max((c.max_abs_diff for c in v.outputs.values()), default=0.0)
        mark = Text("✓", style="green") if v.passed else Text("✗", style="red")
        if not out.published:
            mark.append(" (not published)")
        outputs.add_row(
            literal(out.file),
            literal(out.variant),
            _mb(out.total_size_bytes),
            mark,
            literal(shapes_label(v)),
            f"{worst:.2e}",
            literal(error_ratio_label(v)),
            literal(
                f"{v.task_agreement.value:.4f} ≥ {v.task_agreement.minimum:g}"
                + (f"\n{_metric(v.task_metric)}" if v.task_metric else "")
                + (f"\n{generation_label(v.generation)}" if v.generation else "")
                + (f"\n{v.next_token.summary()}" if v.next_token else "")
            ),
        )
    searches = [_rich(table, title) for title, table in search_tables(manifest)]
    timings = Table(title="seconds per stage")
    for stage in manifest.timings:
        timings.add_column(literal(stage), justify="right")
    timings.add_row(*(f"{v:.2f}" for v in manifest.timings.values()))
    return [outputs, *searches, timings]


def _rich(table: ReportTable, title: str) -> Table:
    """A report table for the terminal."""
    rendered = Table(title=literal(title))
    for i, header in enumerate(table.headers):
        rendered.add_column(literal(header), justify="right" if i in table.numeric else "left")
    for row in table.rows:
        rendered.add_row(*(literal(cell) for cell in row))
    return rendered


def _metric(metric) -> str:
    """The labelled-set score beside PyTorch's: `entity_f1 0.9769 (PyTorch 0.9753)`."""
    return f"{metric.metric} {metric.value:.4f} (PyTorch {metric.pytorch:.4f})"
