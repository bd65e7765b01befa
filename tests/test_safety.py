"""Safety: inputs never run code, secrets are never recorded, writes stay under the root.

Each guarantee has a behavioural test (a hostile input whose payload would leave a marker
file if it ever ran, a real tracked conversion with secrets in its environment) and, where
a rule is about how the source is written, a scan of `src/` that fails when a new call site
breaks it.
"""

from __future__ import annotations

import ast
import json
import os
import runpy
import secrets
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from checks import assert_clean_failure
from models import edit_config_json, make_pickle_checkpoint
from onnxport.artifact.manifest import verify_directory
from onnxport.errors import ConfigError, SourceError
from onnxport.request.config import ConversionConfig, load_conversion_config, load_experiment_config
from onnxport.request.paths import safe_segment
from plain_models import FACTORY, copy_plain_files
from suite import AZUREML_EXTRA
from support import make_project, rewrite_member, root_with_store

SRC = Path(__file__).resolve().parents[1] / "src" / "onnxport"
FAST = ("--exporter", "torchscript")


def _modules() -> Iterator[tuple[Path, ast.Module]]:
    for file in sorted(SRC.rglob("*.py")):
        yield file, ast.parse(file.read_text(encoding="utf-8"), filename=str(file))


def _calls(tree: ast.AST) -> Iterator[ast.Call]:
    yield from (node for node in ast.walk(tree) if isinstance(node, ast.Call))


def _dotted(node: ast.AST) -> str:
    """`torch.load` for `torch.load(...)`'s func, `load` for a bare name; '' otherwise."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else node.attr
    return ""


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _where(file: Path, node: ast.AST) -> str:
    return f"{file.relative_to(SRC.parent)}:{node.lineno}"


# ================================================================================ pickle


class _LeavesAMarker:
    """Unpickling this creates `path`: the proof that a pickle ran code."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def _evil_pickle(path: Path, marker: Path) -> Path:
    torch.save({"embeddings.word_embeddings.weight": _LeavesAMarker(marker)}, path)
    return path


