"""A decoder LM's attention fused for ONNX Runtime's CPU kernels before its weights are
quantized: GroupQueryAttention, RotaryEmbedding and SkipSimplifiedLayerNormalization
(com.microsoft), and the MatMuls that read one activation (Q, K, V; gate, up) merged into one.

SmolLM2-135M's graph has 2,269 nodes unfused; in an 8-bit decode step MatMulNBits then
takes half the kernel time and the rest is per-node work. Fused, 462 nodes, and the
int8-weights variant decodes 1.2x faster (measured: benchmarks/README.md). onnxscript's
`ort_fusions` does most of it, but not GroupQueryAttention on these graphs: its
cos/sin-cache and causal-mask patterns predate transformers 5's, and its rewrite would take
the sequence lengths from `position_ids`, which drops a left-padded batch's mask. So the rule
of `_rule` here rewrites the scaled dot-product attention that `ort_fusions` found into one:
- Q and K rotated by RotaryEmbedding fed the graph's own `position_ids` (exact for a
  left-padded batch), with cos/sin caches made from the graph's own `inv_freq`;
- GroupQueryAttention (`do_rotary` 0) with the past, `seqlens_k` = total - 1 and
  `total_sequence_length` = the attention mask's width, and the graph's own additive 4D mask
  as `attention_bias`, so padding stays masked.

The graph keeps its inputs and outputs (names, types, the cache's layout). Fusing is all or
nothing: unless every layer became one GroupQueryAttention, the graph is left as it was. Either
way the variant made from it is judged by the same gate as any other.

This uses onnxscript's `ort_fusions` steps one by one (a private module of onnxscript 0.7,
pinned in constraints.txt); `fuse_decoder` returns None if they are not there.
"""

from __future__ import annotations

import collections
import logging
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

logger = logging.getLogger(__name__)

PAST_PREFIX = "past_key_values."


def _canonical_dims(model: onnx.ModelProto) -> int:
    """Spell each sum of symbolic dimensions one way (`sequence + past_sequence`): the exporter
    writes both orders, and onnxscript compares dimensions as strings (11 of SmolLM2's 30
    attention layers fail to match otherwise). Returns how many it respelled."""
    respelled = 0
    graph = model.graph
    for info in (*graph.value_info, *graph.input, *graph.output):
        for dim in info.type.tensor_type.shape.dim:
            if dim.dim_param and "+" in dim.dim_param:
                parts = sorted(p.strip() for p in dim.dim_param.split("+"))
                canonical = " + ".join(sorted(parts, key=lambda p: (p != "sequence", p)))
                if canonical != dim.dim_param:
                    dim.dim_param = canonical
                    respelled += 1
    return respelled


def _rope_source(cos4d: Any, sin4d: Any) -> tuple[Any, np.ndarray] | None:
    """(position_ids, inv_freq) when cos and sin are Unsqueeze(Cos/Sin(Concat(f, f)), [1])
    with f = Mul(Cast(Unsqueeze(position_ids, [2])), inv_freq): transformers' default rotary
    embedding, unscaled, over the whole head; else None."""
    found = []
    for value, trig in ((cos4d, "Cos"), (sin4d, "Sin")):
        chain = value.producer()
        if chain is None or chain.op_type != "Unsqueeze":
            return None
        chain = chain.inputs[0].producer()
        if chain is None or chain.op_type != trig:
            return None
        concat = chain.inputs[0].producer()
        if (
            concat is None
            or concat.op_type != "Concat"
            or len(concat.inputs) != 2
            or concat.inputs[0] is not concat.inputs[1]
        ):
            return None
        product = concat.inputs[0].producer()
        if product is None or product.op_type != "Mul":
            return None
        a, b = product.inputs
        if b.const_value is None:
            a, b = b, a
        cast = a.producer()
        if b.const_value is None or cast is None or cast.op_type != "Cast":
            return None
        unsqueeze = cast.inputs[0].producer()
        if unsqueeze is None or unsqueeze.op_type != "Unsqueeze":
            return None
        positions = unsqueeze.inputs[0]
        if not positions.is_graph_input() or positions.name != "position_ids":
            return None
        found.append((positions, b.const_value.numpy().reshape(-1)))
    (pos_cos, freq_cos), (pos_sin, freq_sin) = found
    if pos_cos is not pos_sin or not np.array_equal(freq_cos, freq_sin):
        return None
    return pos_cos, freq_cos


