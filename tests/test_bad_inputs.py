"""A corpus of malformed inputs, built here, thrown at every entry point.

Entry points: `onnxport convert`, `execute_conversion`, `onnxport.cli.main(["--config-dir",
...])` (what `python -m onnxport.cli` runs), `onnxport benchmark` and `onnxport azureml submit
--dry-run`. Every case must give a
clear error (the message names the problem), a non-zero exit (2: input the user can fix,
1: a conversion that failed), no traceback without --debug, and no published or damaged
output: an earlier good output in the way stays byte-identical, and no work directory is
left beside it.

Fast cases run in process; the few that need the conversion child (~20 s each) are slow.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from checks import assert_clean_failure
from models import _bert_config, edit_config_json
from onnxport.artifact.manifest import verify_directory
from onnxport.errors import ConfigError, OnnxportError, SourceError, TrackingError
from suite import AZUREML_EXTRA
from support import (
    CONVERSION_TIMEOUT,
    EXEC_FP,
    SPEC_FP,
    Project,
    conversion_children,
    leftovers,
    make_project,
    overwrite,
    root_with_store,
    snapshot,
)

GOOD = "distilbert-token"  # the earlier output every convert case must leave alone
FAST = ("--exporter", "torchscript")
LONG_NAME = "n" * 300  # longer than any file system's 255-byte name limit
# What the system says when a location refuses writes (chattr +i, a read-only mount, modes).
REFUSED = ("Operation not permitted", "Read-only file system", "Permission denied")


# ----------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def read_only(directory: Path) -> Iterator[None]:
    """Make `directory` refuse new entries even to root (`chattr +i`); skip where impossible.

    Tests run as root here, which ignores file modes, so chmod alone would prove nothing.
    """
    if os.geteuid() != 0:
        directory.chmod(0o555)
        undo = ["chmod", "755", str(directory)]
    else:
        if shutil.which("chattr") is None:
            pytest.skip("running as root without chattr: no way to make a directory read-only")
        done = subprocess.run(["chattr", "+i", str(directory)], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"chattr +i is refused here: {done.stderr.strip()}")
        undo = ["chattr", "-i", str(directory)]
    try:
        probe = directory / ".probe"
        try:
            probe.mkdir()
        except OSError:
            pass
        else:
            probe.rmdir()
            pytest.skip(f"{directory} still takes new entries: cannot test a read-only location")
        yield
    finally:
        subprocess.run(undo, check=True)


@contextlib.contextmanager
def mounted(directory: Path, kind: str) -> Iterator[Path]:
    """An empty file system mounted at `directory` (made here): `tmpfs`, or `bind`, a bind
    mount of a directory of the same file system (which `os.path.ismount` cannot see);
    skip where this process may not mount."""
    directory.mkdir()
    if kind == "tmpfs":
        command = ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(directory)]
    else:
        origin = directory.with_name(f"{directory.name}-origin")
        origin.mkdir()
        command = ["mount", "--bind", str(origin), str(directory)]
    if shutil.which("mount") is None:
        pytest.skip("no mount command: cannot make a mount point")
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"mounting is refused here: {done.stderr.strip()}")
    try:
        yield directory
    finally:
        subprocess.run(["umount", str(directory)], check=True)


def symlink_loop(directory: Path, name: str = "loop") -> Path:
    """`directory/name` -> `directory/name-b` -> `directory/name`."""
    first, second = directory / name, directory / f"{name}-b"
    first.symlink_to(second)
    second.symlink_to(first)
    return first


# -------------------------------------------------------------- hostile models, built here


HOSTILE_MODULE = """
import torch


class Raises(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 4)

    def forward(self, x):
        raise RuntimeError("this model cannot run: forward is broken")


class ReturnsNan(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 4)

    def forward(self, x):
        return self.linear(x) * float("nan")


def raises():
    return Raises()


def returns_nan():
    return ReturnsNan()
