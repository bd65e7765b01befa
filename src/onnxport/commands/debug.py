"""`onnxport debug OUT_DIR`: where does each published model part ways with its reference?
The comparison is the library's (`onnxport.verify.divergence.published`); this renders it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from onnxport.commands.console import literal, setup_logging
from onnxport.verify.divergence.published import DEFAULT_LENGTH


def debug_command(
    output_dir: Annotated[Path, typer.Argument(help="A converted output directory.")],
    length: Annotated[
        int, typer.Option(help="Sequence length of the input compared.")
    ] = DEFAULT_LENGTH,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Compare every published model node by node: fp32 with PyTorch (by the yardstick its
    validation recorded), each variant with the fp32 graph it was made from."""
    from onnxport.verify.divergence.published import published_divergences

    setup_logging(verbose=False)
    found = published_divergences(output_dir, length=length)
    if json_output:
        print(json.dumps({k: v.model_dump(mode="json") for k, v in found.items()}, indent=2))
        return
    table = Table(title=literal(f"onnxport debug: {output_dir}"))
    for column in ("variant", "against", "values compared", "finding"):
        table.add_column(column)
    for variant, divergence in found.items():
        finding = divergence.summary() if divergence.first or divergence.note else "no divergence"
        # A remedy holds brackets (`quantize.nodes_to_exclude: [node]`): never markup.
        table.add_row(variant, divergence.against, str(divergence.compared), literal(finding))
    Console(width=140).print(table)