def _rule(max_positions: int, attention_mask: Any) -> Any:
    import onnx_ir as ir
    from onnxscript.rewriter import _ir_utils, pattern

    class GroupQueryAttention(pattern.RewriteRuleClassBase):
        def __init__(self) -> None:
            super().__init__("GroupQueryAttentionFromSDPA", remove_nodes=False)
            self._shared: tuple | None = None

        def pattern(self, op, query, key, value, past_key, past_value, cos, sin, mask):
            q = op.Reshape(query, pattern.ANY_VALUE, _outputs=["query_heads"])
            q = op.Transpose(q, perm=[0, 2, 1, 3])
            k = op.Reshape(key, pattern.ANY_VALUE, _outputs=["key_heads"])
            k = op.Transpose(k, perm=[0, 2, 1, 3])
            v = op.Reshape(value, pattern.ANY_VALUE)
            v = op.Transpose(v, perm=[0, 2, 1, 3])
            fusion = "ai.onnxruntime._fusion"
            q = op.RotaryEmbedding(q, cos, sin, _domain=fusion, _outputs=["q_rotated"])
            k = op.RotaryEmbedding(k, cos, sin, _domain=fusion, _outputs=["k_rotated"])
            key_seq = op.Concat(past_key, k, axis=-2)
            keys = op.Reshape(
                op.Expand(op.Unsqueeze(key_seq, [2]), pattern.ANY_VALUE), pattern.ANY_VALUE
            )
            value_seq = op.Concat(past_value, v, axis=-2)
            values = op.Reshape(
                op.Expand(op.Unsqueeze(value_seq, [2]), pattern.ANY_VALUE), pattern.ANY_VALUE
            )
            attention = op.SDPA(
                q, keys, values, mask, key_format="BHSd", _domain=fusion, _outputs=["sdpa"]
            )
            attention = op.Reshape(op.Transpose(attention, perm=[0, 2, 1, 3]), pattern.ANY_VALUE)
            return attention, key_seq, value_seq

        def check(
            self, context, query_heads, key_heads, q_rotated, k_rotated, cos, sin, sdpa, mask, **_
        ):
            result = pattern.MatchResult()
            heads = _ir_utils.get_dim(query_heads, 2)
            kv_heads = _ir_utils.get_dim(key_heads, 2)
            head_size = _ir_utils.get_dim(query_heads, 3)
            if not all(isinstance(x, int) for x in (heads, kv_heads, head_size)):
                return result.fail("the number and size of the heads are not known")
            for rotary in (q_rotated.producer(), k_rotated.producer()):
                if rotary.attributes.get_int("interleaved", 0) != 0:
                    return result.fail("interleaved rotary embedding")
            if sdpa.producer().attributes.get("scale") is not None:
                return result.fail("attention with a scale of its own")
            source = _rope_source(cos, sin)
            if source is None:
                return result.fail("cos and sin are not position_ids times inv_freq")
            if len(source[1]) * 2 != head_size:
                return result.fail("a rotary embedding over part of the head")
            if mask is None or mask.shape is None or mask.shape.rank() != 4:
                return result.fail("the mask is not 4D")
            self.heads, self.kv_heads, self.rope = heads, kv_heads, source
            return result

        def _lengths_and_caches(self, op) -> tuple:
            """Built once for every layer: seqlens_k, total_sequence_length, the caches."""
            if self._shared is None:
                shape = op.Shape(attention_mask)
                total = op.Cast(op.Gather(shape, op.Constant(value_int=1), axis=0), to=6)
                one = op.Constant(value=ir.tensor(np.array(1, np.int32)))
                seqlens = op.Expand(op.Sub(total, one), op.Shape(attention_mask, start=0, end=1))
                positions, inv_freq = self.rope
                angles = np.arange(max_positions, dtype=np.float64)[:, None] * inv_freq[None, :]
                cos = op.initializer(ir.tensor(np.cos(angles).astype(np.float32), name="rope_cos"))
                sin = op.initializer(ir.tensor(np.sin(angles).astype(np.float32), name="rope_sin"))
                self._shared = (seqlens, total, cos, sin, positions)
            return self._shared

        def rewrite(self, op, query, key, value, past_key, past_value, mask, **_):
            seqlens, total, cos, sin, positions = self._lengths_and_caches(op)
            ms = "com.microsoft"
            q = op.RotaryEmbedding(query, positions, cos, sin, num_heads=self.heads, _domain=ms)
            k = op.RotaryEmbedding(key, positions, cos, sin, num_heads=self.kv_heads, _domain=ms)
            return op.GroupQueryAttention(
                *(q, k, value, past_key, past_value, seqlens, total, None, None, None, mask),
                num_heads=self.heads,
                kv_num_heads=self.kv_heads,
                _domain=ms,
                _outputs=3,
            )

    return pattern.RewriteRuleSet([GroupQueryAttention.rule()])