"""
HOSTILE_SPEC = {"inputs": [{"name": "x", "dtype": "float32", "shape": ["batch", 4]}]}


@dataclass(frozen=True)
class Hostile:
    """Checkpoints and plain models that load but cannot be converted faithfully."""

    nan_weights: Path
    """A tiny BERT whose every weight is NaN, saved with `save_pretrained`."""
    short_positions: Path
    """A tiny BERT with 8 positions: its forward raises on the 13-token example input."""
    plain: Path
    """`hostile_models.py` (factories `raises`, `returns_nan`), weights and input spec."""


@pytest.fixture(scope="session")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Hostile:
    from safetensors.torch import save_file
    from transformers import BertModel

    root = tmp_path_factory.mktemp("hostile")
    torch.manual_seed(0)
    model = BertModel(_bert_config())
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.fill_(float("nan"))
    model.eval().save_pretrained(root / "nan-weights", safe_serialization=True)

    config = _bert_config()
    config.max_position_embeddings = 8
    BertModel(config).eval().save_pretrained(root / "short-positions", safe_serialization=True)

    plain = root / "plain"
    plain.mkdir()
    (plain / "hostile_models.py").write_text(HOSTILE_MODULE, encoding="utf-8")
    weights = {"linear.weight": torch.zeros(4, 4), "linear.bias": torch.zeros(4)}
    save_file(weights, plain / "weights.safetensors")
    (plain / "spec.yaml").write_text(yaml.safe_dump(HOSTILE_SPEC), encoding="utf-8")
    return Hostile(root / "nan-weights", root / "short-positions", plain)


# ====================================================================== onnxport convert


@dataclass
class Ctx:
    """What a case builds its input from."""

    tmp: Path
    checkpoint: Callable[[str], Path]
    copy_checkpoint: Callable[[str], Path]
    hostile: Hostile
    monkeypatch: pytest.MonkeyPatch

    def damaged(self, name: str, damage: Callable[[Path], Any]) -> Path:
        path = self.copy_checkpoint(name)
        damage(path)
        return path

    def config_file(self, text: str | bytes) -> Path:
        file = self.tmp / "conversion.yaml"
        if isinstance(text, bytes):
            file.write_bytes(text)
        else:
            file.write_text(text, encoding="utf-8")
        return file


@dataclass(frozen=True)
class ConvertCase:
    make: Callable[[Ctx], list]
    """The arguments after `convert` (and before `-o`)."""
    code: int
    says: tuple[str, ...]
    output: Callable[[Ctx], Path] | None = None
    """Where to write instead of over the earlier good output (which is then not at risk)."""
    slow: bool = False


def _weights(transform: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    def damage(path: Path) -> None:
        weights = path / "model.safetensors"
        weights.write_bytes(transform(weights.read_bytes()))

    return damage


def _truncate(name: str) -> Callable[[Path], None]:
    def damage(path: Path) -> None:
        data = (path / name).read_bytes()
        (path / name).write_bytes(data[: len(data) // 2])

    return damage


def _config(**changes: Any) -> Callable[[Ctx], list]:
    return lambda ctx: [ctx.damaged("bert-encoder", lambda p: edit_config_json(p, **changes))]


def _tokenizer(damage: Callable[[Path], None]) -> Callable[[Ctx], list]:
    return lambda ctx: [ctx.damaged("distilbert-token", damage)]


def _yaml(text: str | bytes) -> Callable[[Ctx], list]:
    return lambda ctx: [ctx.checkpoint("bert-encoder"), "-c", ctx.config_file(text), *FAST]


def _plain(factory: str) -> Callable[[Ctx], list]:
    def make(ctx: Ctx) -> list:
        ctx.monkeypatch.chdir(ctx.hostile.plain)  # --factory imports from the working dir
        return [
            ctx.hostile.plain / "weights.safetensors",
            *("--factory", f"hostile_models:{factory}"),
            *("--input-spec", ctx.hostile.plain / "spec.yaml", *FAST),
        ]

    return make


def _dangling_link(directory: Path) -> Path:
    link = directory / "dangling"
    link.symlink_to(directory / "gone")
    return link


def _random_file(path: Path) -> Path:
    path.write_bytes(b"not a model " + os.urandom(4096))  # no pickle mark first
    return path


def _read_only_output(ctx: Ctx) -> Path:
    directory = ctx.tmp / "locked"
    directory.mkdir()
    return directory / "out"


CONVERT_CASES: dict[str, ConvertCase] = {
    # --- weights
    "zero-byte-safetensors": ConvertCase(
        lambda ctx: [ctx.damaged("bert-encoder", overwrite("model.safetensors", b""))],
        2,
        ("model.safetensors is not a valid safetensors file",),
    ),
    "safetensors-truncated-in-the-data": ConvertCase(
        lambda ctx: [ctx.damaged("bert-encoder", _weights(lambda d: d[:-1000]))],
        2,
        ("model.safetensors is truncated",),
    ),
    "safetensors-truncated-in-the-header": ConvertCase(
        lambda ctx: [ctx.damaged("bert-encoder", _weights(lambda d: d[:20]))],
        2,
        ("not a valid safetensors file", "truncated"),
    ),
    "safetensors-header-of-garbage": ConvertCase(
        lambda ctx: [ctx.damaged("bert-encoder", _weights(lambda d: d[:8] + b"\x00" * 64))],
        2,
        ("not a valid safetensors file",),
    ),
    "weights-wider-than-the-config": ConvertCase(
        _config(hidden_size=64, intermediate_size=128),
        2,
        ("cannot load the weights", "tensor shapes differ from the sizes config.json gives"),
    ),
    "vocabulary-larger-than-the-weights": ConvertCase(
        _config(vocab_size=1024),
        2,
        ("tensor shapes differ from the sizes config.json gives",),
    ),
    "fewer-layers-than-the-weights": ConvertCase(
        _config(num_hidden_layers=1), 2, ("do not fit a BertModel", "unexpected")
    ),
    # --- config.json dimensions
    "huge-layer-count": ConvertCase(
        _config(num_hidden_layers=10**6),
        2,
        ("num_hidden_layers = 1000000", "the weights hold 2 numbered layers"),
    ),
    "huge-vocabulary": ConvertCase(
        _config(vocab_size=10**12), 2, ("tensor shapes differ from the sizes",)
    ),
    "huge-position-table": ConvertCase(
        _config(max_position_embeddings=10**11), 2, ("tensor shapes differ from the sizes",)
    ),
    "huge-hidden-size": ConvertCase(
        _config(hidden_size=10**9), 2, ("tensor shapes differ from the sizes",), slow=True
    ),
    "negative-hidden-size": ConvertCase(_config(hidden_size=-32), 2, ("negative dimension -32",)),
    "negative-layer-count": ConvertCase(
        _config(num_hidden_layers=-1), 2, ("do not fit a BertModel",)
    ),
    "heads-that-do-not-divide-the-hidden-size": ConvertCase(
        _config(num_attention_heads=5), 2, ("not a multiple of the number of attention heads",)
    ),
    "dimension-of-the-wrong-type": ConvertCase(
        _config(hidden_size="32"), 2, ("hidden_size", "expected int")
    ),
    "config-json-that-is-a-list": ConvertCase(
        lambda ctx: [ctx.damaged("bert-encoder", overwrite("config.json", b"[1, 2]"))],
        2,
        ("config.json must hold a JSON object",),
    ),
    # --- tokenizer files
    "tokenizer-json-of-binary-garbage": ConvertCase(
        _tokenizer(overwrite("tokenizer.json", b"\x00\xff\xfe garbage")),
        2,
        ("the tokenizer files in", "cannot be loaded", "utf-8"),
    ),
    "tokenizer-json-truncated": ConvertCase(
        _tokenizer(_truncate("tokenizer.json")), 2, ("tokenizer files", "cannot be loaded")
    ),
    "tokenizer-json-empty": ConvertCase(
        _tokenizer(overwrite("tokenizer.json", b"")), 2, ("tokenizer files", "cannot be loaded")
    ),
    "tokenizer-json-of-the-wrong-shape": ConvertCase(
        _tokenizer(overwrite("tokenizer.json", b'{"model": 3}')),
        2,
        ("tokenizer files", "cannot be loaded"),
    ),
    "tokenizer-config-not-json": ConvertCase(
        _tokenizer(overwrite("tokenizer_config.json", b'{"model_max_length": ')),
        2,
        ("tokenizer files", "cannot be loaded"),
    ),
    # --- conversion.yaml
    "conversion-yaml-empty": ConvertCase(_yaml(""), 2, ("conversion.yaml is empty",)),
    "conversion-yaml-a-list": ConvertCase(
        _yaml("- onnx\n- output\n"), 2, ("expected a mapping of sections", "got a list")
    ),
    "conversion-yaml-a-scalar": ConvertCase(
        _yaml("just some words\n"), 2, ("expected a mapping", "got a str")
    ),
    "conversion-yaml-misspelt-key": ConvertCase(
        _yaml("onnx: {opset_versoin: 18}\n"), 2, ("onnx.opset_versoin: unknown key",)
    ),
    "conversion-yaml-misspelt-section": ConvertCase(
        _yaml("onx: {opset_version: 18}\n"), 2, ("onx: unknown key",)
    ),
    "conversion-yaml-wrong-type": ConvertCase(
        _yaml("onnx: {opset_version: eighteen}\n"), 2, ("onnx.opset_version",)
    ),
    "conversion-yaml-shapes-not-a-list": ConvertCase(
        _yaml("validation: {shapes: big}\n"), 2, ("validation.shapes",)
    ),
    "conversion-yaml-huge-shape": ConvertCase(
        _yaml("validation: {shapes: [[1, 1000000000]]}\n"), 2, ("outside 1..65536",)
    ),
    "conversion-yaml-negative-shape": ConvertCase(
        _yaml("validation: {shapes: [[-1, 8]]}\n"), 2, ("outside 1..65536",)
    ),
    "filename-pattern-with-dotdot": ConvertCase(
        _yaml('output: {filename_pattern: "../escape_{quantization}.onnx"}\n'),
        2,
        ("output.filename_pattern", "plain file name"),
    ),
    "filename-pattern-absolute": ConvertCase(
        _yaml('output: {filename_pattern: "/tmp/escape_{quantization}.onnx"}\n'),
        2,
        ("output.filename_pattern", "plain file name"),
    ),
    "conversion-yaml-python-tag": ConvertCase(
        _yaml("onnx: !!python/object/apply:os.getcwd []\n"),
        2,
        ("is not valid YAML", "python/object/apply"),
    ),
    "quantize-nodes-to-exclude-misspelt": ConvertCase(
        _yaml("onnx: {quantization: int8}\nquantize: {nodes_to_exclude: [does_not_exist]}\n"),
        2,
        ("quantize.nodes_to_exclude names nodes the graph does not have: does_not_exist", "/"),
    ),
    "conversion-yaml-not-utf8": ConvertCase(
        _yaml(b"onnx: {opset_version: 18}\n# \xff\xfe\n"), 2, ("cannot read conversion config",)
    ),
    # --- paths
    "source-a-symlink-loop": ConvertCase(
        lambda ctx: [symlink_loop(ctx.tmp)], 2, ("loop", "symbolic link that leads nowhere")
    ),
    "source-a-dangling-symlink": ConvertCase(
        lambda ctx: [_dangling_link(ctx.tmp)],
        2,
        ("dangling", "symbolic link that leads nowhere"),
    ),
    "source-name-too-long": ConvertCase(
        lambda ctx: [ctx.tmp / LONG_NAME], 2, ("cannot read the source path", "too long")
    ),
    "source-non-ascii-and-missing": ConvertCase(
        lambda ctx: [ctx.tmp / "modèle-ünïcødé-模型"],
        2,
        ("source not found", "modèle-ünïcødé-模型"),
    ),
    "source-a-file-of-random-bytes": ConvertCase(
        lambda ctx: [_random_file(ctx.tmp / "model.dat")],
        2,
        ("model.dat is a file onnxport does not know how to load",),
    ),
    "output-name-too-long": ConvertCase(
        lambda ctx: [ctx.checkpoint("bert-encoder"), *FAST],
        2,
        ("cannot use the output path", "too long"),
        output=lambda ctx: ctx.tmp / LONG_NAME,
    ),
    "output-through-a-symlink-loop": ConvertCase(
        lambda ctx: [ctx.checkpoint("bert-encoder"), *FAST],
        2,
        ("error (output)", "symbolic link that leads nowhere"),
        output=lambda ctx: symlink_loop(ctx.tmp, "out-loop") / "out",
    ),
    "output-on-a-read-only-location": ConvertCase(
        lambda ctx: [ctx.checkpoint("bert-encoder"), *FAST],
        2,
        ("error (output): cannot write to", "writable output location"),
        output=_read_only_output,
    ),
    # --- models that load but cannot be converted faithfully
    "forward-raises": ConvertCase(
        lambda ctx: [ctx.hostile.short_positions, *FAST],
        2,
        ("BertModel fails on example inputs (2x13)", "RuntimeError"),
    ),
    "forward-raises-on-a-validation-shape": ConvertCase(
        _yaml("validation: {shapes: [[1, 8], [1, 500]]}\n"),
        2,
        ("the PyTorch model fails on the validation input [1, 500]",),
    ),
    "weights-that-are-nan": ConvertCase(
        lambda ctx: [ctx.hostile.nan_weights, *FAST], 2, ("the PyTorch model itself outputs NaN",)
    ),
    "plain-model-whose-forward-raises": ConvertCase(
        _plain("raises"), 2, ("Raises from", "forward is broken")
    ),
    "plain-model-that-returns-nan": ConvertCase(
        _plain("returns_nan"), 2, ("the PyTorch model itself outputs NaN",)
    ),
}


def _params(cases: dict) -> list:
    return [
        pytest.param(
            case, id=name, marks=[pytest.mark.slow] if getattr(case, "slow", False) else []
        )
        for name, case in cases.items()
    ]


@pytest.mark.parametrize("case", _params(CONVERT_CASES))
def test_convert_refuses_bad_input_cleanly(
    cli, checkpoint, copy_checkpoint, copy_output, hostile, tmp_path, monkeypatch, case
) -> None:
    ctx = Ctx(tmp_path, checkpoint, copy_checkpoint, hostile, monkeypatch)
    earlier = copy_output(GOOD)
    before = snapshot(earlier)
    args = case.make(ctx)
    output = earlier if case.output is None else case.output(ctx)
    guard = contextlib.nullcontext()
    if case.output is _read_only_output:
        guard = read_only(output.parent)
    with guard:
        run = cli("convert", *args, "-o", output, "--force")
    assert_clean_failure(run.code, run.stdout, run.stderr, case.code, case.says)
    if case.output is _read_only_output:
        assert any(reason in run.stderr for reason in REFUSED), run.stderr
    assert snapshot(earlier) == before, "the earlier output changed"
    assert verify_directory(earlier) == []
    assert leftovers(earlier) == []
    if output != earlier:
        assert not os.path.lexists(output) or output.is_symlink(), "something was published"
        with contextlib.suppress(OSError):
            assert leftovers(output) == []


def test_convert_into_a_read_only_location_keeps_the_output_there(
    cli, checkpoint, converted, tmp_path
) -> None:
    """--force over a complete output in a directory that refuses writes: untouched."""
    directory = tmp_path / "locked"
    directory.mkdir()
    earlier = directory / "out"
    shutil.copytree(converted(GOOD).directory, earlier)
    before = snapshot(earlier)
    with read_only(directory):
        run = cli("convert", checkpoint(GOOD), "-o", earlier, "--force", *FAST)
    assert_clean_failure(run.code, run.stdout, run.stderr, 2, ("cannot write to",))
    assert any(reason in run.stderr for reason in REFUSED), run.stderr
    assert snapshot(earlier) == before
    assert sorted(p.name for p in directory.iterdir()) == ["out"]


@pytest.mark.parametrize("kind", ["tmpfs", "bind"])
def test_convert_into_a_mount_point_is_refused_before_any_work(
    cli, checkpoint, tmp_path, kind
) -> None:
    """A rename cannot replace a mount point (a container volume): refused up front, with a
    directory inside it suggested, instead of failing after the whole conversion."""
    with mounted(tmp_path / "volume", kind) as volume:
        run = cli("convert", checkpoint("bert-encoder"), "-o", volume, *FAST)
        written = list(volume.iterdir())
    assert_clean_failure(
        run.code,
        run.stdout,
        run.stderr,
        2,
        ("error (output)", f"{volume} is a mount point", str(volume / "model")),
    )
    assert "✓" not in run.stderr, run.stderr  # no stage ran
    assert written == []
    assert leftovers(volume) == []


def test_debug_shows_the_traceback_of_a_bad_input(cli, copy_checkpoint, tmp_path) -> None:
    broken = copy_checkpoint("bert-encoder")
    (broken / "model.safetensors").write_bytes(b"")
    run = cli("convert", broken, "-o", tmp_path / "out", "--debug")
    assert run.code == 2
    assert "Traceback" in run.stderr
    assert "not a valid safetensors file" in run.stderr


def test_a_non_ascii_source_path_converts(cli, checkpoint, tmp_path) -> None:
    """The counterpart of the missing non-ASCII path: such a path is not itself a problem."""
    source = tmp_path / "modèle-ünïcødé-模型"
    shutil.copytree(checkpoint("bert-encoder"), source)
    output = tmp_path / "sortie-ünï-模型"
    run = cli("convert", source, "-o", output, *FAST)
    assert run.code == 0, run.stderr
    assert verify_directory(output) == []


# ========================================== execute_conversion and python -m onnxport.cli


def _conversion_yaml(text: str) -> Callable[[Project], dict]:
    def change(project: Project) -> dict:
        (project.config_dir / "conversion.yaml").write_text(text, encoding="utf-8")
        return {}

    return change


def _experiment_yaml(text: str) -> Callable[[Project], dict]:
    def change(project: Project) -> dict:
        (project.config_dir / "experiment.yaml").write_text(text, encoding="utf-8")
        return {}

    return change


def _parent_is_a_symlink_loop(project: Project) -> dict:
    return {"parent_training_output_dir": symlink_loop(project.root, "training-loop")}


def _checkpoint_is_a_symlink_loop(project: Project) -> dict:
    shutil.rmtree(project.parent / "checkpoint")
    loop = symlink_loop(project.root, "checkpoint-loop")
    (project.parent / "checkpoint").symlink_to(loop)
    return {}


def _read_only_root(project: Project) -> dict:
    return {"root_dir": project.root / "locked-root"}


@dataclass(frozen=True)
class ApiCase:
    change: Callable[[Project], dict]
    error: type[OnnxportError]
    says: tuple[str, ...]


API_CASES: dict[str, ApiCase] = {
    "conversion-yaml-empty": ApiCase(_conversion_yaml(""), ConfigError, ("is empty",)),
    "conversion-yaml-a-list": ApiCase(
        _conversion_yaml("- target\n- onnx\n"), ConfigError, ("expected a mapping", "list")
    ),
    "conversion-yaml-misspelt-key": ApiCase(
        _conversion_yaml("onnx: {opset_versoin: 18}\n"), ConfigError, ("onnx.opset_versoin",)
    ),
    "conversion-yaml-wrong-type": ApiCase(
        _conversion_yaml("onnx: {run_smoke_test: [yes]}\n"), ConfigError, ("run_smoke_test",)
    ),
    "filename-pattern-with-dotdot": ApiCase(
        _conversion_yaml('output: {filename_pattern: "../../x_{quantization}.onnx"}\n'),
        ConfigError,
        ("filename_pattern",),
    ),
    "filename-pattern-absolute": ApiCase(
        _conversion_yaml('output: {filename_pattern: "/etc/x_{quantization}.onnx"}\n'),
        ConfigError,
        ("filename_pattern",),
    ),
    "conversion-yaml-python-tag": ApiCase(
        _conversion_yaml("onnx: !!python/object/apply:os.getcwd []\n"),
        ConfigError,
        ("not valid YAML",),
    ),
    "eval-file-missing": ApiCase(
        _conversion_yaml("validation: {eval_file: eval.jsonl}\n"),
        ConfigError,
        ("validation.eval_file", "config-bad/eval.jsonl does not exist"),
    ),
    "opset-the-chosen-exporter-lacks": ApiCase(
        _conversion_yaml("onnx: {exporter: torchscript, opset_version: 21}\n"),
        ConfigError,
        ("opset 21 is not supported by the torchscript exporter (7-20)",),
    ),
    "experiment-yaml-a-list": ApiCase(
        _experiment_yaml("- experiment_name\n"), ConfigError, ("experiment.yaml", "mapping")
    ),
    "parent-a-symlink-loop": ApiCase(
        _parent_is_a_symlink_loop, SourceError, ("symbolic link that leads nowhere",)
    ),
    "checkpoint-a-symlink-loop": ApiCase(
        _checkpoint_is_a_symlink_loop, SourceError, ("checkpoint", "leads nowhere")
    ),
    "parent-name-too-long": ApiCase(
        lambda p: {"parent_training_output_dir": p.root / LONG_NAME},
        SourceError,
        ("cannot read the parent training output", "too long"),
    ),
    "fingerprint-that-is-a-path": ApiCase(
        lambda p: {"parent_spec_fp": "../../etc"}, ConfigError, ("parent_spec_fp",)
    ),
    "root-on-a-read-only-location": ApiCase(
        _read_only_root, TrackingError, ("cannot reach the MLflow tracking store",)
    ),
}


def _cli_flags(project: Project, overrides: dict) -> list[str]:
    names = {
        "root_dir": "--root-dir",
        "config_dir": "--config-dir",
        "parent_training_output_dir": "--parent-training-dir",
        "parent_spec_fp": "--parent-spec-fp",
        "parent_exec_fp": "--parent-exec-fp",
    }
    values = {
        "config_dir": project.config_dir,
        "parent_training_output_dir": project.parent,
        "parent_spec_fp": project.spec_fp,
        "parent_exec_fp": project.exec_fp,
        "root_dir": project.root,
        **overrides,
    }
    flags = [str(part) for key, value in values.items() for part in (names[key], value)]
    return [*flags, "--experiment-name", project.experiment, "--platform", "local"]


# `onnxport.cli.main` with the platform's flags is what `python -m onnxport.cli` runs; it is
# called in process here so that `fake_child` can see that no conversion started. The real
# subprocess is test_run's test_cli_bad_input_exits_2_with_a_one_line_error_...
@pytest.mark.parametrize("entry", ["execute_conversion", "onnxport.cli.main"])
@pytest.mark.parametrize("case", list(API_CASES.values()), ids=list(API_CASES))
def test_orchestration_refuses_bad_input_cleanly(
    tmp_path, converted, fake_child, capsys, entry: str, case: ApiCase
) -> None:
    project = make_project(tmp_path, "bad", spec_fp=SPEC_FP, exec_fp=EXEC_FP)
    # An earlier complete conversion of the good request, which no case may disturb.
    earlier = project.expected_output_dir()
    shutil.copytree(converted(GOOD).directory, earlier)
    tree = tmp_path / "outputs" / "conversion"
    before = snapshot(tree)
    overrides = case.change(project)
    read_only_root = overrides.get("root_dir")
    guard = contextlib.nullcontext()
    if read_only_root is not None:
        read_only_root.mkdir()
        guard = read_only(read_only_root)
    with guard:
        if entry == "execute_conversion":
            with pytest.raises(case.error) as raised:
                project.call(**overrides)
            message = str(raised.value)
            assert type(raised.value) is case.error
        else:
            from onnxport.cli import main

            code = main(_cli_flags(project, overrides))
            captured = capsys.readouterr()
            assert_clean_failure(code, captured.out, captured.err, case.error.exit_code, ())
            errors = [line for line in captured.err.splitlines() if line.startswith("error")]
            assert len(errors) == 1, captured.err
            message = errors[0]
    for fragment in case.says:
        assert fragment in message, message
    if read_only_root is not None:
        assert any(reason in message for reason in REFUSED), message
    assert fake_child.calls == [], "a conversion started"
    assert snapshot(tree) == before
    assert leftovers(earlier) == []


@pytest.mark.slow
def test_execute_conversion_of_nan_weights_fails_in_the_child_and_keeps_the_earlier_output(
    tmp_path_factory, hostile, converted
) -> None:
    root = root_with_store(tmp_path_factory, "bad-child")
    project = make_project(root, "nan", hostile.nan_weights, spec_fp=SPEC_FP, exec_fp=EXEC_FP)
    earlier = project.expected_output_dir()
    shutil.copytree(converted(GOOD).directory, earlier)
    before = snapshot(earlier)
    with pytest.raises(SourceError) as raised:
        project.call(force=True)
    assert "the PyTorch model itself outputs NaN" in str(raised.value)
    assert snapshot(earlier) == before
    assert leftovers(earlier) == []
    (run,) = project.runs()
    assert run.info.status == "FAILED"
    assert conversion_children() == []


@pytest.mark.slow
def test_python_m_cli_with_truncated_weights_exits_2_without_a_traceback(
    tmp_path_factory, copy_checkpoint, converted
) -> None:
    root = root_with_store(tmp_path_factory, "bad-cli")
    broken = copy_checkpoint("distilbert-token")
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-512])
    project = make_project(root, "truncated", broken, spec_fp=SPEC_FP, exec_fp=EXEC_FP)
    earlier = project.expected_output_dir()
    shutil.copytree(converted(GOOD).directory, earlier)
    before = snapshot(earlier)
    process = subprocess.run(
        [sys.executable, "-m", "onnxport.cli", *_cli_flags(project, {}), "--force"],
        capture_output=True,
        text=True,
        timeout=CONVERSION_TIMEOUT,
        env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"},
    )
    assert_clean_failure(
        process.returncode,
        process.stdout,
        process.stderr,
        2,
        ("error (load)", "model.safetensors is truncated"),
    )
    assert process.stdout == ""
    assert snapshot(earlier) == before
    assert leftovers(earlier) == []
    (run,) = project.runs()
    assert run.info.status == "FAILED"


# ===================================================================== onnxport benchmark


def _command_exists(*path: str) -> bool:
    """Whether `onnxport <path...>` is a registered command (others may still be adding it)."""
    import typer.main

    from onnxport.cli import app

    group = typer.main.get_command(app)
    for name in path:
        commands = getattr(group, "commands", {})
        if name not in commands:
            return False
        group = commands[name]
    return True


def _manifest_garbage(directory: Path) -> list:
    (directory / "manifest.json").write_text("{garbage", encoding="utf-8")
    return []


def _model_byte_flipped(directory: Path) -> list:
    model = directory / "model_fp32.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    return []


def _manifest_removed(directory: Path) -> list:
    (directory / "manifest.json").unlink()
    return []


# case: (how to spoil the directory or what to pass, the exit code, what stderr must say)
BENCHMARK_CASES: dict[str, tuple[Callable[[Path], list], tuple[str, ...]]] = {
    "batch-size-zero": (lambda d: ["--batch-sizes", "0"], ("batch_sizes", "positive")),
    "batch-sizes-not-numbers": (lambda d: ["--batch-sizes", "a,b"], ("--batch-sizes",)),
    "batch-sizes-empty": (lambda d: ["--batch-sizes", ","], ("--batch-sizes is empty",)),
    "sequence-beyond-the-model": (
        lambda d: ["--seq-lengths", "100000"],
        ("sequence length 100000 is more than the 128 tokens",),
    ),
    "threads-zero": (lambda d: ["--threads", "0"], ("threads must be at least 1",)),
    "iterations-zero": (lambda d: ["--iterations", "0"], ("iterations must be at least 1",)),
    "warmup-negative": (lambda d: ["--warmup", "-1"], ("warmup must be 0 or more",)),
    "manifest-of-garbage": (_manifest_garbage, ("manifest.json is damaged",)),
    "manifest-missing": (_manifest_removed, ("holds no manifest.json",)),
    "model-that-fails-its-checksum": (
        _model_byte_flipped,
        ("is damaged", "model_fp32.onnx does not match its checksum"),
    ),
}


@pytest.mark.parametrize("case", list(BENCHMARK_CASES), ids=list(BENCHMARK_CASES))
def test_benchmark_refuses_bad_input_and_leaves_the_directory_alone(
    cli, copy_output, case: str
) -> None:
    spoil, says = BENCHMARK_CASES[case]
    directory = copy_output(GOOD)
    extra = spoil(directory)
    before = snapshot(directory)
    run = cli("benchmark", directory, "--no-pytorch", "--iterations", "1", *extra)
    assert_clean_failure(run.code, run.stdout, run.stderr, 2, says)
    assert snapshot(directory) == before
    assert leftovers(directory) == []


def test_benchmark_of_a_missing_directory(cli, tmp_path) -> None:
    run = cli("benchmark", tmp_path / "missing", "--no-pytorch")
    assert_clean_failure(run.code, run.stdout, run.stderr, 2, ("missing is not a directory",))
    assert list(tmp_path.iterdir()) == []


# ================================================================ onnxport azureml submit --dry-run


def _azureml_ready() -> None:
    pytest.importorskip("azure.ai.ml", reason=AZUREML_EXTRA)


def _config_option(text: str) -> Callable[[Path], list]:
    def make(work: Path) -> list:
        (work / "bad.yaml").write_text(text, encoding="utf-8")
        return ["--training-job", "train-1", "-c", work / "bad.yaml"]

    return make


def _calibration_file(work: Path) -> list:
    (work / "samples.txt").write_text("a sample\n", encoding="utf-8")
    text = f"quantize: {{calibration_file: {work / 'samples.txt'}}}\n"
    (work / "calibrated.yaml").write_text(text, encoding="utf-8")
    return ["--training-job", "train-1", "-c", work / "calibrated.yaml"]


AZUREML_CASES: dict[str, tuple[Callable[[Path], list], int, tuple[str, ...]]] = {
    "config-misspelt-key": (
        _config_option("onnx: {opset_versoin: 18}\n"),
        2,
        ("onnx.opset_versoin: unknown key",),
    ),
    "config-empty": (_config_option(""), 2, ("bad.yaml is empty",)),
    "config-a-list": (_config_option("- onnx\n"), 2, ("expected a mapping",)),
    "config-wrong-type": (
        _config_option("onnx: {opset_version: latest}\n"),
        2,
        ("onnx.opset_version",),
    ),
    "config-filename-pattern-with-dotdot": (
        _config_option('output: {filename_pattern: "../x_{quantization}.onnx"}\n'),
        2,
        ("filename_pattern",),
    ),
    "config-python-tag": (
        _config_option("onnx: !!python/object/apply:os.getcwd []\n"),
        2,
        ("not valid YAML",),
    ),
    "config-missing": (
        lambda work: ["--training-job", "train-1", "-c", work / "nope.yaml"],
        2,
        ("conversion config not found",),
    ),
    "calibration-file-the-cluster-cannot-read": (
        _calibration_file,
        2,
        ("calibration_file", "cannot read"),
    ),
    "no-training-job": (lambda work: [], 2, ("no training job given",)),
    "training-jobs-file-missing": (
        lambda work: ["--training-jobs-file", work / "jobs.txt"],
        2,
        ("cannot read the training jobs file",),
    ),
    "code-directory-missing": (
        lambda work: ["--training-job", "train-1", "--code", work / "no-code"],
        2,
        ("the code directory", "does not exist"),
    ),
    "compute-empty": (
        lambda work: ["--training-job", "train-1", "--compute", " "],
        2,
        ("no compute cluster given",),
    ),
}


@pytest.fixture(scope="module")
def earlier_dry_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding a good dry run's job YAML and files."""
    from conftest import run_cli

    _azureml_ready()
    work = tmp_path_factory.mktemp("dry-run")
    cwd = Path.cwd()
    os.chdir(work)
    try:
        run = run_cli(
            *("azureml", "submit", "--compute", "cpu", "--training-job", "train-1"),
            *("--dry-run", "-o", work / "job.yaml"),
        )
    finally:
        os.chdir(cwd)
    assert run.code == 0, run.stderr
    return work


@pytest.mark.parametrize("case", list(AZUREML_CASES), ids=list(AZUREML_CASES))
@pytest.mark.parametrize("over_earlier", [False, True], ids=["fresh", "over-an-earlier-dry-run"])
def test_azureml_dry_run_refuses_bad_input_and_writes_nothing(
    cli, tmp_path, monkeypatch, request, case: str, over_earlier: bool
) -> None:
    _azureml_ready()
    make, code, says = AZUREML_CASES[case]
    work = tmp_path / "work"
    if over_earlier:
        shutil.copytree(request.getfixturevalue("earlier_dry_run"), work)
    else:
        work.mkdir()
    monkeypatch.chdir(work)
    args = make(work)
    before = snapshot(work)
    compute = [] if "--compute" in args else ["--compute", "cpu"]
    run = cli("azureml", "submit", *compute, *args, "--dry-run", "-o", work / "job.yaml")
    assert_clean_failure(run.code, run.stdout, run.stderr, code, says)
    assert snapshot(work) == before, "a refused dry run wrote or changed files"
    assert sorted(p.name for p in work.iterdir()) == sorted(before_names(before))


def before_names(files: dict[str, str]) -> set[str]:
    return {Path(name).parts[0] for name in files}
