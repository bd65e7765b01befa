"""Helpers shared by the test modules; the shared fixtures are in `conftest.py`.

- conversions: `convert_with`, `pipeline.convert` with some settings changed;
- training outputs and projects, laid out as the platform's training output
  (`outputs/final_training/local/<backbone>/spec_<fp>_exec_<fp>/v1/{checkpoint/,
  metadata.json}`) around a checkpoint from `models.py`, and `Project`, an
  `execute_conversion` call on one and what it tracked;
- the conversion child: `FakeChild` (a stand-in for `run_child`), the real children alive;
- MLflow stores, migrated once per run;
- files: damage, byte-identity, work directories left behind;
- tiny ONNX graphs whose outputs a test chooses exactly.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import secrets
import shutil
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import psutil
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxport.artifact.manifest import Manifest
from onnxport.artifact.publish import OLD_MARKER, PARTIAL_MARKER
from onnxport.errors import ExecutionError, OnnxportError
from onnxport.execution import run_child
from onnxport.orchestration import execute_conversion
from onnxport.pipeline import convert
from onnxport.progress import StageEvent
from onnxport.request import ConversionRequest
from onnxport.request.config import ConversionConfig, ExperimentConfig, load_conversion_config
from onnxport.request.fingerprints import conversion_fingerprint
from onnxport.request.paths import conversion_output_dir
from onnxport.tracking.store import resolve_tracking_uri
from suite import build_once

# ---------------------------------------------------------------------------- conversions


def convert_with(
    source_path: Path,
    output_dir: Path,
    config: ConversionConfig | None = None,
    **sections: dict[str, Any],
) -> Manifest:
    """`pipeline.convert` of `source_path` into `output_dir` with `config` (the defaults
    unless given), its `sections` changed as the command line changes them
    (`onnx={"quantization": "int8"}`)."""
    config = config or ConversionConfig()
    if sections:
        config = config.with_overrides(**sections)
    return convert(ConversionRequest(source_path=source_path, output_dir=output_dir, config=config))


# ----------------------------------------------------------- training outputs and projects

SPEC_FP = "abc123"
EXEC_FP = "def456"
BACKBONE = "distilbert-base-uncased"

# The TorchScript exporter: a few seconds faster per conversion than the dynamo exporter,
# and the orchestration does not depend on which exporter runs.
CONVERSION_YAML = """\
target:
  format: onnx
onnx:
  opset_version: 18
  quantization: none
  run_smoke_test: true
  exporter: torchscript
output:
  filename_pattern: "model_{quantization}.onnx"
validation:
  shapes: [[1, 8], [2, 13]]
