"""What PyTorch answers: the references every ONNX model of a conversion is proven against,
computed once while the PyTorch model is loaded (then it is freed, or its process ends).

- `compute_references`: PyTorch's outputs for each validation shape, on tokenized sample text
  where the model has a tokenizer; `pytorch_answers` adds its float64 outputs where the error
  budget asks for them (`add_exact_answers`);
- `prepare_evaluation`: PyTorch's score on the labelled evaluation set (`validation.eval_file`).
This is the only module of `verify/` that imports torch.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch.overrides import TorchFunctionMode

from onnxport.errors import SourceError, one_line
from onnxport.export.strategies import adapter_for
from onnxport.request.config import ConversionConfig
from onnxport.request.validation_config import Yardstick
from onnxport.sources.base import Source
from onnxport.tasks import Task
from onnxport.verify.evaluation import Evaluation, load_eval_set
from onnxport.verify.generation import PROOF_PROMPTS, GenerationProof, GreedyReference
from onnxport.verify.shapes import describe_shapes
from onnxport.verify.validate import Reference

logger = logging.getLogger(__name__)


def compute_references(
    source: Source, shapes: list[tuple[int, int]], *, seed: int = 0
) -> list[Reference]:
    """Run PyTorch once per shape; the inputs are tokenized sample text where possible.

    Raises `SourceError` when PyTorch itself fails on a shape or answers NaN: there is then
    nothing to prove the ONNX model against.
    """
    adapter = adapter_for(source)
    references = []
    with torch.inference_mode():
        for i, (batch, size) in enumerate(shapes):
            inputs = source.make_inputs(batch, size, seed + i)
            shape = describe_shapes({k: list(v.shape) for k, v in inputs.items()})
            try:
                outputs = adapter(*(inputs[name] for name in source.input_names))
            except Exception as e:  # model code raises anything on inputs it cannot take
                message = one_line(e)
                raise SourceError(
                    f"the PyTorch model fails on the validation input {shape}: "
                    f"{type(e).__name__}: {message}",
                    hint="check validation.shapes against what the model takes "
                    "(max_position_embeddings, image size)",
                ) from e
            arrays = {k: v.numpy() for k, v in inputs.items()}
            reference = Reference(
                shape=(batch, size),
                inputs=arrays,
                outputs={
                    name: value.detach().float().numpy()
                    for name, value in zip(source.output_names, outputs)
                },
                padding=source.padding(arrays) if source.padding is not None else None,
            )
            for name, value in reference.outputs.items():
                if np.isnan(value).any():
                    raise SourceError(
                        f"the PyTorch model itself outputs NaN ('{name}' on input "
                        f"{shape}): there is no answer to validate the ONNX model against",
                        hint="check the weights (NaN after a diverged training run?)",
                    )
            references.append(reference)
    _warn_if_constant(references)
    return references


def pytorch_answers(
    source: Source, shapes: list[tuple[int, int]], config: ConversionConfig
) -> tuple[list[Reference], str | None]:
    """PyTorch's answers at `shapes`: in float32, and for the error budget in float64 too;
    with why the float64 answers are missing when the budget asked for them."""
    references = compute_references(source, shapes, seed=config.validation.seed)
    if config.validation.yardstick is not Yardstick.BUDGET:
        return references, None
    references, skipped = add_exact_answers(
        source, references, max_weights_gb=config.validation.float64_max_weights_gb
    )
    if skipped is not None:
        logger.warning("the tolerance judges the fp32 model: %s", skipped)
    return references, skipped


def add_exact_answers(
    source: Source, references: list[Reference], *, max_weights_gb: float
) -> tuple[list[Reference], str | None]:
    """The references with PyTorch's float64 outputs on the same inputs (`Reference.exact`,
    the exact answer the error budget measures against), or unchanged and why not.

    The module is cast to float64 in place and back (float32 -> float64 -> float32 is
    exact): the weights take twice their memory meanwhile, no copy beside them.
    """
    module = source.module
    tensors = [*module.parameters(), *module.buffers()]
    floating = [t for t in tensors if t.is_floating_point()]
    if any(t.dtype != torch.float32 for t in floating):
        kinds = sorted({str(t.dtype).removeprefix("torch.") for t in floating})
        return references, f"the weights are not all float32 ({', '.join(kinds)})"
    weights_gb = sum(t.numel() * t.element_size() for t in floating) / 1e9
    if weights_gb > max_weights_gb:
        return references, (
            f"its {weights_gb:.1f} GB of weights are above validation.float64_max_weights_gb "
            f"{max_weights_gb:g} (float64 takes twice as much)"
        )
    adapter = adapter_for(source)
    exact = []
    try:
        module.double()
        with torch.inference_mode(), _StaysFloat64():
            for ref in references:
                named = {name: _float64(ref.inputs[name]) for name in source.input_names}
                if source.run_unpadded is not None:
                    outputs = source.run_unpadded(adapter, named)
                else:
                    outputs = adapter(*named.values())
                answers = {}
                for name, value in zip(source.output_names, outputs):
                    if value.dtype != torch.float64:
                        return references, (
                            f"the model computes '{name}' in {value.dtype} even when cast to "
                            "float64"
                        )
                    answers[name] = value.detach().numpy()
                exact.append(dataclasses.replace(ref, exact=answers))
    except Exception as e:  # an op without a float64 kernel, model code that insists on fp32
        return references, f"PyTorch cannot run it in float64: {type(e).__name__}: {one_line(e)}"
    finally:
        module.float()
    return exact, None


class _StaysFloat64(TorchFunctionMode):
    """Keeps float64 where model code casts to float32: Llama's RMSNorm computes in
    `.to(torch.float32)`, its attention takes `softmax(..., dtype=torch.float32)`. Without
    this, the float64 answer is rounded to float32 at every norm and softmax, at nearly the
    points PyTorch's float32 run rounds, so that PyTorch's own error against it looks smaller
    than it is, and another runtime's, which rounds elsewhere, larger (a 30-layer Llama: ONNX
    Runtime at 3.6x PyTorch's). A softmax over a fully masked row (a left-padded token)
    also stays finite: float64's most negative mask value cast to float32 is -inf."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = {k: torch.float64 if v is torch.float32 else v for k, v in (kwargs or {}).items()}
        args = tuple(torch.float64 if a is torch.float32 else a for a in args)
        if func is torch.Tensor.float:
            func = torch.Tensor.double
        return func(*args, **kwargs)


