"""Variants of a decoder LM: int4 weight-only, the gate on real text teacher-forced against
the fp32 model, searches that rank language models by decode speed, and `quantization: auto`,
which publishes the fastest weight-only variant that passes."""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from tests.models import build_llama_chat

from onnxport.artifact.manifest import Manifest
from onnxport.artifact.records.validation import NextTokenRecord
from onnxport.errors import ValidationError
from onnxport.passes import Int4Pass, Int8WeightsPass, PassContext, candidates, search_timing
from onnxport.passes.search_timing import Timer, fastest
from onnxport.pipeline import convert
from onnxport.request import ConversionRequest
from onnxport.request.config import ConversionConfig
from onnxport.request.quantize_config import QuantizeConfig
from onnxport.tasks import Task
from onnxport.verify.gate import Candidate, judge
from onnxport.verify.next_token import failures, next_token_gate
from onnxport.verify.rules import variant_rules
from onnxport.verify.runtime import create_session

pytestmark = pytest.mark.slow

DECODE_KEY = "decode 16 tokens, per token"


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> tuple[Manifest, Path]:
    """A tiny Llama with tied embeddings, its int4 variant, the fp32 graph searched."""
    root = tmp_path_factory.mktemp("lm")
    checkpoint = build_llama_chat(root / "checkpoint", tie_word_embeddings=True)
    config = ConversionConfig().with_overrides(onnx={"quantization": "int4", "optimize": "auto"})
    output = root / "out"
    request = ConversionRequest(source_path=checkpoint, output_dir=output, config=config)
    return convert(request), output


@pytest.fixture(scope="module")
def plain(converted, tmp_path_factory) -> Path:
    """The same checkpoint's fp32 graph as exported (not optimized: the variants are made
    from that one)."""
    _, output = converted
    checkpoint = output.parent / "checkpoint"
    target = tmp_path_factory.mktemp("lm-plain") / "out"
    request = ConversionRequest(source_path=checkpoint, output_dir=target)
    convert(request)
    return target / "model_fp32.onnx"


@pytest.fixture(scope="module")
def texts() -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(0)
    return tuple(rng.integers(3, 200, size=n) for n in (12, 30, 41))


def _ops(path: Path) -> list[onnx.NodeProto]:
    return list(onnx.load(str(path), load_external_data=False).graph.node)


def _producer(path: Path, name: str) -> onnx.NodeProto:
    return next(n for n in _ops(path) if name in n.output)


def test_int4_variant_is_published_with_matmulnbits_and_judged_on_text(converted) -> None:
    manifest, output = converted
    int4 = next(o for o in manifest.outputs if o.variant == "int4")
    assert int4.published
    kinds = [n.op_type for n in _ops(output / int4.file)]
    assert kinds.count("MatMulNBits") >= 8
    assert "MatMulInteger" not in kinds
    found = int4.validation.next_token
    assert found is not None and found.passed and found.texts == 16
    assert found.positions > 16 and 0.9 <= found.agreement <= 1.0
    assert found.min_agreement == 0.9 and found.max_increase == 0.05
    details = int4.passes[0].details
    assert details["lm_head"] == "int8" and details["lm_head_untied"] is True


def test_a_language_models_searches_rank_by_decode_time_per_token(converted) -> None:
    manifest, _ = converted
    search = manifest.outputs[0].search
    assert search is not None and search.target == "optimize"
    timed = [c for c in search.candidates if c.passed]
    assert timed and all(list(c.latency_ms) == [DECODE_KEY] for c in timed)
    chosen = next(c for c in timed if c.chosen)
    assert chosen.latency_ms[DECODE_KEY] == min(c.latency_ms[DECODE_KEY] for c in timed)


@pytest.mark.parametrize("lm_head", ["int4", "int8", "float"])
def test_the_lm_head_is_stored_as_set(plain, tmp_path, lm_head) -> None:
    made = tmp_path / "int4.onnx"
    Int4Pass().run(plain, made, PassContext(settings=QuantizeConfig(lm_head=lm_head)))
    head = _producer(made, "logits")
    if lm_head == "float":
        assert head.op_type == "MatMul"
        return
    assert head.op_type == "MatMulNBits"
    bits = next(a.i for a in head.attribute if a.name == "bits")
    assert bits == int(lm_head[-1])
    # The embedding's Gather keeps its float weight.
    gather = next(n for n in _ops(made) if n.op_type == "Gather")
    assert "lm_head" in gather.input[0] or "embed" in gather.input[0]