"""


def training_output_dir(
    root: Path,
    *,
    backbone: str = BACKBONE,
    spec_fp: str = SPEC_FP,
    exec_fp: str = EXEC_FP,
    variant: int = 1,
) -> Path:
    return (
        root
        / "outputs"
        / "final_training"
        / "local"
        / backbone
        / f"spec_{spec_fp}_exec_{exec_fp}"
        / f"v{variant}"
    )


def lay_out_training_output(
    root: Path,
    checkpoint: Path,
    *,
    backbone: str = BACKBONE,
    spec_fp: str = SPEC_FP,
    exec_fp: str = EXEC_FP,
    metadata: dict | str | None = None,
) -> Path:
    """Copy `checkpoint` into a training output under `root`; return the `v1` directory."""
    parent = training_output_dir(root, backbone=backbone, spec_fp=spec_fp, exec_fp=exec_fp)
    parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(checkpoint, parent / "checkpoint", dirs_exist_ok=True)
    if metadata is None:
        metadata = {"backbone": backbone}
    if isinstance(metadata, str):
        (parent / "metadata.json").write_text(metadata, encoding="utf-8")
    else:
        (parent / "metadata.json").write_text(json.dumps(metadata), encoding="utf-8")
    return parent


def write_config_dir(
    directory: Path,
    *,
    conversion: str = CONVERSION_YAML,
    experiment: str | None = None,
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "conversion.yaml").write_text(conversion, encoding="utf-8")
    if experiment is not None:
        (directory / "experiment.yaml").write_text(experiment, encoding="utf-8")
    return directory


@dataclass
class Project:
    """A project root with a training output, a config dir and an MLflow experiment."""

    root: Path
    config_dir: Path
    parent: Path
    experiment: str
    spec_fp: str = SPEC_FP
    exec_fp: str = EXEC_FP
    defaults: dict[str, Any] = field(default_factory=dict)

    def call(self, **overrides: Any) -> Path:
        arguments: dict[str, Any] = {
            "root_dir": self.root,
            "config_dir": self.config_dir,
            "parent_training_output_dir": self.parent,
            "parent_spec_fp": self.spec_fp,
            "parent_exec_fp": self.exec_fp,
            "experiment_config": None,
            "conversion_experiment_name": self.experiment,
            "platform": "local",
            # The tests read a reuse's run right after the call: it is written before the
            # call returns (the detached recorder has tests of its own).
            "wait_for_tracking": True,
            **self.defaults,
            **overrides,
        }
        return execute_conversion(**arguments)

    def expected_output_dir(self, platform: str = "local", backbone: str = BACKBONE) -> Path:
        config = load_conversion_config(self.config_dir)
        conv_fp = conversion_fingerprint(self.spec_fp, self.exec_fp, config, version="1")
        return conversion_output_dir(
            self.root,
            platform=platform,
            backbone=backbone,
            parent_spec_fp=self.spec_fp,
            parent_exec_fp=self.exec_fp,
            version="1",
            conv_fp=conv_fp,
        )

    @property
    def tracking_uri(self) -> str:
        return resolve_tracking_uri(self.root, ExperimentConfig())

    def client(self):
        from mlflow.tracking import MlflowClient

        return MlflowClient(self.tracking_uri)

    def runs(self) -> list:
        if not (self.root / "mlflow.db").exists():
            return []
        client = self.client()
        experiment = client.get_experiment_by_name(self.experiment)
        if experiment is None:
            return []
        return client.search_runs([experiment.experiment_id], order_by=["attributes.start_time"])

    def conversion_runs(self) -> list:
        return [r for r in self.runs() if r.data.tags.get("onnxport.cache_hit") != "true"]

    def cache_hit_runs(self) -> list:
        return [r for r in self.runs() if r.data.tags.get("onnxport.cache_hit") == "true"]

    def partials(self) -> list[Path]:
        out = self.expected_output_dir()
        return sorted(out.parent.glob(f".{out.name}.partial-*")) if out.parent.exists() else []


def make_project(
    root: Path,
    name: str,
    checkpoint: Path | None = None,
    *,
    conversion: str = CONVERSION_YAML,
    experiment_yaml: str | None = None,
    metadata: dict | str | None = None,
    spec_fp: str | None = None,
    exec_fp: str | None = None,
    config_dirname: str | None = None,
) -> Project:
    """A training output under `root` with its own fingerprints, config dir and experiment.

    Without `checkpoint` the `checkpoint/` directory is empty: enough for everything that
    happens before the child starts.
    """
    spec_fp = spec_fp or secrets.token_hex(3)
    exec_fp = exec_fp or secrets.token_hex(3)
    if checkpoint is None:
        checkpoint = root / f"empty-checkpoint-{name}"
        checkpoint.mkdir(parents=True, exist_ok=True)
    parent = lay_out_training_output(
        root, checkpoint, spec_fp=spec_fp, exec_fp=exec_fp, metadata=metadata
    )
    config_dir = write_config_dir(
        root / (config_dirname or f"config-{name}"),
        conversion=conversion,
        experiment=experiment_yaml,
    )
    return Project(root, config_dir, parent, f"conversion-{name}", spec_fp, exec_fp)


# ------------------------------------------------------------------- the conversion child

CONVERSION_TIMEOUT = 600  # seconds a test waits for a conversion under a loaded machine


class FakeChild:
    """Stands in for `run_child`: records what it was given, hands its callbacks `events`
    and `lines`, and fails with `error` (by default as a killed child).

    The call is bound to `run_child`'s own signature, so a parameter renamed or added there
    breaks these tests instead of letting the stand-in accept what the real one refuses.
    """

    def __init__(
        self,
        events: tuple[StageEvent, ...] = (),
        lines: tuple[str, ...] = (),
        error: OnnxportError | None = None,
    ) -> None:
        self.calls: list[dict[str, Any]] = []
        self.events = events
        self.lines = lines
        self.error = error or ExecutionError("the conversion process was killed by SIGKILL")

    def __call__(self, *args: Any, **kwargs: Any):
        bound = inspect.signature(run_child).bind(*args, **kwargs)
        self.calls.append(dict(bound.arguments))
        on_event, on_line = bound.arguments.get("on_event"), bound.arguments.get("on_line")
        for event in self.events if on_event else ():
            on_event(event)
        for line in self.lines if on_line else ():
            on_line(line)
        raise self.error


def conversion_children() -> list[psutil.Process]:
    """This process's descendants that run `python -m onnxport.execution`."""
    found = []
    for process in psutil.Process().children(recursive=True):
        try:
            if any("onnxport.execution" in part for part in process.cmdline()):
                found.append(process)
        except psutil.Error:
            continue
    return found


