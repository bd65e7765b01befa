"""Loading and exporting in a process of their own: the passes and the gate then run in a
process torch never entered, so a large model's memory is gone before quantization."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from models import edit_config_json
from onnxport.errors import ExportError, SourceError
from onnxport.export.cache.hint import HINT_FIELD, checkpoint_hint
from onnxport.export.cache.store import CACHE_ENV, ExportCache
from onnxport.isolation.child import SERVE
from onnxport.pipeline import convert
from onnxport.preparation import ISOLATE_ABOVE_BYTES, isolated, weights_on_disk
from onnxport.progress import Stage, StageEvent, Status
from onnxport.request import ConversionRequest
from onnxport.request.config import ConversionConfig

pytestmark = pytest.mark.slow

ISOLATED = ConversionConfig().with_overrides(
    onnx={"exporter": "torchscript"}, execution={"isolate_export": "always"}
)


def _request(path: Path, config: ConversionConfig | None = None, **kw) -> ConversionRequest:
    return ConversionRequest(path, path.parent / "out", config or ConversionConfig(), **kw)


def _large_copy(checkpoint: Path, directory: Path) -> Path:
    """`checkpoint`'s config.json beside weights above the isolation threshold (sparse)."""
    directory.mkdir()
    shutil.copy(checkpoint / "config.json", directory / "config.json")
    with (directory / "model.safetensors").open("wb") as f:
        f.truncate(ISOLATE_ABOVE_BYTES + 1)  # sparse: the size is what counts
    return directory


def test_auto_isolates_large_weights_only(checkpoint, tmp_path: Path) -> None:
    small = checkpoint("distilbert-token")
    assert 0 < weights_on_disk(small) < ISOLATE_ABOVE_BYTES
    assert not isolated(_request(small))
    large = _large_copy(small, tmp_path / "large")
    assert isolated(_request(large))
    never = ConversionConfig().with_overrides(execution={"isolate_export": "never"})
    assert not isolated(_request(large, never))


def test_auto_binds_in_process_when_the_cache_holds_the_checkpoints_graph(
    checkpoint, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    large = _large_copy(checkpoint("distilbert-token"), tmp_path / "large")
    config = ConversionConfig()
    hint = checkpoint_hint(large, opset=config.onnx.opset_version, keep_debug_metadata=False)
    cache = ExportCache.from_environment()
    cache.ensure()
    cache.store("0" * 32, b"graph", {}, {HINT_FIELD: hint})
    assert not isolated(_request(large))
    # A quantized variant still leaves torch's memory behind first: isolated.
    assert isolated(_request(large, config.with_overrides(onnx={"quantization": "int8"})))
    # --force exports again, and so does a conversion without the cache: isolated.
    assert isolated(_request(large, refresh_export_cache=True))
    assert isolated(_request(large, config.with_overrides(execution={"export_cache": False})))
    # Another opset (another graph) or another architecture is not held.
    assert isolated(_request(large, config.with_overrides(onnx={"opset_version": 17})))
    edit_config_json(large, n_layers=5)
    assert isolated(_request(large))


def test_an_isolated_conversion_publishes_what_the_in_process_one_does(
    checkpoint, converted, tmp_path: Path
) -> None:
    events: list[StageEvent] = []
    request = ConversionRequest(checkpoint("distilbert-token"), tmp_path / "out", ISOLATED)
    manifest = convert(request, progress=events.append)
    here = converted("distilbert-token").manifest
    assert manifest.outputs[0].validation.outputs == here.outputs[0].validation.outputs
    assert manifest.source.weights_sha256 == here.source.weights_sha256
    assert [(e.stage, e.status) for e in events[:4]] == [
        (Stage.LOAD, Status.START),
        (Stage.LOAD, Status.DONE),
        (Stage.EXPORT, Status.START),
        (Stage.EXPORT, Status.DONE),
    ]
    assert manifest.timings["load"] == events[1].seconds
    assert manifest.timings["export"] == events[3].seconds
    assert not (tmp_path / "out" / ".export").exists()


def test_the_parent_of_an_isolated_conversion_never_imports_torch(checkpoint, tmp_path) -> None:
    code = f"""
import sys
from pathlib import Path
from onnxport.pipeline import convert
from onnxport.request import ConversionRequest
from onnxport.request.config import ConversionConfig
config = ConversionConfig().with_overrides(
    onnx={{"exporter": "torchscript", "quantization": "int8"}},
    validation={{"min_task_agreement": 0.5}},
    execution={{"isolate_export": "always"}},
)
manifest = convert(ConversionRequest(Path({str(checkpoint("distilbert-token"))!r}),
                                     Path({str(tmp_path / "out")!r}), config))
print(json.dumps([[o.variant, o.published] for o in manifest.outputs]))
print("torch" in sys.modules, "transformers" in sys.modules)
""".replace("import sys", "import json, sys", 1)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    outputs, modules = done.stdout.strip().splitlines()[-2:]
    assert json.loads(outputs) == [["fp32", True], ["int8", True]]
    assert modules == "False False", "torch entered the process that ran the passes"


def test_the_childs_error_comes_back_typed(copy_checkpoint, tmp_path: Path) -> None:
    broken = copy_checkpoint("distilbert-token")
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    events: list[StageEvent] = []
    with pytest.raises(SourceError, match="is not a valid safetensors file"):
        convert(ConversionRequest(broken, tmp_path / "out", ISOLATED), progress=events.append)
    assert [(e.stage, e.status) for e in events] == [
        (Stage.LOAD, Status.START),
        (Stage.LOAD, Status.FAILED),
    ]
    assert not (tmp_path / "out").exists()


def test_a_child_killed_mid_export_fails_the_conversion_cleanly(checkpoint, tmp_path) -> None:
    """The out-of-memory killer's signature: the parent names the signal, publishes nothing."""
    events: list[StageEvent] = []

    def kill_at_export(event: StageEvent) -> None:
        events.append(event)
        if (event.stage, event.status) == (Stage.EXPORT, Status.START):
            (child,) = [p for p in psutil.Process().children() if SERVE in p.cmdline()]
            child.kill()

    request = ConversionRequest(checkpoint("distilbert-token"), tmp_path / "out", ISOLATED)
    with pytest.raises(ExportError, match="killed by SIGKILL") as raised:
        convert(request, progress=kill_at_export)
    assert raised.value.hint == "the machine may have run out of memory"
    assert (events[-1].stage, events[-1].status) == (Stage.EXPORT, Status.FAILED)
    assert not (tmp_path / "out").exists()
