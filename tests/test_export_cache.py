"""The export cache: one export per architecture, the next checkpoint's weights bound into it
and proven as always; entries checked, locked, evicted; `onnxport cache list|prune`.

The conversions are real (the tiny DistilBERT tagger and checkpoints of its architecture with
other weights); each test's cache is its own (`conftest.isolated_export_cache`), except the
module's warm cache, which its tests copy before damaging.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from checks import machine_traces
from models import edit_config_json, labels, retrained
from onnxport.artifact.manifest import Manifest, read_manifest, verify_directory
from onnxport.errors import ValidationError
from onnxport.export.cache import CACHE_ENV, ExportCache
from onnxport.export.cache.hint import EXCLUDED_CONFIG_KEYS, HINT_FIELD, checkpoint_hint
from onnxport.export.cache.key import cache_key, key_material, uncacheable
from onnxport.export.cache.store import BINDINGS_FILE, ENTRY_FILE, GRAPH_FILE
from onnxport.export.template import UNBOUND, template_from_bytes
from onnxport.request.config import ConversionConfig
from onnxport.request.export_config import Exporter
from onnxport.request.fingerprints import conversion_fingerprint
from onnxport.sources import load_source
from support import (
    CONVERSION_TIMEOUT,
    CONVERSION_YAML,
    convert_with,
    corrupt_byte,
    make_project,
    root_with_store,
)

NAME = "distilbert-token"
SHAPES = [(1, 8), (2, 37), (4, 128)]  # the tiny tagger's default validation shapes
# Random weights leave near-tied logits: int8 moves some argmaxes. The gate is not under test.
INT8 = ConversionConfig().with_overrides(
    onnx={"quantization": "int8"}, validation={"min_task_agreement": 0.01}
)


@contextmanager
def cache_at(root: Path):
    """`$ONNXPORT_CACHE` at `root` for a module fixture (tests have `monkeypatch`)."""
    before = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = str(root)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(CACHE_ENV)
        else:
            os.environ[CACHE_ENV] = before


def _outputs(model: Path, source) -> list[np.ndarray]:
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    found = []
    for batch, length in SHAPES:
        feeds = {k: v.numpy() for k, v in source.make_inputs(batch, length, 0).items()}
        found += session.run(None, feeds)
    return found


@dataclass(frozen=True)
class Warm:
    """A cache the first checkpoint filled, and three conversions of the architecture: the
    first checkpoint (exported), a second with other weights (bound), and the second again
    with `onnxport convert --no-cache` (exported: what binding must equal)."""

    root: Path
    second: Path
    first: tuple[Manifest, Path]
    bound: tuple[Manifest, Path]
    fresh: tuple[Manifest, Path]
    used_around_fresh: tuple[float, float]
    """The entry's last use before and after the --no-cache conversion."""

    def copy(self, target: Path) -> ExportCache:
        shutil.copytree(self.root, target)
        return ExportCache(target)


def _last_used(root: Path) -> float:
    (entry,), _ = ExportCache(root).entries()
    return entry.last_used


@pytest.fixture(scope="module")
def warm(checkpoint, tmp_path_factory: pytest.TempPathFactory) -> Warm:
    from conftest import run_cli

    work = tmp_path_factory.mktemp("warm-cache")
    second = retrained(checkpoint(NAME), work / "second", seed=1)
    with cache_at(work / "cache"):
        first = convert_with(checkpoint(NAME), work / "first")
        bound = convert_with(second, work / "bound")
        used_before = _last_used(work / "cache")
        run = run_cli("convert", second, "-o", work / "fresh", "--no-cache")
        assert run.code == 0, run.stderr
        used_after = _last_used(work / "cache")
    return Warm(
        work / "cache",
        second,
        (first, work / "first"),
        (bound, work / "bound"),
        (read_manifest(work / "fresh"), work / "fresh"),
        (used_before, used_after),
    )


# ------------------------------------------------------------------ conversions through it


