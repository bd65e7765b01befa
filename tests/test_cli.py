"""The `onnxport` command end to end: real conversions, and every kind of bad input.

Bad input exits with 2, a failed conversion with 1; either way stderr names the problem in a
line or two without a traceback (unless --debug), and no output directory appears.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from checks import check_agrees_on_a_new_shape, check_published, machine_traces
from models import CORE_MODELS, edit_config_json, make_pickle_checkpoint
from onnxport.artifact.manifest import MANIFEST_FILENAME, read_manifest, verify_directory
from support import overwrite

FAST = ("--exporter", "torchscript")


def _no_traceback(run) -> None:
    assert "Traceback" not in run.stderr
    assert "Traceback" not in run.stdout


# --- real conversions with the default (dynamo) exporter ------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", CORE_MODELS)
def test_convert_publishes_a_validated_model(cli_converted, checkpoint, source, name) -> None:
    run, output = cli_converted(name)
    assert run.code == 0, run.stderr
    _no_traceback(run)
    manifest = read_manifest(output)
    check_published(output, manifest, name, checkpoint(name))
    assert manifest.export.exporter == "dynamo"
    assert [(a.exporter, a.ok) for a in manifest.export.attempts] == [("dynamo", True)]
    check_agrees_on_a_new_shape(output / "model_fp32.onnx", source(name))


@pytest.mark.slow
def test_convert_shows_progress_and_a_result_table(cli_converted) -> None:
    run, _ = cli_converted("distilbert-token")
    for label in ("load source", "export to ONNX", "validate against PyTorch", "smoke test"):
        assert f"✓ {label}" in run.stderr
    assert "✓ publish" in run.stderr
    assert "DistilBertForTokenClassification" in run.stdout
    assert "model_fp32.onnx" in run.stdout
    assert "1x8 2x37 4x128" in run.stdout
    assert "seconds per stage" in run.stdout


@pytest.mark.slow
def test_convert_in_a_subprocess_prints_the_manifest_as_json(checkpoint, tmp_path: Path) -> None:
    # A long output path: the JSON on stdout must not be wrapped to the terminal width.
    output = tmp_path / ("a-rather-long-directory-name-" * 5) / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "60"}
    process = subprocess.run(
        [
            *(sys.executable, "-m", "onnxport.cli", "convert", checkpoint("bert-qa")),
            *("-o", output, "--json", *FAST),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert process.returncode == 0, process.stderr
    assert "Traceback" not in process.stderr
    assert "INFO " not in process.stderr  # steps are logged only with -v
    printed = json.loads(process.stdout)
    assert printed == json.loads((output / MANIFEST_FILENAME).read_text(encoding="utf-8"))
    manifest = read_manifest(output)
    check_published(output, manifest, "bert-qa", checkpoint("bert-qa"))


@pytest.fixture(scope="module")
def flagged(checkpoint, tmp_path_factory: pytest.TempPathFactory):
    """One `onnxport convert` in a process of its own (as a user runs it, logging set up by
    the command) with every option that maps to the config away from its default, and -v."""
    output = tmp_path_factory.mktemp("flagged") / "out"
    process = subprocess.run(
        [
            *(sys.executable, "-m", "onnxport.cli", "convert", checkpoint("distilbert-token")),
            *("-o", output, *FAST, "--optimize", "basic", "--quantize", "int8"),
            *("--min-agreement", "0.95", "--no-localize", "-v"),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=600,
    )
    assert process.returncode == 0, process.stderr
    return process, output


@pytest.mark.slow
def test_convert_options_reach_the_config(flagged) -> None:
    _, output = flagged
    manifest = read_manifest(output)
    assert manifest.config["onnx"]["optimize"] == "basic"
    assert manifest.config["onnx"]["quantization"] == "int8"
    assert manifest.config["validation"]["min_task_agreement"] == 0.95
    assert manifest.config["validation"]["localize"] is False
    for out in manifest.outputs:
        assert out.validation.task_agreement.minimum == 0.95, out.variant


@pytest.mark.slow
def test_convert_optimize_runs_the_optimize_pass(flagged) -> None:
    fp32 = read_manifest(flagged[1]).output("fp32")
    assert [p.name for p in fp32.passes] == ["optimize-basic"]
    assert fp32.passes[0].nodes_after < fp32.passes[0].nodes_before


@pytest.mark.slow
def test_convert_quantize_int8_publishes_a_validated_int8_model(flagged, source) -> None:
    import numpy as np
    import onnx
    import onnxruntime as ort

    _, output = flagged
    manifest = read_manifest(output)
    assert [(o.variant, o.published) for o in manifest.outputs] == [
        ("fp32", True),
        ("int8", True),
    ]
    int8 = manifest.output("int8")
    assert int8.file == "model_int8.onnx"
    assert int8.validation.passed and int8.smoke_test.passed
    assert [p.name for p in int8.passes] == ["quantize-int8"]
    assert verify_directory(output) == []
    for out in manifest.published_outputs():  # TorchScript, optimized by ONNX Runtime, int8
        assert machine_traces(output / out.file) == [], out.file
    model = onnx.load(str(output / int8.file))
    eight_bit = (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)
    assert any(i.data_type in eight_bit for i in model.graph.initializer)
    assert {"DynamicQuantizeLinear", "MatMulInteger"} & {n.op_type for n in model.graph.node}
    assert int8.size_bytes < manifest.output("fp32").size_bytes
    inputs = {k: v.numpy() for k, v in source("distilbert-token").make_inputs(2, 11, 0).items()}
    answers = {}
    for variant in ("fp32", "int8"):
        session = ort.InferenceSession(
            str(output / manifest.output(variant).file), providers=["CPUExecutionProvider"]
        )
        answers[variant] = session.run(None, inputs)[0]
    assert answers["int8"].shape == answers["fp32"].shape == (2, 11, answers["fp32"].shape[-1])
    assert not np.array_equal(answers["int8"], answers["fp32"])  # not the fp32 graph again


@pytest.mark.slow
def test_convert_verbose_logs_each_step(flagged) -> None:
    process, _ = flagged
    assert "INFO onnxport.export.exporter: exporting with the torchscript exporter (opset 18)" in (
        process.stderr
    )
    assert "INFO onnxport.pipeline: conversion complete:" in process.stderr


def test_json_output_in_process(cli, checkpoint, tmp_path: Path) -> None:
    run = cli("convert", checkpoint("vit-image"), "-o", tmp_path / "out", "--json", *FAST)
    assert run.code == 0, run.stderr
    printed = json.loads(run.stdout)
    assert printed["source"]["architecture"] == "ViTForImageClassification"
    assert printed["outputs"][0]["validation"]["passed"] is True
    assert printed == json.loads((tmp_path / "out" / MANIFEST_FILENAME).read_text())


def test_flags_override_the_config_file(cli, checkpoint, tmp_path: Path) -> None:
    config = tmp_path / "conversion.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "onnx": {"opset_version": 17, "exporter": "torchscript"},
                "validation": {"shapes": [[1, 8], [3, 20], [2, 64]]},
            }
        ),
        encoding="utf-8",
    )
    output = tmp_path / "out"
    run = cli(
        "convert", checkpoint("bert-token"), "-o", output, "-c", config, "--opset", "18",
        "--external-data", "always",
    )  # fmt: skip
    assert run.code == 0, run.stderr
    manifest = read_manifest(output)
    assert manifest.export.opset == 18
    assert manifest.export.exporter == "torchscript"
    assert manifest.outputs[0].validation.shapes == [[1, 8], [3, 20], [2, 64]]
    assert manifest.config["output"]["external_data"] == "always"
    assert manifest.outputs[0].data_file == "model_fp32.onnx.data"
    assert (output / "model_fp32.onnx.data").is_file()


def test_allow_pickle_opts_in(cli, checkpoint, tmp_path: Path) -> None:
    pickled = make_pickle_checkpoint(checkpoint("bert-encoder"), tmp_path / "pickled")
    output = tmp_path / "out"
    run = cli("convert", pickled, "-o", output, "--allow-pickle", *FAST)
    assert run.code == 0, run.stderr
    manifest = read_manifest(output)
    assert list(manifest.source.weights_sha256) == ["pytorch_model.bin"]
    assert manifest.outputs[0].validation.passed


def test_task_flag_overrides_config_json(cli, checkpoint, tmp_path: Path) -> None:
    output = tmp_path / "out"
    run = cli(
        *("convert", checkpoint("distilbert-token"), "-o", output),
        *("--task", "feature-extraction", *FAST),
    )
    assert run.code == 0, run.stderr
    assert read_manifest(output).source.task == "feature-extraction"


# --- bad input and failed conversions -------------------------------------------------------


@dataclass(frozen=True)
class Case:
    make: Callable[..., list]
    """(tmp_path, checkpoint, copy_checkpoint) -> the arguments after `convert`."""
    code: int
    says: tuple[str, ...]


def _damaged(name: str, damage: Callable[[Path], None]):
    def make(tmp_path, checkpoint, copy_checkpoint) -> list:
        path = copy_checkpoint(name)
        damage(path)
        return [path]

    return make


def _config_file(text: str):
    def make(tmp_path, checkpoint, copy_checkpoint) -> list:
        (tmp_path / "conversion.yaml").write_text(text, encoding="utf-8")
        return [checkpoint("distilbert-token"), "-c", tmp_path / "conversion.yaml", *FAST]

    return make


def _with(name: str, *flags: str):
    return lambda tmp_path, checkpoint, copy_checkpoint: [checkpoint(name), *flags]


def _truncate(path: Path) -> None:
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])


CASES = {
    "missing-source": Case(
        lambda tmp_path, *_: [tmp_path / "no-such-checkpoint"],
        2,
        ("error (load): source not found", "no-such-checkpoint"),
    ),
    "dir-without-config-json": Case(
        _damaged("bert-encoder", lambda path: (path / "config.json").unlink()),
        2,
        ("has no config.json",),
    ),
    "invalid-json": Case(
        _damaged("bert-encoder", overwrite("config.json", b'{"model_type": "bert",')),
        2,
        ("config.json is not valid JSON",),
    ),
    "unknown-model-type": Case(
        _damaged("bert-encoder", lambda path: edit_config_json(path, model_type="bertish")),
        2,
        ("unknown or invalid model", "'bertish'"),
    ),
    "missing-weights": Case(
        _damaged("bert-encoder", lambda path: (path / "model.safetensors").unlink()),
        2,
        ("has no weights",),
    ),
    "truncated-weights": Case(
        _damaged("bert-encoder", _truncate),
        2,
        ("model.safetensors is truncated", "copy the checkpoint again"),
    ),
    "zero-byte-weights": Case(
        _damaged("bert-encoder", overwrite("model.safetensors", b"")),
        2,
        ("model.safetensors is not a valid safetensors file",),
    ),
    "pickle-without-opt-in": Case(
        lambda tmp_path, checkpoint, _: [
            make_pickle_checkpoint(checkpoint("bert-encoder"), tmp_path / "pickled")
        ],
        2,
        ("pickle-based weights (pytorch_model.bin)", "--allow-pickle"),
    ),
    "unsupported-task": Case(
        _with("vit-image", "--task", "token-classification"),
        2,
        ("vit models do not support the task token-classification",),
    ),
    "unknown-task": Case(
        _with("vit-image", "--task", "translation"),
        2,
        ("Invalid value for '--task'", "'translation' is not one of"),
    ),
    "weights-not-matching-config": Case(
        _damaged("bert-encoder", lambda path: edit_config_json(path, num_hidden_layers=1)),
        2,
        ("do not fit a BertModel", "unexpected"),
    ),
    "opset-above-range": Case(
        _with("bert-encoder", "--opset", "30"),
        2,
        ("error (config)", "opset 30 is not supported"),
    ),
    "opset-below-range": Case(
        _with("bert-encoder", "--opset", "5"), 2, ("error (config)", "opset 5")
    ),
    "opset-the-exporter-lacks": Case(
        _with("bert-encoder", "--opset", "21", "--exporter", "torchscript"),
        2,
        ("opset 21 is not supported by the torchscript exporter (7-20)",),
    ),
    "config-file-unknown-key": Case(
        _config_file("onnx: {opset_versoin: 18}\n"),
        2,
        ("onnx.opset_versoin: unknown key",),
    ),
    "config-file-empty": Case(_config_file(""), 2, ("is empty",)),
    "config-file-missing": Case(
        lambda tmp_path, checkpoint, _: [checkpoint("bert-encoder"), "-c", tmp_path / "nope.yaml"],
        2,
        ("conversion config not found",),
    ),
    "validation-fails": Case(
        _config_file("validation: {atol: 1.0e-12, rtol: 0}\n"),
        1,
        ("error (validate)", "does not compute what PyTorch computes", "max abs diff"),
    ),
    "export-fails": Case(
        _with("roberta-sequence", "--opset", "9", "--exporter", "torchscript"),
        1,
        ("error (export): no exporter could convert RobertaForSequenceClassification",),
    ),
}


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_bad_input_is_refused_cleanly(cli, checkpoint, copy_checkpoint, tmp_path, case) -> None:
    args = case.make(tmp_path, checkpoint, copy_checkpoint)
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    run = cli("convert", *args, "-o", outputs / "out")
    assert run.code == case.code, run.stderr
    for fragment in case.says:
        assert fragment in run.stderr
    _no_traceback(run)
    assert list(outputs.iterdir()) == [], "nothing published, no work directory left"


def _missing_eval_file(tmp_path: Path) -> list:
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    (config_dir / "conversion.yaml").write_text(
        "validation: {eval_file: eval.jsonl}\n", encoding="utf-8"
    )
    return ["-c", config_dir / "conversion.yaml"]


@pytest.mark.parametrize(
    ("make", "error", "hint"),
    [
        (
            _missing_eval_file,
            "error (config): validation.eval_file {tmp}/config/eval.jsonl does not exist",
            "hint: a relative path is read from the directory of the conversion.yaml",
        ),
        (
            lambda tmp_path: ["--exporter", "torchscript", "--opset", "21"],
            "error (config): command-line options: onnx: opset 21 is not supported by the "
            "torchscript exporter (7-20)",
            None,
        ),
    ],
    ids=["eval-file-missing", "torchscript-opset-21"],
)
def test_a_setting_that_cannot_work_is_refused_before_the_model_loads(
    cli, checkpoint, tmp_path: Path, make, error: str, hint: str | None
) -> None:
    run = cli("convert", checkpoint("distilbert-token"), "-o", tmp_path / "out", *make(tmp_path))
    assert run.code == 2, run.stderr
    assert error.format(tmp=tmp_path) in run.stderr
    if hint:
        assert hint in run.stderr
    assert "load source" not in run.stderr, "the model was loaded first"
    _no_traceback(run)
    assert not (tmp_path / "out").exists()


def test_debug_shows_the_traceback(cli, tmp_path: Path) -> None:
    run = cli("convert", tmp_path / "missing", "-o", tmp_path / "out", "--debug")
    assert run.code == 2
    assert "Traceback" in run.stderr
    assert "SourceError" in run.stderr
    assert "source not found" in run.stderr


def test_output_path_that_is_a_file_is_refused(cli, checkpoint, tmp_path: Path) -> None:
    file = tmp_path / "out"
    file.write_text("precious", encoding="utf-8")
    run = cli("convert", checkpoint("bert-encoder"), "-o", file, "--force")
    assert run.code == 2
    assert "error (output): the output path" in run.stderr
    assert "is an existing file" in run.stderr
    _no_traceback(run)
    assert file.read_text(encoding="utf-8") == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_foreign_directory_is_refused(cli, checkpoint, tmp_path: Path) -> None:
    foreign = tmp_path / "out"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine", encoding="utf-8")
    run = cli("convert", checkpoint("bert-encoder"), "-o", foreign, "--force")
    assert run.code == 2
    assert "is not an onnxport output directory" in run.stderr
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]


def test_a_complete_output_needs_force(cli, checkpoint, copy_output) -> None:
    output = copy_output("distilbert-token")
    before = (output / MANIFEST_FILENAME).read_bytes()
    run = cli("convert", checkpoint("distilbert-token"), "-o", output, *FAST)
    assert run.code == 2
    assert "already holds a complete conversion" in run.stderr
    assert "hint: replace it with --force" in run.stderr
    _no_traceback(run)
    assert (output / MANIFEST_FILENAME).read_bytes() == before
    assert verify_directory(output) == []


def test_force_keeps_the_old_output_when_the_new_one_fails(
    cli, copy_checkpoint, copy_output
) -> None:
    output = copy_output("distilbert-token")
    before = (output / MANIFEST_FILENAME).read_bytes()
    broken = copy_checkpoint("distilbert-token")
    (broken / "model.safetensors").write_bytes(b"")
    run = cli("convert", broken, "-o", output, "--force", *FAST)
    assert run.code == 2
    _no_traceback(run)
    assert (output / MANIFEST_FILENAME).read_bytes() == before
    assert verify_directory(output) == []
    assert sorted(p.name for p in output.parent.iterdir() if p.name.startswith(".")) == []


def test_force_replaces_a_complete_output(cli, checkpoint, copy_output) -> None:
    output = copy_output("distilbert-token")
    assert read_manifest(output).export.opset == 18
    run = cli("convert", checkpoint("distilbert-token"), "-o", output, "--force", "--opset", "17")
    assert run.code == 0, run.stderr
    manifest = read_manifest(output)
    assert manifest.export.opset == 17
    assert manifest.export.exporter == "torchscript"  # dynamo starts at 18: the fallback ran
    assert verify_directory(output) == []
    assert sorted(p.name for p in output.parent.iterdir() if p.name.startswith(".")) == []


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["convert", "ckpt"], "Missing option '--output'"),
        (["convert", "ckpt", "-o", "out", "--bogus"], "No such option: --bogus"),
        (["convert", "ckpt", "-o", "out", "--opset", "eighteen"], "Invalid value for '--opset'"),
        (["transmogrify"], "No such command 'transmogrify'"),
    ],
)
def test_usage_errors_are_bad_input_not_internal_errors(cli, tmp_path, monkeypatch, args, says):
    monkeypatch.chdir(tmp_path)
    run = cli(*args)
    assert run.code == 2
    assert says in run.stderr
    assert "internal error" not in run.stderr
    _no_traceback(run)
    assert list(tmp_path.iterdir()) == []


def test_help_lists_the_commands(cli) -> None:
    run = cli("--help")
    assert run.code == 0
    assert "convert" in run.stdout


def test_a_failed_export_leaves_stdout_clean(cli, checkpoint, tmp_path: Path, capfd) -> None:
    run = cli(
        *("convert", checkpoint("roberta-sequence"), "-o", tmp_path / "out"),
        *("--opset", "9", "--exporter", "torchscript"),
    )
    assert run.code == 1
    assert run.stdout == ""
    assert "Torch IR graph" not in capfd.readouterr().out


@pytest.fixture
def hidden_command() -> Iterator[Callable[[str, Callable[[], None]], None]]:
    """`hidden_command(name, function)`: an `onnxport` command for this test alone."""
    from onnxport.cli import app

    added: list[str] = []

    def add(name: str, function: Callable[[], None]) -> None:
        app.command(name, hidden=True)(function)
        added.append(name)

    yield add
    app.registered_commands[:] = [c for c in app.registered_commands if c.name not in added]


def test_a_command_that_exits_with_a_code_keeps_it(hidden_command) -> None:
    import typer

    from onnxport.cli import main

    def exit_three() -> None:
        raise typer.Exit(3)

    hidden_command("exit-three-for-test", exit_three)
    assert main(["exit-three-for-test"]) == 3


def _a_bug() -> None:
    settings: dict[str, str] = {}
    settings["opset"] += "1"  # a KeyError, as a bug in onnxport would raise


def test_an_unexpected_exception_is_an_internal_error_without_a_traceback(
    cli, hidden_command
) -> None:
    hidden_command("bug-for-test", _a_bug)
    run = cli("bug-for-test")
    assert run.code == 1
    assert run.stdout == ""
    assert run.stderr.splitlines() == [
        "internal error: KeyError: 'opset'",
        "  this is a bug in onnxport; rerun with --debug and report the traceback",
    ]


@pytest.mark.parametrize(
    ("flag", "variable", "shown"),
    [
        ("--debug", None, True),
        (None, "1", True),
        (None, "0", False),
        (None, None, False),
    ],
    ids=["--debug", "ONNXPORT_DEBUG=1", "ONNXPORT_DEBUG=0", "neither"],
)
def test_debug_flag_or_variable_shows_the_traceback_of_any_error(
    cli, hidden_command, tmp_path: Path, monkeypatch, flag, variable, shown: bool
) -> None:
    if variable is None:
        monkeypatch.delenv("ONNXPORT_DEBUG", raising=False)
    else:
        monkeypatch.setenv("ONNXPORT_DEBUG", variable)
    hidden_command("bug-for-test", _a_bug)
    extra = [flag] if flag else []
    internal = cli("bug-for-test", *extra)
    user = cli("convert", tmp_path / "missing", "-o", tmp_path / "out", *extra)
    assert (internal.code, user.code) == (1, 2)
    assert "internal error: KeyError: 'opset'" in internal.stderr
    assert "error (load): source not found" in user.stderr
    for run in (internal, user):
        assert ("Traceback" in run.stderr) is shown, run.stderr
    if shown:
        assert 'settings["opset"] += "1"' in internal.stderr  # the line of the bug
        assert "SourceError" in user.stderr


def test_ctrl_c_in_a_command_exits_130(cli, hidden_command) -> None:
    def interrupted() -> None:
        raise KeyboardInterrupt

    hidden_command("ctrl-c-for-test", interrupted)
    run = cli("ctrl-c-for-test")
    assert run.code == 130
    assert run.stderr.strip() == "interrupted; nothing was published"