def wait_for(condition: Callable[[], Any], what: str, timeout: float = CONVERSION_TIMEOUT) -> Any:
    """The first true value of `condition()`, polled; the test fails after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


# --------------------------------------------------------------------------- MLflow stores


def migrated_store(tmp_path_factory) -> Path:
    """A new SQLite MLflow store made by `prepare_store` in a directory that did not exist.

    Created once per test run (the schema migration takes seconds); tests that need a
    store of their own get a copy of it from `root_with_store`.
    """
    from onnxport.tracking.store import prepare_store

    def migrate(directory: Path) -> None:
        prepare_store(resolve_tracking_uri(directory / "not-yet-created", ExperimentConfig()))

    return build_once(tmp_path_factory, "mlflow-store", migrate) / "not-yet-created" / "mlflow.db"


def root_with_store(tmp_path_factory, name: str) -> Path:
    """A new project root holding a copy of the migrated store as its `mlflow.db`."""
    root = tmp_path_factory.mktemp(name)
    shutil.copyfile(migrated_store(tmp_path_factory), root / "mlflow.db")
    return root


# ----------------------------------------------------------------------------------- files


def corrupt_byte(path: Path, offset: int | None = None) -> None:
    """Flip one byte of `path` (in the middle unless told where)."""
    data = bytearray(path.read_bytes())
    index = len(data) // 2 if offset is None else offset
    data[index] ^= 0xFF
    path.write_bytes(bytes(data))


def overwrite(name: str, data: bytes) -> Callable[[Path], None]:
    """A damage to a checkpoint: its file `name` replaced by `data`."""
    return lambda directory: (directory / name).write_bytes(data)


def rewrite_member(archive: Path, target: Path, suffix: str, content: bytes) -> Path:
    """A copy of the zip `archive` at `target`, its member ending in `suffix` now `content`."""
    with zipfile.ZipFile(archive) as source, zipfile.ZipFile(target, "w") as copy:
        for item in source.infolist():
            data = content if item.filename.endswith(suffix) else source.read(item)
            copy.writestr(item, data)
    return target


def snapshot(directory: Path) -> dict[str, str]:
    """Every file below `directory` (relative path) with its sha256: byte-identity."""
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def leftovers(final: Path) -> list[str]:
    """Hidden work directories (`.NAME.partial-*`, `.NAME.old-*`) beside `final`."""
    if not final.parent.is_dir():
        return []
    markers = (f".{final.name}{PARTIAL_MARKER}", f".{final.name}{OLD_MARKER}")
    return sorted(p.name for p in final.parent.iterdir() if p.name.startswith(markers))


# ------------------------------------------------------------------------- tiny ONNX graphs


def identity_model(path: Path, *, scale: float = 1.0, dims: tuple = ("batch", "sequence", 3)):
    """`logits = scores * scale`: a model whose outputs the test chooses exactly."""
    graph = helper.make_graph(
        [helper.make_node("Mul", ["scores", "scale"], ["logits"])],
        "identity",
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, list(dims))],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, list(dims))],
        [numpy_helper.from_array(np.array(scale, dtype=np.float32), "scale")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def edit_initializer(
    model_path: Path, target: Path, name_suffix: str, change: Callable[[np.ndarray], np.ndarray]
) -> str:
    """Save a copy of `model_path` with one initializer changed; return that initializer's name."""
    model = onnx.load(str(model_path))
    (initializer,) = [i for i in model.graph.initializer if i.name.endswith(name_suffix)]
    changed = change(numpy_helper.to_array(initializer).copy()).astype(np.float32)
    initializer.CopyFrom(numpy_helper.from_array(changed, initializer.name))
    onnx.save(model, str(target))
    return initializer.name


@contextlib.contextmanager
def using_tracking_uri(uri: str) -> Iterator[None]:
    """MLflow's tracking URI set to `uri` in this process for the block, and unset after.
    (`mlflow.set_tracking_uri(previous)` would pin the default it resolved, and its
    environment variable, for every later test of the worker: a test that points MLflow
    elsewhere through `MLFLOW_TRACKING_URI` would then log to the wrong store.)"""
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    with _use_tracking_uri(uri):
        yield