@pytest.mark.slow
def test_the_first_checkpoint_exports_and_stores_its_graph_without_weights(warm: Warm) -> None:
    manifest, _ = warm.first
    cache = manifest.export.cache
    assert cache is not None and (cache.status, cache.stored) == ("miss", True)
    assert manifest.export.exporter == "dynamo"
    (entry,), leftovers = ExportCache(warm.root).entries()
    assert leftovers == [] and entry.key == cache.key
    assert entry.created_at == cache.created_at
    assert set(cache.versions) >= {"torch", "transformers", "onnx", "onnxscript", "onnxport"}
    assert machine_traces(entry.path / GRAPH_FILE) == [], "published and cached alike"
    # The graph and its bindings, not the weights: each parameter's initializer is empty.
    bindings = json.loads((entry.path / BINDINGS_FILE).read_text())
    assert "model.classifier.weight" in bindings.values()
    graph = onnx.load(str(entry.path / GRAPH_FILE), load_external_data=False)
    bound = [t for t in graph.graph.initializer if t.name in bindings]
    assert len(bound) == len(bindings)
    assert all(t.external_data[0].value == UNBOUND and not t.raw_data for t in bound)
    # The next checkpoint of the architecture is known to be cached before torch loads it
    # (isolate_export: auto then binds in process).
    hint = checkpoint_hint(warm.second, opset=manifest.export.opset, keep_debug_metadata=False)
    assert entry.info[HINT_FIELD] == hint and ExportCache(warm.root).holds(HINT_FIELD, hint)


@pytest.mark.slow
def test_the_next_checkpoint_binds_its_own_weights_and_equals_its_own_export(
    warm: Warm, source
) -> None:
    bound, bound_dir = warm.bound
    fresh, fresh_dir = warm.fresh
    first = warm.first[0].export.cache
    cache = bound.export.cache
    assert cache is not None and cache.status == "hit"
    assert (cache.key, cache.created_at) == (first.key, first.created_at)
    assert fresh.export.cache is not None and fresh.export.cache.status == "off"
    for manifest in (bound, fresh):
        fp32 = manifest.output("fp32")
        assert fp32.validation is not None and fp32.validation.passed
        assert [tuple(s) for s in fp32.validation.shapes] == SHAPES
        assert fp32.smoke_test is not None and fp32.smoke_test.passed
    assert verify_directory(bound_dir) == []

    inputs = source(NAME)
    bound_out = _outputs(bound_dir / bound.output("fp32").file, inputs)
    fresh_out = _outputs(fresh_dir / fresh.output("fp32").file, inputs)
    first_out = _outputs(warm.first[1] / warm.first[0].output("fp32").file, inputs)
    for b, f, a in zip(bound_out, fresh_out, first_out, strict=True):
        np.testing.assert_allclose(b, f, rtol=0, atol=1e-6)
        assert np.abs(b - a).max() > 1e-2, "the second checkpoint's own weights, not the first's"
    assert bound.conv_fp == fresh.conv_fp, "the cache setting is no part of what is converted"


@pytest.mark.slow
def test_another_quantize_setting_reuses_the_export(warm: Warm, monkeypatch, tmp_path) -> None:
    monkeypatch.setenv(CACHE_ENV, str(warm.root))
    manifest = convert_with(warm.second, tmp_path / "int8", INT8)
    assert manifest.export.cache is not None and manifest.export.cache.status == "hit"
    assert [o.variant for o in manifest.published_outputs()] == ["fp32", "int8"]


@pytest.mark.slow
def test_a_damaged_graph_is_detected_rebuilt_and_never_used(warm: Warm, monkeypatch, tmp_path):
    cache = warm.copy(tmp_path / "cache")
    (entry,), _ = cache.entries()
    corrupt_byte(entry.path / GRAPH_FILE)
    monkeypatch.setenv(CACHE_ENV, str(cache.root))
    manifest = convert_with(warm.second, tmp_path / "out")
    record = manifest.export.cache
    assert record is not None and (record.status, record.stored) == ("miss", True)
    assert "damaged" in record.reason and GRAPH_FILE in record.reason
    assert manifest.output("fp32").validation.passed
    assert cache.load(entry.key).found is not None, "made again, whole"