def test_int8_weights_store_every_matmul_in_8_bits(plain, tmp_path) -> None:
    """The 8-bit weight-only variant: every MatMul, the vocabulary projection too, becomes a
    MatMulNBits of 8 bits; activations stay in float (no QuantizeLinear)."""
    made = tmp_path / "int8w.onnx"
    Int8WeightsPass().run(plain, made, PassContext(settings=QuantizeConfig()))
    weights = {i.name for i in onnx.load(str(made)).graph.initializer}
    matmuls = [n for n in _ops(made) if n.op_type == "MatMul"]
    assert not [n.name for n in matmuls if n.input[1] in weights]  # attention's stay
    assert "DynamicQuantizeLinear" not in [n.op_type for n in _ops(made)]
    nbits = [n for n in _ops(made) if n.op_type == "MatMulNBits"]
    assert nbits and {next(a.i for a in n.attribute if a.name == "bits") for n in nbits} == {8}
    assert _producer(made, "logits").op_type == "MatMulNBits"


def test_the_gates_figures_on_the_fp32_model_itself(converted, texts) -> None:
    _, output = converted
    fp32 = output / "model_fp32.onnx"
    gate = next_token_gate(fp32, texts, min_agreement=0.9, max_increase=0.05)
    found = gate.judge(create_session(fp32))
    assert found.agreement == 1.0 and found.passed
    assert found.positions == sum(len(t) - 1 for t in texts)
    assert found.perplexity == pytest.approx(found.fp32_perplexity)
    assert 1.0 < found.perplexity < 1e4


def _scrambled(fp32: Path, target: Path) -> None:
    """The fp32 model with its vocabulary projection (the embedding's, tied) replaced by
    other random values: a planted bug."""
    model = onnx.load(str(fp32))
    tied = max(model.graph.initializer, key=lambda i: int(np.prod(i.dims)))
    weight = numpy_helper.to_array(tied)
    other = np.random.default_rng(1).normal(0, 3 * weight.std(), weight.shape)
    tied.CopyFrom(numpy_helper.from_array(other.astype(weight.dtype), tied.name))
    onnx.save(model, str(target))


def test_a_broken_variant_is_refused_naming_the_figures_and_settings(
    converted, plain, texts, tmp_path
) -> None:
    fp32 = plain
    broken = tmp_path / "model_int4.onnx"
    _scrambled(fp32, broken)
    gate = next_token_gate(fp32, texts, min_agreement=0.9, max_increase=0.05)
    config = ConversionConfig().with_overrides(onnx={"quantization": "int4"})
    with pytest.raises(ValidationError) as info:
        judge(
            Candidate("int4", broken),
            [],
            task=converted[0].source.task,
            rules=variant_rules(config, None, gate),
        )
    message = info.value.message
    assert "perplexity" in message and "above the fp32 model's" in message
    assert "more than validation.max_perplexity_increase 0.05" in message


def test_each_failing_figure_is_named_with_its_setting() -> None:
    record = NextTokenRecord(
        agreement=0.5,
        min_agreement=0.9,
        perplexity=20.0,
        fp32_perplexity=10.0,
        max_increase=0.05,
        texts=3,
        positions=80,
        passed=False,
    )
    agreement, perplexity = failures(record)
    assert agreement.startswith("next-token agreement with the fp32 model 0.5000 on 3 texts")
    assert agreement.endswith("below validation.min_next_token_agreement 0.9")
    assert "100.0% above the fp32 model's 10" in perplexity
    assert perplexity.endswith("validation.max_perplexity_increase 0.05")


def test_the_timer_ranks_by_time_per_generated_token(monkeypatch, converted) -> None:
    """With a clock the decode advances by a cost per model, the model with the lower time
    per token is the fastest although its generation takes longer (it makes more tokens)."""
    _, output = converted
    models = {"slow": output / "model_fp32.onnx", "fast": output / "model_int4.onnx"}
    clock = itertools.count()
    now = [0.0]
    costs = {"model_fp32.onnx": (10.0, 10), "model_int4.onnx": (16.0, 32)}

    def decode(session) -> int:
        seconds, tokens = costs[Path(session._model_path).name]
        now[0] += seconds
        next(clock)
        return tokens

    monkeypatch.setattr(search_timing.time, "perf_counter", lambda: now[0])
    timer = Timer([], threads=1, decode=decode, decode_label=DECODE_KEY)
    found = timer.latencies(models)
    assert found == {"slow": {DECODE_KEY: 1000.0}, "fast": {DECODE_KEY: 500.0}}
    assert fastest(found) == "fast"
    assert next(clock) == 2 * (1 + search_timing.DECODE_ROUNDS)


def _auto(root: Path, **validation) -> tuple[Manifest, Path]:
    """The tiny Llama converted with `quantization: auto`."""
    checkpoint = build_llama_chat(root / "checkpoint", tie_word_embeddings=True)
    config = ConversionConfig().with_overrides(onnx={"quantization": "auto"}, validation=validation)
    output = root / "out"
    request = ConversionRequest(source_path=checkpoint, output_dir=output, config=config)
    return convert(request), output


