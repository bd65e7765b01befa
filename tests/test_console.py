"""What a person reads on the terminal, on real runs: library text printed literally, ONNX
Runtime's own log kept out, a refusal said in the user's terms, image models' shapes and
resolutions, and the raw runtime text only with --debug."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from checks import check_agrees_on_a_new_shape, check_published
from models import ANY_RESOLUTION_MODELS, build_funnel_sequence_classifier
from onnxport.artifact.manifest import read_manifest
from onnxport.commands.console import print_error
from onnxport.errors import PredictError, ValidationError
from onnxport.predict import OnnxPredictor
from suite import build_once
from support import (
    EXEC_FP,
    SPEC_FP,
    lay_out_training_output,
    root_with_store,
    write_config_dir,
)

# A gate int8 cannot pass on the tiny random model: the variant is refused, and the message
# names the node to leave in float, `quantize.nodes_to_exclude: [node_MatMul_82]`.
UNREACHABLE = "0.9999"
NODE_TO_EXCLUDE = re.compile(r"quantize\.nodes_to_exclude: \[(node_\w+)\]")


def _cli(*args: object, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m onnxport.cli ...` as a user runs it, in a process of its own."""
    return subprocess.run(
        [sys.executable, "-m", "onnxport.cli", *(str(a) for a in args)],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        cwd=cwd,
        timeout=600,
    )


def _error_and_hint(stderr: str) -> tuple[str, str]:
    assert "Traceback" not in stderr
    (error,) = [line for line in stderr.splitlines() if line.startswith("error")]
    (hint,) = [line for line in stderr.splitlines() if line.startswith("  hint:")]
    return error, hint


def _refused_node(error: str, hint: str) -> str:
    """The node the refusal names, in brackets both in the message and in the hint."""
    found = NODE_TO_EXCLUDE.search(error)
    assert found, error
    node = found[1]
    assert error.endswith(f"; try quantize.nodes_to_exclude: [{node}]"), error
    assert hint.startswith(
        f"  hint: nothing was published; try quantize.nodes_to_exclude: [{node}], "
        "or onnx.quantization"
    )
    return node


# --- bracketed text, through every entry point ------------------------------------------


