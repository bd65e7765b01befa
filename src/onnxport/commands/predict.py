"""`onnxport predict OUT_DIR TEXT...`: a converted model answering text, as tables or JSON.

Registered on the `onnxport` app by `cli.py`. Like `onnxport.predict`, it imports no torch, so
the command starts in about a second.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from onnxport.commands.console import setup_logging, stdout
from onnxport.names import Variant
from onnxport.predict import (
    DEFAULT_MAX_NEW_TOKENS,
    AggregationStrategy,
    EntityPrediction,
    GeneratedText,
    LabelPrediction,
    LongText,
    OnnxPredictor,
    Pooling,
    Prediction,
    VectorPrediction,
)
from onnxport.tasks import Task

_TITLE_CHARS = 100
_VECTOR_PREVIEW = 4
_TRUNCATED = "truncated to the model's maximum length"


def _short(text: str, limit: int = _TITLE_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _entity_table(index: int, prediction: EntityPrediction) -> RenderableType:
    """The text on a line of its own (a table title would wrap to the table's width)."""
    header = Text(f"{index}. {_short(prediction.text)}", style="bold")
    if prediction.truncated:
        header.append(f"  ({_TRUNCATED})", style="yellow")
    if not prediction.entities:
        return Group(header, Text("   no entities", style="dim"))
    table = Table()
    table.add_column("entity")
    table.add_column("text")
    table.add_column("chars", justify="right")
    table.add_column("score", justify="right")
    for e in prediction.entities:
        table.add_row(e.entity_group, e.word, f"{e.start}-{e.end}", f"{e.score:.3f}")
    return Group(header, table)


def _truncated_caption(table: Table, predictions: Sequence[Prediction]) -> None:
    truncated = [str(i) for i, p in enumerate(predictions, 1) if p.truncated]
    if truncated:
        table.caption = f"{_TRUNCATED}: text {', '.join(truncated)}"


def _label_table(predictions: list[LabelPrediction]) -> Table:
    table = Table(title="labels")
    table.add_column("#", justify="right")
    table.add_column("text")
    table.add_column("label")
    table.add_column("score", justify="right")
    for index, p in enumerate(predictions, 1):
        table.add_row(str(index), _short(p.text), p.label, f"{p.score:.3f}")
    _truncated_caption(table, predictions)
    return table


def _vector_table(predictions: list[VectorPrediction]) -> Table:
    table = Table(title="vectors (--json prints them whole)")
    table.add_column("#", justify="right")
    table.add_column("text")
    table.add_column("dims", justify="right")
    table.add_column("norm", justify="right")
    table.add_column("first values")
    for index, p in enumerate(predictions, 1):
        preview = ", ".join(f"{v:.4f}" for v in p.vector[:_VECTOR_PREVIEW])
        norm = float(np.linalg.norm(p.vector))
        table.add_row(str(index), _short(p.text), str(p.vector.size), f"{norm:.3f}", preview)
    _truncated_caption(table, predictions)
    return table


def render_predictions(predictions: Sequence[Prediction]) -> list[RenderableType]:
    """Tables for the terminal: one per text for entities, one for all labels or vectors."""
    entities = [p for p in predictions if isinstance(p, EntityPrediction)]
    labels = [p for p in predictions if isinstance(p, LabelPrediction)]
    vectors = [p for p in predictions if isinstance(p, VectorPrediction)]
    tables: list[RenderableType] = [_entity_table(i, p) for i, p in enumerate(entities, 1)]
    if labels:
        tables.append(_label_table(labels))
    if vectors:
        tables.append(_vector_table(vectors))
    return tables


def print_generated(results: Sequence[GeneratedText]) -> None:
    """The text of each prompt as it is (no markup, no wrapping); a header per prompt when
    there are several."""
    for index, result in enumerate(results, 1):
        if len(results) > 1:
            stdout.print(Text(f"{index}. {_short(result.prompt)}", style="bold"))
        stdout.out(result.text, highlight=False)


def predict_command(
    output_dir: Annotated[
        Path, typer.Argument(metavar="OUT_DIR", help="An onnxport output directory.")
    ],
    texts: Annotated[
        list[str], typer.Argument(metavar="TEXT", help="Texts to run, one argument each.")
    ],
    variant: Annotated[
        str, typer.Option(help="Published model to run: fp32, int8, ...")
    ] = Variant.FP32.value,
    max_length: Annotated[
        int | None, typer.Option(help="Most tokens read per text (default: the model's).")
    ] = None,
    on_long_text: Annotated[
        LongText, typer.Option(help="A text over the maximum length: truncate it, or stop.")
    ] = LongText.TRUNCATE,
    pooling: Annotated[
        Pooling | None,
        typer.Option(
            help="Feature extraction: the mean, the first token's or the largest values "
            "(default: as a sentence-transformers checkpoint's modules.json pools, else mean)."
        ),
    ] = None,
    aggregation: Annotated[
        AggregationStrategy,
        typer.Option(
            help="Token classification: label each word by its first, mean or most confident "
            "token (first, average, max), or each token on its own (simple)."
        ),
    ] = AggregationStrategy.FIRST,
    threads: Annotated[
        int | None, typer.Option(help="ONNX Runtime threads (default: all cores).")
    ] = None,
    max_new_tokens: Annotated[
        int, typer.Option(help="Text generation: the most tokens written per prompt.")
    ] = DEFAULT_MAX_NEW_TOKENS,
    do_sample: Annotated[
        bool, typer.Option("--do-sample", help="Text generation: sample, not the likeliest.")
    ] = False,
    temperature: Annotated[
        float, typer.Option(help="Text generation, --do-sample: the softmax's temperature.")
    ] = 1.0,
    top_p: Annotated[
        float,
        typer.Option(help="Text generation, --do-sample: sample within this probability."),
    ] = 1.0,
    seed: Annotated[
        int | None, typer.Option(help="Text generation, --do-sample: the random seed.")
    ] = None,
    stop: Annotated[
        list[str] | None,
        typer.Option(help="Text generation: a string that ends the text (repeatable)."),
    ] = None,
    raw: Annotated[
        bool,
        typer.Option("--raw", help="Text generation: the prompt as it is, no chat template."),
    ] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON, not tables.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log each step.")] = False,
) -> None:
    """Run a converted model on text: entities, a label or a vector per text; the text a
    text-generation model writes after each prompt."""
    # cli.py imports this module to register the command: take its helpers at call time.

    setup_logging(verbose)
    predictor = OnnxPredictor(
        output_dir,
        variant,
        max_length=max_length,
        threads=threads,
        on_long_text=on_long_text,
        pooling=pooling,
        aggregation_strategy=aggregation,
    )
    if predictor.task is Task.TEXT_GENERATION:
        results = predictor.generate(
            texts,
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            temperature=temperature,
            top_p=top_p,
            stop=stop,
            raw=raw,
            seed=seed,
        )
        if json_output:
            stdout.print_json(json.dumps([r.to_dict() for r in results], ensure_ascii=False))
        else:
            print_generated(results)
        return
    predictions = predictor.predict(texts)
    if json_output:
        stdout.print_json(json.dumps([p.to_dict() for p in predictions], ensure_ascii=False))
        return
    for table in render_predictions(predictions):
        stdout.print(table)