class _BrokenInt4(Int4Pass):
    """int4 with a planted bug: its vocabulary projection scrambled after quantizing."""

    def run(self, model: Path, output: Path, context: PassContext) -> dict:
        details = super().run(model, output, context)
        _scrambled(output, output)
        return details


class _BrokenInt8Weights(Int8WeightsPass):
    def run(self, model: Path, output: Path, context: PassContext) -> dict:
        details = super().run(model, output, context)
        _scrambled(output, output)
        return details


def _with_settings(monkeypatch, *settings: candidates.WeightOnlySetting) -> None:
    plan = dataclasses.replace(candidates.WEIGHT_ONLY_SEARCH, settings=settings)
    monkeypatch.setattr(candidates, "WEIGHT_ONLY_SEARCH", plan)


@pytest.fixture(scope="module")
def auto(tmp_path_factory) -> tuple[Manifest, Path]:
    return _auto(tmp_path_factory.mktemp("lm-auto"))


def test_auto_on_a_language_model_tries_its_weight_only_variants() -> None:
    plan = candidates.quantize_search(Task.TEXT_GENERATION)
    assert [s.variant for s in plan.settings] == ["int8-weights", "int4"]
    assert not any(s.static for s in plan.settings)  # no calibration to make
    encoder = candidates.quantize_search(Task.FEATURE_EXTRACTION)
    assert {s.variant for s in encoder.settings} == {"int8"}


def test_auto_publishes_the_fastest_passing_lm_variant_under_its_own_name(auto) -> None:
    manifest, output = auto
    assert len(manifest.outputs) == 2 and manifest.outputs[0].variant == "fp32"
    variant = manifest.outputs[1]
    assert variant.published and variant.variant in ("int8-weights", "int4")
    assert variant.file == f"model_{variant.variant}.onnx" and (output / variant.file).is_file()
    assert sorted(p.name for p in output.glob("*.onnx")) == sorted(
        ["model_fp32.onnx", variant.file]
    )
    assert variant.validation.next_token is not None and variant.validation.next_token.passed
    search = variant.search
    assert search is not None and search.target == "weight-only"
    assert [c.name for c in search.candidates] == ["int8-weights", "int4"]
    for candidate in search.candidates:
        found = candidate.next_token
        assert found is not None and found.texts == 16 and 0.0 <= found.agreement <= 1.0
        assert candidate.passed == found.passed
    assert search.candidates[1].settings["bits"] == 4
    timed = [c for c in search.candidates if c.passed]
    assert timed and all(list(c.latency_ms) == [DECODE_KEY] for c in timed)
    chosen = next(c for c in search.candidates if c.chosen)
    assert chosen.name == search.chosen == variant.variant
    assert chosen.latency_ms[DECODE_KEY] == min(c.latency_ms[DECODE_KEY] for c in timed)


def test_auto_publishes_the_other_lm_variant_when_one_fails_its_gate(monkeypatch, tmp_path) -> None:
    _with_settings(
        monkeypatch,
        candidates.WeightOnlySetting("int8-weights", Int8WeightsPass),
        candidates.WeightOnlySetting("int4", _BrokenInt4),
    )
    manifest, output = _auto(tmp_path)
    variant = manifest.outputs[1]
    assert (variant.variant, variant.file) == ("int8-weights", "model_int8-weights.onnx")
    assert variant.published and not (output / "model_int4.onnx").exists()
    # Every int4 attempt is recorded as failed (a weight-only candidate is not tried again
    # with nodes left in float: `QuantizeSearch.leave_in_float`).
    int8w, *int4 = variant.search.candidates
    assert int8w.passed and int8w.chosen and int4 and {c.name for c in int4} == {"int4"}
    for failed in int4:
        assert not failed.passed and not failed.chosen and not failed.latency_ms
        assert not failed.next_token.passed and failed.failures


def test_auto_refuses_naming_every_lm_variant_when_none_passes(monkeypatch, tmp_path) -> None:
    _with_settings(
        monkeypatch,
        candidates.WeightOnlySetting("int8-weights", _BrokenInt8Weights),
        candidates.WeightOnlySetting("int4", _BrokenInt4),
    )
    with pytest.raises(ValidationError) as info:
        _auto(tmp_path)
    message = info.value.message
    assert message.startswith("no weight-only candidate passes the accuracy gate")
    assert "int8-weights: next token" in message and "int4: next token" in message
    assert "quantize.lm_head: float" in info.value.hint
    assert not (tmp_path / "out").exists()
