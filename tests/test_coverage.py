"""The coverage matrix: its registry, a fast subset of it run for real, and docs/coverage.md.

The whole matrix runs with `make coverage` (minutes); here a few quick entries go through the
pipeline with the TorchScript exporter, and docs/coverage.md must have a row for every entry,
so the published table cannot shrink silently when an entry is added or renamed.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch
import transformers

from onnxport.coverage.matrix import CoverageRow, run_entry
from onnxport.coverage.registry import ENTRIES, CoverageEntry, entry
from onnxport.coverage.table import documented_pairs, render_coverage
from onnxport.export.strategies import adapter_for
from onnxport.request.config import ConversionConfig
from onnxport.sources import load_source
from onnxport.tasks import Task, task_from_architecture

DOC = Path(__file__).resolve().parents[1] / "docs" / "coverage.md"
TORCHSCRIPT = ConversionConfig().with_overrides(onnx={"exporter": "torchscript"})
# The quickest entries, one per loader path: a text head, the T5 encoder (the class named
# in config.json, not the Auto class), a decoder, and a vision model.
FAST_SUBSET = (
    "distilbert/token-classification",
    "t5-encoder/feature-extraction",
    "gpt2/text-generation",
    "vit/image-classification",
)
REQUIRED_ARCHITECTURES = {
    "bert", "distilbert", "roberta", "xlm-roberta", "albert", "electra", "deberta-v2",
    "mpnet", "mobilebert", "convbert", "camembert", "vit", "deit", "beit", "convnext",
    "resnet", "swin", "gpt2", "llama", "t5-encoder",
}  # fmt: skip
ONE_OF = ({"longformer", "big-bird"}, {"segformer", "mobilevit"})
MINIMUM_PAIRS = 30
MEANINGFUL_SPREAD = 10 * 1e-4  # ten times the fp32 atol


def _ids(entries: tuple[CoverageEntry, ...]) -> list[str]:
    return [e.name for e in entries]


# --- the registry -------------------------------------------------------------------------


def test_the_matrix_has_enough_pairs_each_once() -> None:
    assert len(ENTRIES) >= MINIMUM_PAIRS
    repeated = [name for name, n in Counter(_ids(ENTRIES)).items() if n > 1]
    assert not repeated


def test_the_architectures_the_issue_names_are_covered() -> None:
    architectures = {e.architecture for e in ENTRIES}
    assert architectures >= REQUIRED_ARCHITECTURES
    for group in ONE_OF:
        assert group & architectures, group


def test_every_task_is_covered() -> None:
    # causal-lm, which no architecture implies, is converted by name in test_generation.
    assert {e.task for e in ENTRIES} == set(Task) - {Task.CAUSAL_LM}


@pytest.mark.parametrize("item", ENTRIES, ids=_ids(ENTRIES))
def test_entry_classes_exist_and_imply_their_task(item: CoverageEntry) -> None:
    assert hasattr(transformers, item.config_class)
    assert hasattr(transformers, item.model_class)
    # The loader resolves the task from config.json's architectures, as for a user's checkpoint.
    assert task_from_architecture(item.model_class) is item.task


def test_entry_lookup_by_name() -> None:
    assert entry("bert/masked-lm").model_class == "BertForMaskedLM"
    with pytest.raises(KeyError, match="no coverage entry"):
        entry("bert/nothing")


@pytest.mark.slow
@pytest.mark.parametrize("item", ENTRIES, ids=_ids(ENTRIES))
def test_entry_outputs_depend_on_the_input(item: CoverageEntry, tmp_path: Path) -> None:
    """Outputs that barely change between inputs would be matched by a graph that ignores
    them: across a batch, the first output must vary by well over the fp32 tolerance."""
    source = load_source(item.build(tmp_path / "checkpoint"))
    _, size = source.default_shapes[-1]
    inputs = source.make_inputs(4, size, 1)
    with torch.no_grad():
        first = adapter_for(source)(*(inputs[n] for n in source.input_names))[0]
    spread = float((first - first.mean(0, keepdim=True)).abs().max())
    assert spread > MEANINGFUL_SPREAD, f"outputs vary by {spread:.2g} across the batch"


# --- the fast subset, through the real pipeline -------------------------------------------


@pytest.mark.parametrize("name", FAST_SUBSET)
def test_fast_subset_converts_and_validates(name: str, tmp_path: Path) -> None:
    generative = entry(name).task is Task.TEXT_GENERATION  # a KV cache exports with dynamo only
    row = run_entry(entry(name), tmp_path, base=ConversionConfig() if generative else TORCHSCRIPT)
    assert row.validated, row.reason
    assert (row.exporter, row.opset) == ("dynamo" if generative else "torchscript", 18)
    assert row.max_abs_diff is not None and row.max_abs_diff < 1e-4
    assert row.reason is None
    assert not list(tmp_path.iterdir()), "the scratch checkpoint and output are removed"


def test_a_failing_entry_is_a_row_with_its_reason(tmp_path: Path) -> None:
    item = entry("vit/image-classification")
    failing = CoverageEntry(
        item.architecture, item.task, "ViTForNothing", item.config_class, item.config,
        note="a model class transformers does not have",
    )  # fmt: skip
    row = run_entry(failing, tmp_path)
    assert not row.validated
    assert (row.exporter, row.max_abs_diff) == (None, None)
    assert row.reason is not None and row.reason.startswith("build: AttributeError")
    assert row.notes is not None and "a model class transformers does not have" in row.notes


# --- docs/coverage.md ---------------------------------------------------------------------


def test_every_entry_has_a_row_in_docs_coverage() -> None:
    documented = documented_pairs(DOC.read_text(encoding="utf-8"))
    missing = [e.name for e in ENTRIES if (e.architecture, e.task.value) not in documented]
    assert not missing, f"run `make coverage`: docs/coverage.md has no row for {missing}"


def test_docs_coverage_has_no_row_without_an_entry() -> None:
    documented = documented_pairs(DOC.read_text(encoding="utf-8"))
    registered = {(e.architecture, e.task.value) for e in ENTRIES}
    assert documented <= registered, f"stale rows: {sorted(documented - registered)}"


def _row(architecture: str, validated: bool, **changes) -> CoverageRow:
    values = dict(
        architecture=architecture,
        task="masked-lm",
        model_class="XForMaskedLM",
        validated=validated,
        exporter="dynamo" if validated else None,
        opset=18,
        max_abs_diff=1.5e-7 if validated else None,
        error_ratio=0.8 if validated else None,
        seconds=12.34,
        reason=None if validated else "export: no exporter could convert X | Y",
    )
    values.update(changes)
    return CoverageRow(**values)


def test_rendered_page_lists_rows_rate_and_failures() -> None:
    rows = [_row("bert", True, notes="atol 0.001: why"), _row("xbert", False)]
    page = render_coverage(rows, environment={"torch": "2.x"}, command="python -m x")
    assert documented_pairs(page) == {("bert", "masked-lm"), ("xbert", "masked-lm")}
    assert "**1 of 2 (architecture, task) pairs validated (50%).**" in page
    assert (
        "| bert | masked-lm | `XForMaskedLM` | yes | dynamo | 18 | 1.50e-07 | 0.8 | 12.3 |" in page
    )
    assert "atol 0.001: why" in page
    assert "no exporter could convert X \\| Y" in page, "a | in a reason must not split the row"
    assert "## Failures" in page
    assert "- **xbert / masked-lm**: export: no exporter could convert X | Y" in page


def test_the_command_lists_entries_and_refuses_a_filter_matching_none(capsys) -> None:
    from onnxport.coverage.__main__ import main

    assert main(["--list", "--only", "llama/"]) == 0
    assert capsys.readouterr().out.split() == [
        "llama/text-generation",
        "llama/sequence-classification",
    ]
    assert main(["--only", "no-such-architecture"]) == 2
    assert "no coverage entry matches" in capsys.readouterr().err