def _float64(value: np.ndarray) -> torch.Tensor:
    tensor = torch.from_numpy(value)
    return tensor.double() if tensor.is_floating_point() else tensor


def _warn_if_constant(references: list[Reference]) -> None:
    """A reference output that (nearly) does not vary proves little: an ONNX model that
    returns the same constant passes. Said, not refused: a model may rightly answer so."""
    for name in references[0].outputs if references else ():
        values = np.concatenate([r.outputs[name].ravel() for r in references])
        if values.size < 2:
            continue
        spread = float(values.max() - values.min())
        scale = max(float(np.abs(values).max()), 1.0)
        if spread <= 1e-6 * scale:
            logger.warning(
                "PyTorch's '%s' is the same value (%.6g) everywhere on every validation input: "
                "validating against it proves little (untrained or zeroed weights?)",
                name,
                float(values[0]),
            )


def pytorch_evaluation(source: Source, config: ConversionConfig) -> Evaluation | None:
    """PyTorch's score on the labelled set `validation.eval_file` names; None without one."""
    validation = config.validation
    if not validation.eval_file:
        return None
    return prepare_evaluation(source, validation.eval_file, validation.max_metric_drop)


def prepare_evaluation(source: Source, eval_file: str, max_drop: float) -> Evaluation:
    """Read `eval_file` for `source` (a loaded `Source`) and score PyTorch on it."""
    tokenizer = source.tokenizer
    label2id = dict(source.facts.label2id)
    eval_set = load_eval_set(Path(eval_file), source.task, tokenizer, label2id, source.input_names)
    adapter = adapter_for(source)

    def run(batch: dict[str, np.ndarray]) -> np.ndarray:
        with torch.inference_mode():
            outputs = adapter(*(torch.from_numpy(batch[n]) for n in source.input_names))
        return outputs[0].float().numpy()

    return Evaluation(eval_set, eval_set.score(run), max_drop)


def pytorch_generation(source: Source, config: ConversionConfig) -> GenerationProof | None:
    """PyTorch's greedy generations for the generation proof (`verify.generation`): None
    unless the source is a text-generation model and `validation.generate_tokens` asks."""
    new_tokens = config.validation.generate_tokens
    if source.task is not Task.TEXT_GENERATION or not new_tokens:
        return None
    from transformers import GenerationConfig

    model = source.module.model  # the *ForCausalLM inside the flat-signature wrapper
    tokenizer = source.tokenizer
    end_ids = _end_ids(model)
    pad_id = getattr(tokenizer, "pad_token_id", None)
    pad_id = int(pad_id) if pad_id is not None else (end_ids[0] if end_ids else 0)
    chat = bool(getattr(tokenizer, "chat_template", None))
    settings = GenerationConfig(
        max_new_tokens=new_tokens,
        do_sample=False,
        eos_token_id=list(end_ids) or None,
        pad_token_id=pad_id,
        return_dict_in_generate=True,
        output_logits=True,
    )
    references = []
    with torch.inference_mode():
        for index, prompt in enumerate(PROOF_PROMPTS):
            ids = _prompt_ids(tokenizer, prompt, chat, index, source)
            given = torch.tensor([ids], dtype=torch.int64)
            out = model.generate(
                input_ids=given,
                attention_mask=torch.ones_like(given),
                generation_config=settings,
            )
            tokens = out.sequences[0, len(ids) :].tolist()
            margins = []
            for step_logits in out.logits[: len(tokens)]:
                top = torch.topk(step_logits[0].double(), 2).values
                margins.append(float(top[0] - top[1]))
            references.append(GreedyReference(tuple(ids), tuple(tokens), tuple(margins)))
    return GenerationProof(tuple(references), new_tokens, end_ids, pad_id, chat)


def _end_ids(model: torch.nn.Module) -> tuple[int, ...]:
    """The tokens that end a generation: generation_config.json's, else config.json's."""
    for holder in (getattr(model, "generation_config", None), model.config):
        found = getattr(holder, "eos_token_id", None)
        if found is not None:
            return tuple(int(i) for i in (found if isinstance(found, list) else [found]))
    return ()


def _prompt_ids(
    tokenizer: object | None, prompt: str, chat: bool, index: int, source: Source
) -> list[int]:
    """A proof prompt as token ids: the chat template's, the plain text's, or (without a
    tokenizer) random ids of a few lengths."""
    if tokenizer is None:
        vocab = int(getattr(source.module.model.config, "vocab_size", 16))
        generator = torch.Generator().manual_seed(index)
        low = min(5, vocab - 1)
        return torch.randint(low, vocab, (7 + 5 * index,), generator=generator).tolist()
    if chat:
        made = tokenizer.apply_chat_template(  # type: ignore[attr-defined]
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True
        )
        return list(made["input_ids"] if isinstance(made, Mapping) else made)
    return list(tokenizer(prompt)["input_ids"])  # type: ignore[operator]