@pytest.mark.slow
def test_an_entry_that_cannot_be_locked_is_exported_around(warm: Warm, monkeypatch, tmp_path):
    """A lock this process cannot take (another user's file, here a directory in its place)
    is not a failed conversion: the graph is exported, the manifest says why."""
    cache = warm.copy(tmp_path / "cache")
    (entry,), _ = cache.entries()
    lock = cache.root / "locks" / f"{entry.key}.lock"
    lock.unlink(missing_ok=True)
    lock.mkdir(parents=True)
    monkeypatch.setenv(CACHE_ENV, str(cache.root))
    manifest = convert_with(warm.second, tmp_path / "out")
    record = manifest.export.cache
    assert record is not None and record.status == "off"
    assert f"cannot lock entry {entry.key}" in record.reason
    assert manifest.output("fp32").validation.passed


def _swap_bindings(entry_dir: Path, a: str, b: str, *, checksum: bool) -> None:
    bindings = json.loads((entry_dir / BINDINGS_FILE).read_text())
    bindings[a], bindings[b] = bindings[b], bindings[a]
    data = json.dumps(bindings).encode()
    (entry_dir / BINDINGS_FILE).write_bytes(data)
    if checksum:
        info = json.loads((entry_dir / ENTRY_FILE).read_text())
        info["files"][BINDINGS_FILE]["sha256"] = hashlib.sha256(data).hexdigest()
        (entry_dir / ENTRY_FILE).write_text(json.dumps(info))


QUERY = "model.distilbert.transformer.layer.0.attention.q_lin.weight"
KEY = "model.distilbert.transformer.layer.0.attention.k_lin.weight"


@pytest.mark.slow
def test_a_damaged_weight_mapping_is_detected_and_removed(warm: Warm, tmp_path) -> None:
    cache = warm.copy(tmp_path / "cache")
    (entry,), _ = cache.entries()
    _swap_bindings(entry.path, QUERY, KEY, checksum=False)
    lookup = cache.load(entry.key)
    assert lookup.found is None and BINDINGS_FILE in lookup.damage
    assert cache.entries() == ([], []), "removed, never used"


@pytest.mark.slow
def test_weights_bound_wrong_are_refused_by_the_gate_and_nothing_is_published(
    warm: Warm, monkeypatch, tmp_path
) -> None:
    """A mapping changed with its checksum still matching: the gate, as for any model."""
    cache = warm.copy(tmp_path / "cache")
    (entry,), _ = cache.entries()
    _swap_bindings(entry.path, QUERY, KEY, checksum=True)
    monkeypatch.setenv(CACHE_ENV, str(cache.root))
    config = ConversionConfig().with_overrides(validation={"localize": False})
    with pytest.raises(ValidationError, match="does not compute what PyTorch computes"):
        convert_with(warm.second, tmp_path / "out", config)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_no_cache_neither_reads_nor_writes_the_cache(warm: Warm) -> None:
    record = warm.fresh[0].export.cache
    assert record is not None and (record.status, record.key, record.stored) == ("off", None, False)
    assert warm.used_around_fresh[0] == warm.used_around_fresh[1]
    assert len(ExportCache(warm.root).entries()[0]) == 1


@pytest.mark.slow
def test_force_exports_again_and_stores_anew(warm: Warm, cli, monkeypatch, tmp_path) -> None:
    cache = warm.copy(tmp_path / "cache")
    (before,), _ = cache.entries()
    inode = before.path.stat().st_ino
    monkeypatch.setenv(CACHE_ENV, str(cache.root))
    run = cli("convert", warm.second, "-o", tmp_path / "out", "--force")
    assert run.code == 0, run.stderr
    record = read_manifest(tmp_path / "out").export.cache
    assert record is not None and (record.status, record.stored) == ("refresh", True)
    (after,), _ = cache.entries()
    assert after.key == before.key and after.path.stat().st_ino != inode, "written anew"


