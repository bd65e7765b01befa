"""`onnxport verify OUT_DIR` and `onnxport verify model.onnx --against CHECKPOINT`: run a
conversion's proof again (`onnxport.verify.proof`), render it, exit 0 proven, 1 refused,
2 bad input."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from onnxport.artifact.records.validation import OutputComparisonRecord
from onnxport.artifact.records.verification import VerificationRecord
from onnxport.artifact.report.labels import generation_label
from onnxport.commands.console import literal, print_path, setup_logging, stdout
from onnxport.commands.flags import FlagNames
from onnxport.errors import VerifyError, VerifyInputError

_ANY_ONNX = "pass a directory onnxport published, or an .onnx file with --against CHECKPOINT"
FLAGS = FlagNames(arguments={"against=CHECKPOINT": "--against CHECKPOINT"})
"""What `verify` takes as flags, said in the errors it prints (`commands.flags`)."""


def verify_command(
    target: Annotated[
        Path,
        typer.Argument(help="A directory onnxport published, or an ONNX file (with --against)."),
    ],
    against: Annotated[
        Path | None,
        typer.Option(
            help="The checkpoint to prove against; a directory's default: the one its "
            "manifest records."
        ),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            help="A conversion.yaml with the source and validation settings for an ONNX "
            "file (a directory's manifest holds its own).",
        ),
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log each step.")] = False,
) -> None:
    """Prove again that published models compute what their checkpoint computes: checksums,
    then every model against PyTorch in float32 and float64, by the conversion's rules."""
    from onnxport.request.config import load_conversion_config
    from onnxport.verify.proof import verify_onnx_file, verify_published

    setup_logging(verbose)
    if target.is_dir():
        if config is not None:
            raise VerifyInputError(
                "--config is for an ONNX file: a published directory is verified with the "
                "settings its manifest holds",
                hint="leave --config out",
            )
        record = verify_published(target, against=against)
    elif not target.exists():
        raise VerifyInputError(f"{target} does not exist", hint=_ANY_ONNX)
    elif against is None:
        raise VerifyInputError(
            f"{target} is a file: verifying it needs the checkpoint it was exported from",
            hint=f"onnxport verify {target} --against CHECKPOINT",
        )
    else:
        settings = load_conversion_config(config) if config is not None else None
        record = verify_onnx_file(target, against=against, config=settings)
    if json_output:
        stdout.print_json(record.model_dump_json())
    else:
        print_verification(record)
    if record.checksum_problems:
        raise VerifyError(
            f"{target} is not what its manifest proved: {'; '.join(record.checksum_problems[:3])}",
            hint="its models were not run; convert again, or copy the directory again",
        )
    refused = [m for m in record.models if not m.proven]
    if refused:
        raise VerifyError(
            "refused: " + " | ".join(m.refusal() for m in refused),
            hint="do not promote it"
            + (f"; onnxport debug {target} compares node by node" if target.is_dir() else ""),
        )


def print_verification(record: VerificationRecord) -> None:
    """Against what, the checksums' verdict for a directory, then the models' table (not
    run when the checksums refused the directory)."""
    print_path(stdout, "against", record.against)
    if record.files:
        if record.checksum_problems:
            mark = f"[red]✗[/red] {len(record.checksum_problems)} of {record.files} files"
        else:
            mark = f"[green]✓[/green] {record.files} files"
        stdout.print(f"[dim]checksums:[/dim] {mark}", highlight=False)
    if not record.checksum_problems:
        stdout.print(verification_table(record))


def verification_table(record: VerificationRecord) -> Table:
    """Per model and output: ONNX's and PyTorch's own error against float64 at the worst
    validation input, their ratio against its limit (or the tolerance's figures), the task
    agreement, the verdict. Every cell from the record is literal text."""
    table = Table(
        title=literal(f"onnxport verify: {record.target}"),
        caption=literal("\n".join(record.notes)) if record.notes else None,
    )
    # Names wrap, figures never: the table fits a 120-column log.
    for column in ("file", "variant", "output"):
        table.add_column(column, overflow="fold")
    for column in ("shape", "ONNX err", "PyTorch err", "ratio", "limit"):
        table.add_column(column, no_wrap=True)
    for column in ("agreement", "verdict"):
        table.add_column(column)
    for model in record.models:
        v = model.validation
        agreement = f"{v.task_agreement.value:.4f} ≥ {v.task_agreement.minimum:g}"
        if v.task_metric is not None:
            agreement += f"\n{v.task_metric.metric} {v.task_metric.value:.4f}"
        if v.generation is not None:
            agreement += f"\n{generation_label(v.generation)}"
        verdict = Text("✓ proven", "green") if model.proven else Text("✗ refused", "red")
        for i, (name, output) in enumerate(v.outputs.items()):
            first = i == 0
            table.add_row(
                literal(model.file if first else ""),
                literal(model.variant if first else ""),
                literal(name),
                *_figures(output),
                literal(agreement if first else ""),
                verdict if first else "",
            )
    return table


def _figures(output: OutputComparisonRecord) -> tuple[str, str, str, str, str]:
    """shape, ONNX error, PyTorch's error, ratio, limit: the budget's at the input where the
    ratio is worst, else the tolerance's largest difference."""
    if not output.budget:
        return (
            "x".join(map(str, output.worst_shape)),
            f"{output.max_abs_diff:.2e}",
            "-",
            "-",
            f"atol {output.atol:g}, rtol {output.rtol:g}",
        )
    worst = max(output.budget, key=lambda b: b.ratio)
    limit = f"≤ {output.max_error_ratio:g}" if output.max_error_ratio is not None else "recorded"
    return (
        "x".join(map(str, worst.shape)),
        f"{worst.onnx_max:.2e}",
        f"{worst.pytorch_max:.2e}",
        f"{worst.ratio:.3g}",
        limit,
    )
