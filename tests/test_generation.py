"""Decoder LMs exported with their KV cache (`sources.generative`), proven step by step and by
greedy generation against transformers' `generate()` (`verify.generation`).

The planted bugs are put into the graph alone: the wrapper is changed when the export stage
starts, after PyTorch's answers were computed with the correct one, as an exporter bug would.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import onnxruntime as ort
import pytest
import torch

from onnxport.artifact.manifest import Manifest, read_manifest
from onnxport.errors import ConfigError, ValidationError
from onnxport.pipeline import convert
from onnxport.progress import Stage, StageEvent, Status
from onnxport.request import ConversionRequest
from onnxport.request.config import ConversionConfig
from onnxport.sources import load_source
from onnxport.sources.generative import CausalLMWithPast, past_names, present_names
from onnxport.tasks import Task
from onnxport.verify.decode import generate_ids

# No variants, no export cache: the planted bugs must reach the graph itself.
PLAIN = ConversionConfig().with_overrides(execution={"export_cache": False})


@pytest.fixture(scope="module")
def llama_chat(chat_model: tuple[Path, Path]) -> Path:
    return chat_model[0]


@pytest.fixture(scope="module")
def generated(chat_model: tuple[Path, Path]) -> tuple[Path, Manifest]:
    """The default conversion of the tiny chat Llama (shared with the generator's tests)."""
    return chat_model[1], read_manifest(chat_model[1])


def test_a_chat_decoder_without_a_pad_token_converts_with_its_cache(generated) -> None:
    out, manifest = generated
    assert manifest.source.task == Task.TEXT_GENERATION.value
    session = ort.InferenceSession(str(out / "model_fp32.onnx"))
    inputs = [i.name for i in session.get_inputs()]
    assert inputs == ["input_ids", "attention_mask", "position_ids", *past_names(2)]
    outputs = [o.name for o in session.get_outputs()]
    assert outputs == ["logits", *present_names(2)]
    assert session.get_inputs()[3].shape == ["batch", 2, "past_sequence", 8]
    (fp32,) = manifest.outputs
    validation = fp32.validation
    assert validation is not None and validation.passed
    # Prefill from an empty past at two lengths, the second left-padded; decode steps after
    # a past, one of them a left-padded batch of three.
    steps = [(s["input_ids"], s[past_names(2)[0]][2]) for s in validation.input_shapes]
    assert steps == [([1, 9], 0), ([2, 23], 0), ([1, 1], 12), ([3, 1], 12)]
    for name in ("logits", *present_names(2)):
        comparison = validation.outputs[name]
        assert comparison.passed and comparison.max_error_ratio == 4
        assert max(b.ratio for b in comparison.budget) <= 4
    proof = validation.generation
    assert proof is not None and proof.passed
    assert (proof.prompts, proof.identical, proof.new_tokens) == (3, 3, 32)
    assert proof.chat_template


def test_onnx_greedy_tokens_are_transformers_generate_tokens(generated, llama_chat) -> None:
    """The loop `predict` runs, from a left-padded batch, against `generate()` per prompt."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, _ = generated
    tokenizer = AutoTokenizer.from_pretrained(llama_chat)
    model = AutoModelForCausalLM.from_pretrained(llama_chat, attn_implementation="eager")
    prompts = [tokenizer(t)["input_ids"] for t in ("Senior data engineer", "Contact John at")]
    expected = []
    for ids in prompts:
        given = torch.tensor([ids])
        with torch.inference_mode():
            sequence = model.eval().generate(
                given,
                attention_mask=torch.ones_like(given),
                max_new_tokens=20,
                do_sample=False,
                pad_token_id=tokenizer.eos_token_id,
            )
        expected.append(sequence[0, len(ids) :].tolist())
    session = ort.InferenceSession(str(out / "model_fp32.onnx"))
    got = generate_ids(
        session,
        prompts,
        max_new_tokens=20,
        end_ids=[tokenizer.eos_token_id],
        pad_id=tokenizer.eos_token_id,
    )
    assert got.tokens == expected


def _stale_present(self: CausalLMWithPast, *args, **named) -> tuple[torch.Tensor, ...]:
    """Each cached position holds the one before it: the cache one step stale."""
    logits, *present = _correct_forward(self, *args, **named)
    return (logits, *(torch.cat([p[:, :, :1], p[:, :, :-1]], dim=2) for p in present))


def _positions_ignored(self: CausalLMWithPast, *args, **named) -> tuple[torch.Tensor, ...]:
    """The positions the caller gives are dropped: the model counts from the cache's length,
    right for a row without padding, wrong for a left-padded one."""
    named.pop("position_ids", None)
    taking = self.takes_positions
    self.takes_positions = False
    try:
        return _correct_forward(self, *args, **named)
    finally:
        self.takes_positions = taking


_correct_forward = CausalLMWithPast.forward


@pytest.mark.parametrize(
    ("bug", "refused_output"),
    [(_stale_present, "present.0.key"), (_positions_ignored, "logits")],
    ids=["stale-present", "positions-ignored"],
)
def test_a_planted_cache_bug_is_refused(
    bug: Callable, refused_output: str, llama_chat: Path, tmp_path: Path, monkeypatch
) -> None:
    def plant(event: StageEvent) -> None:
        if event.stage is Stage.EXPORT and event.status is Status.START:
            monkeypatch.setattr(CausalLMWithPast, "forward", bug)

    out = tmp_path / "out"
    request = ConversionRequest(source_path=llama_chat, output_dir=out, config=PLAIN)
    with pytest.raises(ValidationError) as raised:
        convert(request, progress=plant)
    message = str(raised.value)
    assert f"output '{refused_output}'" in message
    assert "PyTorch in float64" in message
    assert not out.exists()


def test_causal_lm_by_name_exports_the_logits_alone(llama_chat: Path, tmp_path: Path) -> None:
    config = PLAIN.with_overrides(source={"task": "causal-lm"}, validation={"generate_tokens": 0})
    out = tmp_path / "out"
    manifest = convert(ConversionRequest(source_path=llama_chat, output_dir=out, config=config))
    session = ort.InferenceSession(str(out / "model_fp32.onnx"))
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask"]
    assert [o.name for o in session.get_outputs()] == ["logits"]
    assert manifest.outputs[0].validation.generation is None


def test_the_torchscript_exporter_is_refused_for_a_kv_cache(llama_chat, tmp_path) -> None:
    from onnxport.export import export_to_onnx
    from onnxport.request.export_config import Exporter

    source = load_source(llama_chat)
    target = tmp_path / "never" / "model.onnx"
    with pytest.raises(ConfigError, match="cannot keep a KV cache's lengths dynamic"):
        export_to_onnx(source, target, exporter=Exporter.TORCHSCRIPT)
    assert not target.parent.exists()


def test_a_tokenizer_without_a_pad_token_pads_with_eos_on_the_left(llama_chat: Path) -> None:
    source = load_source(llama_chat)
    assert source.tokenizer.pad_token == source.tokenizer.eos_token == "<|im_end|>"
    assert source.tokenizer.padding_side == "left"
    inputs = source.make_inputs(2, 23, 0)
    assert inputs["attention_mask"][-1, 0] == 0 and inputs["attention_mask"][-1, -1] == 1


def test_mlflow_metrics_hold_the_proof_and_one_figure_for_the_cache(generated) -> None:
    from onnxport.tracking.conversion import _metrics

    _, manifest = generated
    metrics = _metrics(manifest)
    assert metrics["fp32.greedy.identical_prompts"] == metrics["fp32.greedy.prompts"] == 3
    assert 0 < metrics["fp32.present.error_ratio_max"] <= 4
    assert "fp32.logits.error_ratio.3x1" in metrics
    assert not [k for k in metrics if k.startswith("fp32.present.0")]  # not one per layer
