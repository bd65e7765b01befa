"""`passes.decoder_fusion`: a Llama decoder's attention fused into one GroupQueryAttention per
layer, exact on a left-padded batch; a decoder it cannot fuse whole is left as it was; the
weight-only variants are made from the fused graph and judged by the same gate."""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import onnx
import pytest

from models import LAYERS, MAX_POSITIONS
from onnxport.passes.decoder_fusion import fuse_decoder
from onnxport.pipeline import convert
from onnxport.request import ConversionRequest
from onnxport.request.config import ConversionConfig
from onnxport.verify.decode import cache_layout, generate_ids
from onnxport.verify.runtime import create_session, session_options

pytestmark = pytest.mark.slow


def _operators(model: onnx.ModelProto) -> collections.Counter:
    return collections.Counter(n.op_type for n in model.graph.node)


def test_a_llama_decoder_fuses_into_one_group_query_attention_per_layer(
    chat_model: tuple[Path, Path], tmp_path: Path
) -> None:
    _, output = chat_model
    plain = output / "model_fp32.onnx"
    fused = fuse_decoder(onnx.load(str(plain)), max_positions=MAX_POSITIONS)
    assert fused is not None
    model, counts = fused
    operators = _operators(model)
    assert operators["GroupQueryAttention"] == LAYERS == counts["group_query_attention"]
    assert operators["RotaryEmbedding"] == 2 * LAYERS  # Q and K, fed position_ids
    assert counts["merged_matmuls"] == 2 * LAYERS  # Q, K, V; gate, up
    assert operators["Softmax"] == 0
    path = tmp_path / "fused.onnx"
    onnx.save(model, str(path))

    options = session_options(threads=1)
    before, after = create_session(plain, options), create_session(path, options)
    assert [(i.name, i.type) for i in after.get_inputs()] == [
        (i.name, i.type) for i in before.get_inputs()
    ]
    assert [o.name for o in after.get_outputs()] == [o.name for o in before.get_outputs()]
    assert cache_layout(after) == cache_layout(before)
    # A left-padded batch of three prompts of other lengths, then decode steps with a past.
    rng = np.random.default_rng(0)
    prompts = [list(rng.integers(5, 200, n)) for n in (7, 19, 12)]
    scores: dict[str, list[np.ndarray]] = {"before": [], "after": []}
    made = {
        name: generate_ids(
            session,
            prompts,
            max_new_tokens=12,
            end_ids=(),
            pad_id=0,
            on_step=lambda step, logits, name=name: scores[name].append(logits.copy()),
        )
        for name, session in (("before", before), ("after", after))
    }
    assert made["after"].tokens == made["before"].tokens
    for a, b in zip(scores["before"], scores["after"]):
        np.testing.assert_allclose(b, a, atol=1e-4, rtol=1e-4)


def test_a_decoder_without_a_rotary_embedding_is_left_as_it_was(converted) -> None:
    """GPT-2 learns its positions: no layer matches, so the graph is not touched."""
    plain = converted("gpt2-generation").directory / "model_fp32.onnx"
    assert fuse_decoder(onnx.load(str(plain)), max_positions=MAX_POSITIONS) is None


def test_an_encoder_is_not_a_decoder_to_fuse(converted) -> None:
    plain = converted("distilbert-token").directory / "model_fp32.onnx"
    assert fuse_decoder(onnx.load(str(plain)), max_positions=MAX_POSITIONS) is None


def test_the_int8_weights_variant_is_made_from_the_fused_graph_and_passes_its_gate(
    chat_model: tuple[Path, Path], tmp_path: Path
) -> None:
    checkpoint, _ = chat_model
    config = ConversionConfig().with_overrides(onnx={"quantization": "int8-weights"})
    manifest = convert(ConversionRequest(checkpoint, tmp_path / "out", config))
    variant = next(o for o in manifest.outputs if o.variant == "int8-weights")
    assert variant.published, variant.validation
    model = onnx.load(str(tmp_path / "out" / variant.file), load_external_data=False)
    operators = _operators(model)
    assert operators["GroupQueryAttention"] == LAYERS
    # Per layer: Q/K/V merged, the output, gate/up merged, down; and the vocabulary head.
    assert operators["MatMulNBits"] == 4 * LAYERS + 1
    (quantize,) = [p for p in variant.passes if p.name == "quantize-int8-weights"]
    assert quantize.details["decoder_fusion"]["group_query_attention"] == LAYERS
    assert variant.validation.next_token is not None