def test_the_pickle_payload_is_live(tmp_path: Path) -> None:
    """The control: an unrestricted load of the file does run its code."""
    marker = tmp_path / "ran"
    _evil_pickle(tmp_path / "evil.bin", marker)
    torch.load(tmp_path / "evil.bin", weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("opt_in", [False, True], ids=["default", "--allow-pickle"])
def test_a_pickled_checkpoint_never_runs_code(cli, checkpoint, tmp_path, opt_in: bool) -> None:
    marker = tmp_path / "ran"
    evil = make_pickle_checkpoint(checkpoint("bert-encoder"), tmp_path / "evil")
    _evil_pickle(evil / "pytorch_model.bin", marker)
    flags = ["--allow-pickle"] if opt_in else []
    run = cli("convert", evil, "-o", tmp_path / "out", *flags, *FAST)
    says = ("weights_only=True", "refused") if opt_in else ("pickle-based weights",)
    assert_clean_failure(run.code, run.stdout, run.stderr, 2, says)
    assert not marker.exists(), "unpickling ran the payload"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("opt_in", [False, True], ids=["default", "--allow-pickle"])
def test_a_pickled_state_dict_never_runs_code(
    cli, plain, tmp_path, monkeypatch, opt_in: bool
) -> None:
    files = copy_plain_files(plain, tmp_path / "plain")
    marker = tmp_path / "ran"
    _evil_pickle(files.pickle, marker)
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    flags = ["--allow-pickle"] if opt_in else []
    run = cli(
        *("convert", files.pickle, "-o", tmp_path / "out", "--factory", FACTORY),
        *("--input-spec", files.spec, *flags, *FAST),
    )
    assert_clean_failure(run.code, run.stdout, run.stderr, 2, ("pickle",))
    assert not marker.exists(), "unpickling ran the payload"


def test_torch_load_is_always_called_with_weights_only_true_in_src() -> None:
    found, unsafe = [], []
    for file, tree in _modules():
        for call in _calls(tree):
            if _dotted(call.func) in ("torch.load", "load") and "torch" in ast.unparse(call.func):
                found.append(_where(file, call))
                value = _keyword(call, "weights_only")
                if not (isinstance(value, ast.Constant) and value.value is True):
                    unsafe.append(_where(file, call))
    assert unsafe == [], f"torch.load without weights_only=True: {unsafe}"
    assert found, "the scan found no torch.load at all: is it still looking at src/?"


def test_src_never_unpickles_by_itself() -> None:
    """No input is ever unpickled. The one call allowed reads the channel between onnxport's
    own processes: a socket pair that only a parent and the child it started hold."""
    banned = {"pickle.load", "pickle.loads", "pickle.Unpickler", "dill.load", "joblib.load"}
    hits = [
        _where(file, call)
        for file, tree in _modules()
        for call in _calls(tree)
        if _dotted(call.func) in banned
    ]
    assert [hit for hit in hits if not hit.startswith("onnxport/isolation/channel.py:")] == []


def test_every_torch_load_on_the_way_asks_for_weights_only(
    checkpoint, plain, tmp_path, monkeypatch
) -> None:
    """Behaviourally too: loading pickled weights with the opt-in, through transformers and
    through the state-dict loader, calls torch.load with weights_only=True only."""
    from onnxport.request.sections import SourceConfig
    from onnxport.sources import load_source

    calls: list[object] = []
    real = torch.load

    def recording(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording)
    pickled = make_pickle_checkpoint(checkpoint("bert-encoder"), tmp_path / "pickled")
    load_source(pickled, SourceConfig(allow_pickle=True))
    files = plain
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    load_source(
        files.pickle, SourceConfig(allow_pickle=True, factory=FACTORY, input_spec=files.spec)
    )
    assert calls, "torch.load was never called: the test does not test anything"
    assert set(calls) == {True}, calls


# ===================================================================== trust_remote_code


CUSTOM_CODE = """
from pathlib import Path

Path({marker!r}).touch()

from transformers import PretrainedConfig, PreTrainedModel


class EvilConfig(PretrainedConfig):
    model_type = "onnxport_evil"


class EvilModel(PreTrainedModel):
    config_class = EvilConfig
"""


def _with_custom_code(directory: Path, marker: Path, *, model_type: str) -> Path:
    """A checkpoint whose config.json points at code shipped beside it (auto_map)."""
    code = CUSTOM_CODE.format(marker=str(marker))
    (directory / "configuration_evil.py").write_text(code, encoding="utf-8")
    (directory / "modeling_evil.py").write_text(code, encoding="utf-8")
    edit_config_json(
        directory,
        model_type=model_type,
        auto_map={
            "AutoConfig": "configuration_evil.EvilConfig",
            "AutoModel": "modeling_evil.EvilModel",
        },
    )
    return directory


def test_the_custom_code_payload_is_live(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    (tmp_path / "config.json").write_text("{}", encoding="utf-8")
    _with_custom_code(tmp_path, marker, model_type="onnxport_evil")
    runpy.run_path(str(tmp_path / "configuration_evil.py"))
    assert marker.exists()


def test_code_shipped_with_an_unknown_model_type_is_not_run(cli, copy_checkpoint, tmp_path) -> None:
    marker = tmp_path / "ran"
    evil = _with_custom_code(copy_checkpoint("bert-encoder"), marker, model_type="onnxport_evil")
    run = cli("convert", evil, "-o", tmp_path / "out", *FAST)
    assert_clean_failure(run.code, run.stdout, run.stderr, 2, ("--trust-remote-code",))
    assert not marker.exists(), "the checkpoint's code ran without --trust-remote-code"


def test_code_shipped_with_a_known_model_type_is_ignored(cli, copy_checkpoint, tmp_path) -> None:
    """auto_map beside model_type bert: transformers' own BERT converts, the code never runs."""
    marker = tmp_path / "ran"
    evil = _with_custom_code(copy_checkpoint("bert-encoder"), marker, model_type="bert")
    run = cli("convert", evil, "-o", tmp_path / "out", *FAST)
    assert run.code == 0, run.stderr
    assert not marker.exists(), "the checkpoint's code ran without --trust-remote-code"
    assert verify_directory(tmp_path / "out") == []


def test_custom_tokenizer_code_is_not_run(cli, copy_checkpoint, tmp_path) -> None:
    marker = tmp_path / "ran"
    path = copy_checkpoint("distilbert-token")
    (path / "tokenization_evil.py").write_text(
        CUSTOM_CODE.format(marker=str(marker)), encoding="utf-8"
    )
    settings = json.loads((path / "tokenizer_config.json").read_text(encoding="utf-8"))
    settings["auto_map"] = {"AutoTokenizer": ["tokenization_evil.EvilTokenizer", None]}
    settings["tokenizer_class"] = "EvilTokenizer"
    (path / "tokenizer_config.json").write_text(json.dumps(settings), encoding="utf-8")
    run = cli("convert", path, "-o", tmp_path / "out", *FAST)
    # As with a model's code beside a known model type: the library's own tokenizer (from
    # tokenizer.json) converts, and the shipped code never runs.
    assert run.code == 0, run.stderr
    assert not marker.exists(), "the tokenizer's code ran without --trust-remote-code"
    published = tmp_path / "out"
    assert verify_directory(published) == []
    assert (published / "tokenizer.json").is_file()


def test_trust_remote_code_is_never_switched_on_in_src() -> None:
    switched_on = [
        _where(file, call)
        for file, tree in _modules()
        for call in _calls(tree)
        for value in [_keyword(call, "trust_remote_code")]
        if isinstance(value, ast.Constant) and value.value is True
    ]
    assert switched_on == []


def test_trust_remote_code_is_off_by_default() -> None:
    assert ConversionConfig().source.trust_remote_code is False
    assert ConversionConfig().source.allow_pickle is False


# ================================================================================= YAML


PYTHON_TAGS = (
    "onnx: !!python/object/apply:os.system ['touch {marker}']\n",
    "!!python/object/new:os.system ['touch {marker}']\n",
    "x: !!python/name:os.system\n",
)


@pytest.mark.parametrize("text", PYTHON_TAGS)
def test_yaml_with_python_tags_is_a_config_error_that_runs_nothing(tmp_path, text: str) -> None:
    marker = tmp_path / "ran"
    (tmp_path / "conversion.yaml").write_text(text.format(marker=marker), encoding="utf-8")
    (tmp_path / "experiment.yaml").write_text(text.format(marker=marker), encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_conversion_config(tmp_path)
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_experiment_config(tmp_path)
    assert not marker.exists()


def test_an_input_spec_with_python_tags_runs_nothing(tmp_path) -> None:
    from onnxport.sources.plain import read_input_spec

    marker = tmp_path / "ran"
    spec = tmp_path / "spec.yaml"
    spec.write_text(PYTHON_TAGS[0].format(marker=marker), encoding="utf-8")
    with pytest.raises((SourceError, ConfigError)):
        read_input_spec(spec)
    assert not marker.exists()


def test_src_loads_yaml_only_safely() -> None:
    unsafe = []
    for file, tree in _modules():
        for call in _calls(tree):
            name = _dotted(call.func)
            if name in ("yaml.load", "yaml.load_all", "yaml.full_load", "yaml.unsafe_load"):
                unsafe.append(_where(file, call))
            if name.startswith("yaml.") and _keyword(call, "Loader") is not None:
                unsafe.append(_where(file, call))
    assert unsafe == []


# =========================================================================== subprocesses


SUBPROCESS_CALLS = {
    "subprocess.run",
    "subprocess.call",
    "subprocess.check_call",
    "subprocess.check_output",
    "subprocess.Popen",
    "Popen",
}
SHELL_CALLS = {"os.system", "os.popen", "asyncio.create_subprocess_shell", "pty.spawn"}


def test_subprocesses_are_started_with_argument_lists_never_a_shell() -> None:
    found, shell = [], []
    for file, tree in _modules():
        for call in _calls(tree):
            name = _dotted(call.func)
            if name in SHELL_CALLS or name.startswith("os.exec") or name.startswith("os.spawn"):
                shell.append(f"{_where(file, call)} {name}")
            if name not in SUBPROCESS_CALLS:
                continue
            found.append(_where(file, call))
            use_shell = _keyword(call, "shell")
            if use_shell is not None and not (
                isinstance(use_shell, ast.Constant) and use_shell.value is False
            ):
                shell.append(f"{_where(file, call)} shell={ast.unparse(use_shell)}")
            command = call.args[0] if call.args else _keyword(call, "args")
            if isinstance(command, (ast.Constant, ast.JoinedStr, ast.BinOp)):
                shell.append(f"{_where(file, call)} command {ast.unparse(command)[:60]}")
    assert shell == [], shell
    assert found, "the scan found no subprocess call at all: is it still looking at src/?"


def test_the_conversion_child_is_started_with_a_list(monkeypatch, tmp_path) -> None:
    """Behaviourally: what `run_child` hands Popen is a list, with no shell, and a path with
    shell metacharacters stays one argument."""
    import subprocess

    from onnxport.execution import ChildArguments, run_child

    seen: dict = {}

    class Stop(Exception):
        pass

    def fake_popen(command, *args, **kwargs):
        seen["command"], seen["kwargs"] = command, kwargs
        raise Stop

    monkeypatch.setattr(subprocess, "Popen", fake_popen)
    hostile = tmp_path / "ckpt; touch pwned $(id) `id`"
    arguments = ChildArguments(hostile, tmp_path, "bert", tmp_path / "out", 18)
    with pytest.raises(Stop):
        run_child(arguments, timeout_seconds=5)
    assert isinstance(seen["command"], list)
    assert not seen["kwargs"].get("shell")
    assert str(hostile) in seen["command"]


# ================================================================================ secrets


SECRET_VARIABLES = (
    "AZURE_CLIENT_SECRET",
    "HF_TOKEN",
    "AWS_SECRET_ACCESS_KEY",
    "MLFLOW_TRACKING_TOKEN",
    "AZURE_STORAGE_CONNECTION_STRING",
    "HUGGING_FACE_HUB_TOKEN",
)


@pytest.fixture
def secret_environment(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    values = {name: f"s3cr3t-{name.lower()}-{secrets.token_hex(8)}" for name in SECRET_VARIABLES}
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


def _files_holding(root: Path, values: list[str]) -> list[str]:
    found = []
    for file in root.rglob("*"):
        if file.is_file() and not file.is_symlink():
            data = file.read_bytes()
            found += [f"{file}: {v[:20]}" for v in values if v.encode() in data]
    return found


@pytest.mark.slow
def test_a_tracked_conversion_records_no_secret_from_the_environment(
    tmp_path_factory, checkpoint, secret_environment
) -> None:
    root = root_with_store(tmp_path_factory, "secrets")
    tag_secret = f"tag-{secrets.token_hex(8)}"
    experiment = {"tags": {"team": "nlp", "api_token": tag_secret, "db_password": tag_secret}}
    project = make_project(root, "secrets", checkpoint("distilbert-token"))
    project.defaults = {"experiment_config": experiment}
    output = project.call()
    project.call()  # and a reuse, which records a run of its own
    values = [*secret_environment.values(), tag_secret]

    runs = project.runs()
    assert len(runs) == 2
    for run in runs:
        recorded = {**run.data.tags, **run.data.params}
        text = repr(sorted(recorded.items())) + repr(sorted(run.data.metrics))
        assert not [v for v in values if v in text], "a secret is in the run's tags or params"
        assert not any(name in recorded for name in ("api_token", "db_password"))
        assert recorded.get("team") == "nlp"
    assert _files_holding(output, values) == [], "a secret is in the output directory"
    assert _files_holding(root / "mlartifacts", values) == [], "a secret is in an artifact"
    assert _files_holding(root, values) == [], "a secret is somewhere under the root"


def test_an_azureml_dry_run_records_no_secret_from_the_environment(
    cli, tmp_path, monkeypatch, secret_environment
) -> None:
    pytest.importorskip("azure.ai.ml", reason=AZUREML_EXTRA)
    monkeypatch.chdir(tmp_path)
    run = cli(
        *("azureml", "submit", "--compute", "cpu", "--training-job", "train-1"),
        *("--dry-run", "-o", tmp_path / "job.yaml"),
    )
    assert run.code == 0, run.stderr
    assert _files_holding(tmp_path, list(secret_environment.values())) == []


# =============================================================== paths stay under the root


@given(st.text(max_size=60))
def test_safe_segment_is_always_one_harmless_path_segment(name: str) -> None:
    segment = safe_segment(name)
    assert segment and segment not in (".", "..")
    assert "/" not in segment and "\\" not in segment and "\x00" not in segment
    base = Path("/root-of-outputs")
    assert (base / segment).parent == base
    assert os.path.normpath(base / segment).startswith(str(base) + os.sep)


HOSTILE_BACKBONES = (
    "../../../../../../tmp/evil",
    "..",
    ".",
    "/etc/passwd",
    "a/../../b",
    "..\\..\\windows",
    "~root",
    "name\x00with-nul",
    "",
    "模型/../../x",
)


@pytest.mark.parametrize("backbone", HOSTILE_BACKBONES)
def test_a_hostile_backbone_in_metadata_json_stays_under_the_root(
    tmp_path_factory, fake_child, backbone: str
) -> None:
    from onnxport.errors import ExecutionError

    root = root_with_store(tmp_path_factory, "hostile-backbone")
    project = make_project(root, "hostile", metadata={"backbone": backbone})
    with pytest.raises(ExecutionError):  # the stand-in child fails once it is asked
        project.call()
    (call,) = fake_child.calls
    output = call["arguments"].output_dir
    tree = (root / "outputs" / "conversion" / "local").resolve()
    assert Path(os.path.normpath(output)).is_relative_to(tree), output
    assert len(output.relative_to(tree).parts) == 4  # <backbone>/spec_.._exec_../v1/conv_..
    assert output.relative_to(tree).parts[0] not in ("", ".", "..")


def test_a_conversion_writes_only_under_its_output_root(checkpoint, tmp_path, monkeypatch) -> None:
    """Every file opened for writing, directory made, renamed or copied by a conversion
    (Python's audit events) is under the output's parent or the scratch directory."""
    from onnxport.pipeline import convert
    from onnxport.request import ConversionRequest

    root, scratch = tmp_path / "root", tmp_path / "scratch"
    root.mkdir()
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    writes: list[str] = []

    def hook(event: str, args: tuple) -> None:
        if event == "open" and len(args) >= 3:
            path, mode, flags = args[0], args[1], args[2]
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)
            )
            if writing and isinstance(path, (str, bytes, os.PathLike)):
                writes.append(os.fsdecode(path))
        elif event in ("os.mkdir", "os.rename", "os.symlink", "os.link", "shutil.copyfile"):
            writes.extend(os.fsdecode(a) for a in args[:2] if isinstance(a, (str, os.PathLike)))

    active = {"on": False}
    sys.addaudithook(lambda event, args: hook(event, args) if active["on"] else None)
    request = ConversionRequest(
        source_path=checkpoint("distilbert-token"),
        output_dir=root / "out",
        config=ConversionConfig().with_overrides(onnx={"exporter": "torchscript"}),
    )
    active["on"] = True
    try:
        convert(request)
    finally:
        active["on"] = False
    source = str(checkpoint("distilbert-token"))
    allowed = (str(root) + os.sep, str(scratch) + os.sep)
    outside = sorted(
        {
            w
            for w in writes
            if not os.path.abspath(w).startswith(allowed)
            and os.path.abspath(w) not in (str(root), str(scratch))
            and not w.startswith(source)
            and not w.startswith("/dev/")
        }
    )
    assert outside == [], outside
    assert any(w.startswith(str(root)) for w in writes), "the hook saw no writes at all"
    assert not [p for p in (root / "out").rglob("*") if p.is_symlink()]


def test_companion_files_that_are_symlinks_are_copied_as_files(
    cli, copy_checkpoint, tmp_path
) -> None:
    """A checkpoint's config.json linked elsewhere lands in the output as a regular file, so
    nothing in the output points outside it."""
    path = copy_checkpoint("bert-encoder")
    elsewhere = tmp_path / "elsewhere.json"
    shutil.move(path / "config.json", elsewhere)
    (path / "config.json").symlink_to(elsewhere)
    run = cli("convert", path, "-o", tmp_path / "out", *FAST)
    assert run.code == 0, run.stderr
    copied = tmp_path / "out" / "config.json"
    assert copied.is_file() and not copied.is_symlink()


def test_a_program_archive_with_pickled_members_never_runs_code(plain, tmp_path) -> None:
    """A `.pt2` whose example inputs are a hostile pickle: torch.export.load would retry them
    with an unrestricted torch.load, so they are refused, with or without --allow-pickle."""
    import io

    from onnxport.request.sections import SourceConfig
    from onnxport.sources import load_source

    marker = tmp_path / "ran"
    buffer = io.BytesIO()
    torch.save({"x": _LeavesAMarker(marker)}, buffer)
    files = plain
    evil = rewrite_member(
        files.program, tmp_path / "evil.pt2", "sample_inputs/model.pt", buffer.getvalue()
    )
    for allow_pickle in (False, True):
        with pytest.raises(SourceError, match="pickled data"):
            load_source(evil, SourceConfig(allow_pickle=allow_pickle))
        assert not marker.exists(), f"unpickling ran the payload (allow_pickle={allow_pickle})"