@pytest.mark.slow
def test_a_stored_graph_and_bindings_that_disagree_are_refused(warm: Warm) -> None:
    found = ExportCache(warm.root).load(warm.bound[0].export.cache.key).found
    assert found is not None
    template = template_from_bytes(found.graph, found.bindings)
    assert set(template.bindings) == set(found.bindings)
    with pytest.raises(ValueError, match="disagree"):
        template_from_bytes(found.graph, {k: v for k, v in found.bindings.items() if k != QUERY})


@pytest.mark.slow
@pytest.mark.xdist_group("processes")
def test_two_processes_converting_two_checkpoints_of_a_new_architecture_export_once(
    checkpoint, tmp_path_factory: pytest.TempPathFactory, isolated_export_cache: Path
) -> None:
    """As the platform runs them (`python -m onnxport.cli --config-dir ...`, which runs
    `execute_conversion` and its child), at the same time, on one cache."""
    root = root_with_store(tmp_path_factory, "export-cache-concurrency")
    dynamo = CONVERSION_YAML.replace("exporter: torchscript", "exporter: dynamo")
    new = {"n_layers": 1, **labels(3)}  # an architecture no entry holds
    projects = [
        make_project(
            root,
            f"checkpoint-{seed}",
            retrained(checkpoint(NAME), root / f"checkpoint-{seed}", seed=seed, **new),
            conversion=dynamo,
        )
        for seed in (1, 2)
    ]
    processes = [
        subprocess.Popen(
            [
                *(sys.executable, "-m", "onnxport.cli"),
                *("--config-dir", str(p.config_dir), "--parent-training-dir", str(p.parent)),
                *("--parent-spec-fp", p.spec_fp, "--parent-exec-fp", p.exec_fp),
                *("--root-dir", str(root), "--platform", "local"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for p in projects
    ]
    results = [p.communicate(timeout=CONVERSION_TIMEOUT) for p in processes]
    for process, (_, stderr) in zip(processes, results, strict=True):
        assert process.returncode == 0, stderr
    manifests = [read_manifest(p.expected_output_dir()) for p in projects]
    records = [m.export.cache for m in manifests]
    assert sorted(r.status for r in records) == ["hit", "miss"], "one export, one binding"
    assert records[0].key == records[1].key
    (entry,), _ = ExportCache(isolated_export_cache).entries()
    assert entry.key == records[0].key
    for manifest, project in zip(manifests, projects, strict=True):
        assert manifest.output("fp32").validation.passed
        assert manifest.conv_fp == project.expected_output_dir().name.removeprefix("conv_")


# ------------------------------------------------------------------------------ the key


def test_conv_fp_is_the_same_with_or_without_the_cache() -> None:
    on = ConversionConfig()
    off = on.with_overrides(execution={"export_cache": False})
    assert conversion_fingerprint("abc1", "def2", on) == conversion_fingerprint("abc1", "def2", off)


@pytest.fixture(scope="module")
def keys(checkpoint, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The key of the tiny tagger, and of checkpoints that differ from it in one way."""
    work = tmp_path_factory.mktemp("keys")
    renamed = work / "renamed"
    shutil.copytree(checkpoint(NAME), renamed)
    names = [f"SKILL-{i}" for i in range(5)]
    edit_config_json(
        renamed,
        id2label=dict(enumerate(names)),
        label2id={n: i for i, n in enumerate(names)},
        _name_or_path="/somewhere/else",
        transformers_version="4.0.0",
    )
    checkpoints = {
        "first": checkpoint(NAME),
        "other weights": retrained(checkpoint(NAME), work / "other", seed=3),
        "label names": renamed,
        "more labels": retrained(checkpoint(NAME), work / "labels", seed=3, **labels(7)),
        "more layers": retrained(checkpoint(NAME), work / "layers", seed=3, n_layers=3),
    }
    return {
        name: cache_key(key_material(load_source(path), opset=18, keep_debug_metadata=False))
        for name, path in checkpoints.items()
    }


def test_the_key_holds_the_architecture_not_the_weights_nor_the_label_names(keys) -> None:
    assert keys["other weights"] == keys["first"]
    assert keys["label names"] == keys["first"], sorted(EXCLUDED_CONFIG_KEYS)


@pytest.mark.parametrize("other", ["more labels", "more layers"])
def test_another_config_is_another_key(keys, other: str) -> None:
    assert keys[other] != keys["first"]


def test_the_key_holds_the_export_settings(source) -> None:
    tagger = source(NAME)
    default = cache_key(key_material(tagger, opset=18, keep_debug_metadata=False))
    assert cache_key(key_material(tagger, opset=19, keep_debug_metadata=False)) != default
    assert cache_key(key_material(tagger, opset=18, keep_debug_metadata=True)) != default
    # A graph traced whole carries the FX names a repeated one lacks: another entry.
    whole = key_material(tagger, opset=18, keep_debug_metadata=False, repeat_layers=False)
    assert cache_key(whole) != default


def test_what_the_cache_cannot_hold_says_why(source) -> None:
    tagger = source(NAME)
    assert uncacheable(tagger, Exporter.AUTO, 18) is None
    assert "TorchScript exporter" in uncacheable(tagger, Exporter.TORCHSCRIPT, 18)
    assert "opset 17" in uncacheable(tagger, Exporter.AUTO, 17)
    exported_program = replace(tagger, kind="torch-export")
    assert "torch-export source" in uncacheable(exported_program, Exporter.AUTO, 18)


def test_a_text_generation_source_is_cached_by_its_transformers_model(source) -> None:
    # onnxport wraps a *ForCausalLM for its KV-cache signature: the wrapped model decides.
    generative = source("gpt2-generation")
    assert uncacheable(generative, Exporter.AUTO, 18) is None
    material = key_material(generative, opset=18, keep_debug_metadata=False)
    assert material["model"]["class"].endswith("GPT2LMHeadModel")
    assert material["model"]["task"] == "text-generation"


# ---------------------------------------------------------------------------- the store


def _fill(cache: ExportCache, key: str, size: int, used: float) -> None:
    cache.store(key, b"g" * size, {"w": "model.w"}, {"architecture": f"Arch{key[:2]}"})
    os.utime(cache.root / "exports" / key / ENTRY_FILE, (used, used))


KEYS = [f"{i:02d}" + "ab" * 15 for i in range(4)]


def test_the_least_recently_used_entries_go_first_above_the_size_limit(tmp_path) -> None:
    cache = ExportCache(tmp_path / "cache", max_bytes=10**9)
    for i, key in enumerate(KEYS[:3]):
        _fill(cache, key, 1000, used=1_000_000 + i)
    cache.touch(KEYS[0])  # the oldest, used again: now the newest
    sizes = {e.key: e.size_bytes for e in cache.entries()[0]}
    cache.max_bytes = sizes[KEYS[0]] + sizes[KEYS[2]] + 1500
    cache.store(KEYS[3], b"g" * 1000, {"w": "model.w"}, {})
    assert [e.key for e in cache.entries()[0]] == [KEYS[2], KEYS[0], KEYS[3]]


def test_an_entry_in_use_is_not_evicted(tmp_path) -> None:
    cache = ExportCache(tmp_path / "cache")
    _fill(cache, KEYS[0], 1000, used=1_000_000)
    _fill(cache, KEYS[1], 1000, used=1_000_001)
    with cache.lock(KEYS[0]) as held:
        assert held
        assert [e.key for e in cache.evict(0)] == [KEYS[1]]
    assert [e.key for e in cache.entries()[0]] == [KEYS[0]]


def test_prune_leaves_an_entry_a_conversion_is_writing(tmp_path) -> None:
    """Between a replacement's removal and its rename an entry looks damaged: prune takes
    its lock first, and removes it only when nobody holds it."""
    cache = ExportCache(tmp_path / "cache")
    _fill(cache, KEYS[0], 10, used=1_000_000)
    (cache.root / "exports" / KEYS[0] / ENTRY_FILE).unlink()
    with cache.lock(KEYS[0]) as held:
        assert held
        assert cache.prune(10**9) == ([], [])
        assert (cache.root / "exports" / KEYS[0]).is_dir()
    assert cache.prune(10**9) == ([], [cache.root / "exports" / KEYS[0]])
    assert not (cache.root / "exports" / KEYS[0]).exists()


def test_a_failed_store_leaves_nothing_behind(tmp_path, monkeypatch) -> None:
    cache = ExportCache(tmp_path / "cache")

    def full(path: Path, data: bytes) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("onnxport.export.cache.store._write", full)
    with pytest.raises(OSError):
        cache.store(KEYS[0], b"graph", {"w": "model.w"}, {})
    assert list((tmp_path / "cache" / "exports").iterdir()) == []


def test_a_damaged_entry_json_is_removed_on_lookup(tmp_path) -> None:
    cache = ExportCache(tmp_path / "cache")
    _fill(cache, KEYS[0], 10, used=1_000_000)
    (cache.root / "exports" / KEYS[0] / ENTRY_FILE).write_text("{not json")
    lookup = cache.load(KEYS[0])
    assert lookup.found is None and "damaged" in lookup.damage
    assert cache.entries() == ([], [])


# ------------------------------------------------------------------ onnxport cache list|prune


@pytest.fixture
def filled(isolated_export_cache: Path) -> ExportCache:
    cache = ExportCache(isolated_export_cache)
    for i, key in enumerate(KEYS[:3]):
        _fill(cache, key, 1000, used=1_000_000 + i)
    return cache


def test_cache_list_shows_the_entries_least_recently_used_first(cli, filled) -> None:
    run = cli("cache", "list", "--json")
    assert run.code == 0, run.stderr
    listing = json.loads(run.stdout)
    assert listing["root"] == str(filled.root)
    assert [e["key"] for e in listing["entries"]] == KEYS[:3]
    assert listing["entries"][0]["architecture"] == "Arch00"
    table = cli("cache", "list")
    assert table.code == 0 and "3 entries" in table.stdout and KEYS[0] in table.stdout


def test_cache_prune_evicts_down_to_a_size_then_all(cli, filled) -> None:
    (oldest, *_), _ = filled.entries()
    run = cli("cache", "prune", "--max-size", str(2 * oldest.size_bytes + 10))
    assert run.code == 0, run.stderr
    assert "removed 1 entries" in run.stdout
    assert [e.key for e in filled.entries()[0]] == KEYS[1:3]
    assert cli("cache", "prune", "--all").code == 0
    assert filled.entries() == ([], [])


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("prune", "--max-size", "lots"), "cannot read 'lots' as a size"),
        (("prune", "--all", "--max-size", "1MB"), "--all and --max-size ask for two things"),
    ],
)
def test_cache_commands_refuse_bad_input_in_one_line(cli, args, says) -> None:
    run = cli("cache", *args)
    assert run.code == 2
    assert run.stderr.splitlines()[0] == f"error (cache): {says}"
    assert "Traceback" not in run.stderr


def test_a_cache_location_that_is_a_file_is_a_one_line_error(cli, monkeypatch, tmp_path) -> None:
    (tmp_path / "file").write_text("x")
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "file"))
    run = cli("cache", "list")
    assert run.code == 2
    assert (
        run.stderr.startswith("error (cache): the export cache ")
        and "not a directory" in run.stderr
    )