def _merge_matmuls(model: onnx.ModelProto) -> int:
    """MatMuls that read one activation with 2D weights of one height (Q, K, V; gate, up)
    become one MatMul of the weights side by side and a Split back into the same outputs:
    the same products, one kernel. Returns how many groups it merged."""
    graph = model.graph
    weights = {i.name: i for i in graph.initializer}
    readers: dict[str, list[onnx.NodeProto]] = collections.defaultdict(list)
    for node in graph.node:
        weight = weights.get(node.input[1]) if node.op_type == "MatMul" else None
        if weight is not None and len(weight.dims) == 2:
            readers[node.input[0]].append(node)
    merged: set[int] = set()
    added: list[onnx.TensorProto] = []
    groups = 0
    for activation, nodes in readers.items():
        arrays = [numpy_helper.to_array(weights[n.input[1]]) for n in nodes]
        if len(nodes) < 2 or len({a.shape[0] for a in arrays}) != 1:
            continue
        name = nodes[0].input[1] + ".merged"
        added.append(numpy_helper.from_array(np.concatenate(arrays, axis=1), name))
        added.append(
            numpy_helper.from_array(
                np.array([a.shape[1] for a in arrays], np.int64), name + ".split"
            )
        )
        product = nodes[0].output[0] + ".merged"
        at = list(graph.node).index(nodes[0])
        graph.node.insert(
            at,
            helper.make_node(
                "Split",
                [product, name + ".split"],
                [n.output[0] for n in nodes],
                axis=-1,
                name=nodes[0].name + ".split",
            ),
        )
        graph.node.insert(
            at, helper.make_node("MatMul", [activation, name], [product], name=nodes[0].name)
        )
        merged.update(id(n) for n in nodes)
        groups += 1
    if groups:
        kept = [n for n in graph.node if id(n) not in merged]
        del graph.node[:]
        graph.node.extend(kept)
        used = {name for n in graph.node for name in n.input}
        live = [i for i in graph.initializer if i.name in used]
        del graph.initializer[:]
        graph.initializer.extend(live + added)
    return groups


def _interface(model: onnx.ModelProto) -> tuple:
    graph = model.graph
    return (
        [(i.name, i.type.tensor_type.elem_type) for i in graph.input],
        [(o.name, o.type.tensor_type.elem_type) for o in graph.output],
    )


def fuse_decoder(
    model: onnx.ModelProto, *, max_positions: int
) -> tuple[onnx.ModelProto, dict[str, int]] | None:
    """`model` (a decoder LM with its KV cache, weights in memory) with its attention fused,
    and what was fused; None when not every layer fuses, or when the graph would change its
    inputs or outputs: the caller keeps the graph it had. `max_positions`: the most positions
    the rotary caches hold (the model's `max_position_embeddings`)."""
    layers = sum(1 for i in model.graph.input if i.name.startswith(PAST_PREFIX)) // 2
    if not layers or max_positions < 1:
        return None
    try:
        import onnx_ir as ir
        import onnx_ir.passes.common as common
        from onnxscript.optimizer import optimize
        from onnxscript.rewriter import rewrite
        from onnxscript.rewriter.ort_fusions import _core as steps
        from onnxscript.rewriter.rules.common import _gemm_to_matmul_add
    except ImportError as e:  # a newer onnxscript moved its private steps
        logger.info("the decoder's attention is not fused: %s", e)
        return None
    before = _interface(model)
    counts = {"dims_respelled": _canonical_dims(model)}
    graph = ir.from_proto(model)
    mask = next((v for v in graph.graph.inputs if v.name == "attention_mask"), None)
    if mask is None:
        return None
    rewrite(graph, [_gemm_to_matmul_add.gemm_to_matmul_add_rule])
    graph = steps._pre_optimize(graph)
    counts["rms_normalization"] = steps.fuse_rms_normalization(graph)
    counts["skip_rms_normalization"] = steps.fuse_skip_rms_normalization(graph)
    counts["rotary_embedding"] = steps.fuse_rotary_embedding(graph)
    common.CommonSubexpressionEliminationPass()(graph)
    counts["sdpa"] = steps.fuse_sdpa(graph, apply_shape_inference=True)
    counts["group_query_attention"] = _rule(max_positions, mask).apply_to_model(graph)
    if counts["group_query_attention"] != layers:
        logger.info(
            "the decoder's attention is not fused: %d of its %d layers match",
            counts["group_query_attention"],
            layers,
        )
        return None
    optimize(graph)
    rewrite(graph, steps.ORT_PATTERN_REWRITE_RULES)
    ir.passes.Sequential(
        common.LiftConstantsToInitializersPass(lift_all_constants=False, size_limit=1),
        common.RemoveInitializersFromInputsPass(),
    )(graph)
    fused = ir.to_proto(graph)
    counts["merged_matmuls"] = _merge_matmuls(fused)
    if _interface(fused) != before:
        logger.info("the decoder's attention is not fused: its inputs or outputs would change")
        return None
    return fused, counts
