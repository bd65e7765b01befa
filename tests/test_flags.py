"""A command's flags said in the library's messages, which name config keys and arguments."""

from __future__ import annotations

import pytest

from onnxport.commands.benchmark import FLAGS as BENCHMARK_FLAGS
from onnxport.commands.convert import FLAGS as CONVERT_FLAGS
from onnxport.commands.flags import NO_FLAGS, FlagNames
from onnxport.commands.verify import FLAGS as VERIFY_FLAGS

SAID = {
    "set source.task to one of: a, b": "set source.task (--task) to one of: a, b",
    "or set source.allow_pickle: true if you trust it":
        "or set source.allow_pickle: true (--allow-pickle) if you trust it",
    "execution.export_cache: false to export":
        "execution.export_cache: false (--no-cache) to export",
    "needs source.factory and source.input_spec":
        "needs source.factory (--factory) and source.input_spec (--input-spec)",
    "onnx.opset_version: opset 99 is not supported":
        "onnx.opset_version (--opset): opset 99 is not supported",
    "replace it with force=True (the old one stays)": "replace it with --force (the old one stays)",
    "quantize.nodes_to_exclude: [node_1]": "quantize.nodes_to_exclude: [node_1]",
    "validation.localizer and xsource.task": "validation.localizer and xsource.task",
}  # fmt: skip


@pytest.mark.parametrize(("text", "said"), SAID.items())
def test_convert_says_its_flag_beside_each_key_and_for_each_argument(text: str, said: str) -> None:
    assert CONVERT_FLAGS.said(text) == said


def test_each_command_says_only_its_own_flags() -> None:
    hint = "benchmark the ONNX models alone (include_pytorch=False)"
    assert BENCHMARK_FLAGS.said(hint) == "benchmark the ONNX models alone (--no-pytorch)"
    assert "onnxport benchmark --no-pytorch" in CONVERT_FLAGS.said(hint)
    assert VERIFY_FLAGS.said("the checkpoint (against=CHECKPOINT)") == (
        "the checkpoint (--against CHECKPOINT)"
    )
    assert NO_FLAGS.said("set source.task, force=True") == "set source.task, force=True"


def test_the_longest_key_is_said() -> None:
    flags = FlagNames(keys={"source.input": "--input", "source.input_spec": "--input-spec"})
    assert flags.said("source.input_spec") == "source.input_spec (--input-spec)"


def test_convert_prints_its_flag_beside_the_key_it_refuses(cli, tmp_path) -> None:
    config = tmp_path / "conversion.yaml"
    config.write_text("source: {task: translation}\n", encoding="utf-8")
    run = cli("convert", tmp_path, "-o", tmp_path / "out", "-c", config)
    assert run.code == 2
    assert "source.task (--task): " in run.stderr