@pytest.mark.slow
def test_convert_prints_the_node_to_exclude_in_its_brackets(cli, checkpoint, tmp_path) -> None:
    run = cli("convert", checkpoint("distilbert-token"), "-o", tmp_path / "out",
              "--quantize", "int8", "--min-agreement", UNREACHABLE)  # fmt: skip
    assert run.code == 1
    _refused_node(*_error_and_hint(run.stderr))
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_the_platform_entry_point_relays_the_childs_bracketed_lines_literally(
    checkpoint, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """`python -m onnxport.cli --config-dir ...`: the conversion runs in a child process,
    whose error and (with -v) log lines the parent prints; the node name keeps its brackets
    in both, and a relayed line stays one line."""
    root = root_with_store(tmp_path_factory, "brackets")
    training = lay_out_training_output(root, checkpoint("distilbert-token"))
    config = write_config_dir(
        root / "config",
        conversion="onnx: {opset_version: 18, quantization: int8, run_smoke_test: true}\n"
        f"validation: {{min_task_agreement: {UNREACHABLE}}}\n",
    )
    process = _cli("--config-dir", config, "--parent-training-dir", training,
                   "--parent-spec-fp", SPEC_FP, "--parent-exec-fp", EXEC_FP,
                   "--root-dir", root, "-v")  # fmt: skip
    assert process.returncode == 1
    node = _refused_node(*_error_and_hint(process.stderr))
    relayed = [line for line in process.stderr.splitlines() if line.startswith("  ")]
    (localized,) = [line for line in relayed if "divergence (variant)" in line]
    assert localized.endswith(f"try quantize.nodes_to_exclude: [{node}]"), localized


# --- a graph that refuses shapes: ONNX Runtime quiet, the refusal in the user's terms -----


@pytest.mark.slow
def test_a_graph_with_a_size_fixed_at_export_is_refused_in_the_users_terms(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    """Funnel's code fixes the sequence length when traced: dynamo refuses it, TorchScript
    bakes 13 tokens in, and ONNX Runtime refuses 37. Its own log line (red, on stderr) stays
    out; the error says which shapes, why, which exporter and why not the other, what to do."""
    funnel = build_once(tmp_path_factory, "checkpoint-funnel", build_funnel_sequence_classifier)
    process = _cli("convert", funnel, "-o", tmp_path / "out")
    assert process.returncode == 1
    for runtime_log in ("[E:onnxruntime", "sequential_executor", "\x1b["):
        assert runtime_log not in process.stderr
    error, hint = _error_and_hint(process.stderr)
    assert error.startswith(
        "error (validate): the fp32 ONNX model does not accept every validation input: "
        "the graph does not accept inputs of shape [2, 37] or [4, 128]: a size inside the "
        "graph was fixed at export: ONNX Runtime stopped in Mul node /model/funnel/"
    ), error
    assert error.endswith(
        "; the torchscript exporter made the graph, because the dynamo exporter found that "
        "the model's code fixes input_ids dimension 1 at 13 when traced"
    ), error
    assert hint.startswith(
        "  hint: nothing was published; try validation.shapes: [[1, 13], [2, 13]] if every "
        "input will have 13 as input_ids dimension 1 (the graph takes no other)"
    ), hint
    assert "[ONNXRuntimeError]" not in process.stderr  # the runtime's words: --debug only
    assert not (tmp_path / "out").exists()


def test_the_runtimes_own_words_are_printed_with_debug_only(capsys) -> None:
    error = ValidationError(
        "the graph does not accept inputs of shape [2, 37]",
        hint="nothing was published",
        details="at shape [2, 37]: [ONNXRuntimeError] : 1 : FAIL : running Mul node",
    )
    assert print_error(error, debug=False) == 1
    assert "[ONNXRuntimeError]" not in capsys.readouterr().err
    assert print_error(error, debug=True) == 1
    assert "at shape [2, 37]: [ONNXRuntimeError] : 1 : FAIL : running Mul node" in (
        capsys.readouterr().err
    )


# --- images of any size, and a fixed resolution declared ---------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", ANY_RESOLUTION_MODELS)
def test_a_convolutional_image_model_converts_for_images_of_any_size(
    cli_converted, checkpoint, source, name: str
) -> None:
    run, output = cli_converted(name)
    assert run.code == 0, run.stderr
    manifest = read_manifest(output)
    check_published(output, manifest, name, checkpoint(name))
    assert manifest.export.exporter == "dynamo"
    assert manifest.source.fixed_resolution is None
    validation = manifest.outputs[0].validation
    assert [i.shape for i in validation.graph_inputs] == [["batch", 3, "height", "width"]]
    assert [s["pixel_values"] for s in validation.input_shapes] == [
        [1, 3, 32, 32], [2, 3, 32, 32], [4, 3, 32, 32], [1, 3, 64, 64], [1, 3, 96, 96]
    ]  # fmt: skip
    assert "images of any size (validated at 32x32, 64x64, 96x96)" in run.stdout
    check_agrees_on_a_new_shape(output / "model_fp32.onnx", source(name))  # 48x80, not square
    (label,) = OnnxPredictor(output).predict_images(np.zeros((3, 48, 80), dtype=np.float32))
    assert label.index == 1 and 0.0 < label.score <= 1.0
    with pytest.raises(PredictError, match="cannot read the images as one array"):
        OnnxPredictor(output).predict_images([np.zeros((3, 32, 32)), np.zeros((3, 48, 48))])


@pytest.mark.slow
def test_a_vit_declares_its_fixed_resolution_everywhere(cli_converted) -> None:
    run, output = cli_converted("vit-image")
    assert run.code == 0, run.stderr
    manifest = read_manifest(output)
    assert manifest.source.fixed_resolution == [32, 32]
    validation = manifest.outputs[0].validation
    assert [i.shape for i in validation.graph_inputs] == [["batch", 3, 32, 32]]
    assert "1x3x32x32 2x3x32x32 4x3x32x32" in run.stdout
    declared = "fixed resolution 32x32: the model takes 32x32 images only"
    assert declared in run.stdout
    assert declared in (output / "report.md").read_text(encoding="utf-8")
    with pytest.raises(PredictError) as refused:
        OnnxPredictor(output).predict_images(np.zeros((1, 3, 64, 48), dtype=np.float32))
    assert refused.value.message == (
        "the model takes 32x32 images only (its fixed resolution: the model's position "
        "embeddings are sized for it), not 64x48"
    )
    assert refused.value.hint == "resize the images to 32x32 (height x width) first"


@pytest.mark.slow
def test_an_image_model_whose_graph_fixes_a_size_falls_back_to_its_resolution(
    cli_converted, checkpoint
) -> None:
    """BEiT runs at any size in PyTorch, but the dynamo graph keeps the traced size inside
    (its relative position bias): not refused, exported again at 32x32 and declared so."""
    run, output = cli_converted("beit-image")
    assert run.code == 0, run.stderr
    manifest = read_manifest(output)
    check_published(output, manifest, "beit-image", checkpoint("beit-image"))
    assert manifest.export.exporter == "dynamo"
    assert manifest.source.fixed_resolution == [32, 32]
    reason = manifest.source.fixed_resolution_reason
    assert reason is not None
    assert reason.startswith(
        "the exported graph takes no other size although PyTorch does: at [1, 3, 96, 96], "
        "a size inside the graph was fixed at export: ONNX Runtime stopped in"
    )
    validation = manifest.outputs[0].validation
    assert [i.shape for i in validation.graph_inputs] == [["batch", 3, 32, 32]]
    assert [s["pixel_values"] for s in validation.input_shapes] == [
        [1, 3, 32, 32], [2, 3, 32, 32], [4, 3, 32, 32]
    ]  # fmt: skip
    declared = f"fixed resolution 32x32: the model takes 32x32 images only ({reason})"
    assert declared in (output / "report.md").read_text(encoding="utf-8")
    assert "fixed resolution 32x32" in run.stdout
    with pytest.raises(PredictError) as refused:
        OnnxPredictor(output).predict_images(np.zeros((1, 3, 64, 64), dtype=np.float32))
    assert refused.value.message == (
        f"the model takes 32x32 images only (its fixed resolution: {reason}), not 64x64"
    )


# --- the library called from Python: other libraries' notices kept out ---------------------

QUANTIZE_AND_TRACK = """
import logging
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxport.passes.base import PassContext, apply_pass
from onnxport.passes.quantize import DynamicInt8Pass
from onnxport.tracking.store import prepare_store

work = Path(sys.argv[1])
graph = helper.make_graph(
    [helper.make_node("MatMul", ["x", "w"], ["y"])],
    "matmul",
    [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
    [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
    [numpy_helper.from_array(np.ones((4, 4), np.float32), "w")],
)
onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), work / "m.onnx")
apply_pass(DynamicInt8Pass(), work / "m.onnx", work / "q.onnx", PassContext())
prepare_store(f"sqlite:///{work / 'mlflow.db'}")
print(len(logging.getLogger().handlers))
"""


@pytest.mark.slow
def test_quantizing_and_tracking_from_python_print_nothing(tmp_path: Path) -> None:
    """A program that configured no logging: ONNX Runtime's advice to pre-process before
    quantizing and MLflow's table-creation lines stay out, and no handler is left on the root
    logger (which would make the program's own `logging.basicConfig` do nothing)."""
    process = subprocess.run(
        [sys.executable, "-c", QUANTIZE_AND_TRACK, str(tmp_path)],
        capture_output=True,
        text=True,
        env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"},
        timeout=600,
    )
    assert process.returncode == 0, process.stderr
    assert (tmp_path / "q.onnx").is_file() and (tmp_path / "mlflow.db").is_file()
    assert process.stderr == ""
    assert process.stdout == "0\n"


# --- stdout holds a command's answer, never a log -----------------------------------------

SERVER_READY_SECONDS = 180  # a wait for the server on a loaded machine, not an assert


@pytest.mark.slow
def test_serve_logs_each_request_on_stderr_not_stdout(converted, tmp_path: Path) -> None:
    """uvicorn writes its access log (`INFO: ... "POST /invocations HTTP/1.1" 200 OK`) on its
    stdout; `onnxport serve` hands all of its server's output to stderr."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    model = converted("distilbert-token").directory
    command = [sys.executable, "-m", "onnxport.cli", "serve", str(model), "--port", str(port)]
    out, err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with out.open("w") as stdout, err.open("w") as stderr:
        server = subprocess.Popen(command, stdout=stdout, stderr=stderr)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_READY_SECONDS
        while not _answers_ping(url):
            assert server.poll() is None, err.read_text()[-3000:]
            assert time.monotonic() < deadline, err.read_text()[-3000:]
            time.sleep(0.5)
        answer = requests.post(f"{url}/invocations", json={"inputs": ["Jane Doe"]}, timeout=60)
        assert answer.status_code == 200, answer.text
    finally:
        server.terminate()
        server.wait(timeout=60)
    assert '"POST /invocations HTTP/1.1" 200' in err.read_text()
    assert out.read_text() == ""


def _answers_ping(url: str) -> bool:
    try:
        return requests.get(f"{url}/ping", timeout=5).status_code == 200
    except requests.ConnectionError:
        return False
