"""Generation without torch: the chat template renders as transformers renders it, greedy
tokens are transformers' `generate()`'s, and a bad request is refused in one line.

The model is the tiny chat Llama (`chat_model`); SmolLM2-135M-Instruct's template is checked
too when /work/models holds it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from onnxport.errors import PredictError
from onnxport.predict import FinishReason, OnnxPredictor
from onnxport.predict.chat import chat_template, render_chat
from onnxport.predict.generator import cut_at_stop

PROMPTS = (
    "Write a one-line summary of a data engineer's résumé.",
    'Which skills does "Jane Doe" list?',
    "Hi",
)
SMOLLM2 = Path("/work/models/smollm2-135m-instruct/hf")
NEW_TOKENS = 12


def _transformers_tokenizer(checkpoint: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(checkpoint, local_files_only=True)


def _rendered(checkpoint: Path, prompt: str) -> str:
    """The template's rendering by `chat.render_chat`, from the files alone."""
    config = json.loads((checkpoint / "tokenizer_config.json").read_text(encoding="utf-8"))
    template = chat_template(checkpoint, config)
    assert template is not None
    specials = {k: config[k] for k in ("bos_token", "eos_token", "pad_token") if k in config}
    return render_chat(template, prompt, specials)


def _expected(checkpoint: Path, prompt: str) -> str:
    return _transformers_tokenizer(checkpoint).apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )


@pytest.mark.parametrize("prompt", PROMPTS)
def test_the_chat_template_renders_as_transformers(chat_model, prompt: str) -> None:
    checkpoint, output = chat_model
    assert _rendered(output, prompt) == _expected(checkpoint, prompt)


@pytest.mark.skipif(not SMOLLM2.is_dir(), reason="SmolLM2-135M-Instruct is not installed")
@pytest.mark.parametrize("prompt", PROMPTS)
def test_smollm2s_chat_template_renders_as_transformers(prompt: str) -> None:
    assert _rendered(SMOLLM2, prompt) == _expected(SMOLLM2, prompt)


def test_the_output_directory_carries_the_chat_template(chat_model) -> None:
    checkpoint, output = chat_model
    assert (output / "chat_template.jinja").read_bytes() == (
        checkpoint / "chat_template.jinja"
    ).read_bytes()


@pytest.fixture(scope="module")
def predictor(chat_model) -> OnnxPredictor:
    return OnnxPredictor(chat_model[1])


def test_greedy_tokens_equal_transformers_generate(chat_model, predictor) -> None:
    from transformers import AutoModelForCausalLM

    checkpoint, _ = chat_model
    tokenizer = _transformers_tokenizer(checkpoint)
    model = AutoModelForCausalLM.from_pretrained(checkpoint).eval()
    results = predictor.generate(list(PROMPTS), max_new_tokens=NEW_TOKENS)
    for prompt, result in zip(PROMPTS, results):
        ids = tokenizer(_expected(checkpoint, prompt), add_special_tokens=False).input_ids
        with torch.no_grad():
            generated = model.generate(
                torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                do_sample=False,
                max_new_tokens=NEW_TOKENS,
                pad_token_id=tokenizer.eos_token_id,
            )
        expected = generated[0, len(ids) :].tolist()
        assert list(result.token_ids) == expected
        assert result.prompt == prompt
        assert result.text == tokenizer.decode(expected, skip_special_tokens=True)
        ended = expected[-1] == tokenizer.eos_token_id
        assert result.finish_reason is (FinishReason.STOP if ended else FinishReason.LENGTH)


def test_sampling_is_seeded_and_the_smallest_top_p_is_greedy(predictor) -> None:
    greedy = predictor.generate(PROMPTS[0], max_new_tokens=8)
    narrow = predictor.generate(PROMPTS[0], max_new_tokens=8, do_sample=True, top_p=1e-9)
    assert narrow[0].token_ids == greedy[0].token_ids
    first, again = (
        predictor.generate(PROMPTS[0], max_new_tokens=8, do_sample=True, temperature=2, seed=7)
        for _ in range(2)
    )
    assert first == again


def test_a_stop_string_cuts_the_text(predictor) -> None:
    (whole,) = predictor.generate(PROMPTS[1], max_new_tokens=NEW_TOKENS)
    assert len(whole.text) > 4
    stop = whole.text[3:5]
    (cut,) = predictor.generate(PROMPTS[1], max_new_tokens=NEW_TOKENS, stop=[stop, "\x00"])
    assert cut.text == whole.text[: whole.text.find(stop)]
    assert cut.finish_reason is FinishReason.STOP
    # Generation ended at the stop string: no tokens were written past it.
    assert len(cut.token_ids) < len(whole.token_ids)
    assert cut_at_stop("abc", ["x"]) == ("abc", False)


def test_raw_reads_the_prompt_without_the_template(predictor) -> None:
    generator = predictor._generator
    assert generator is not None
    raw = generator.prompt_ids("Hi", raw=True)
    templated = generator.prompt_ids("Hi")
    assert len(templated) > len(raw)
    assert predictor.generate("Hi", max_new_tokens=2, raw=True)[0].token_ids


@pytest.mark.parametrize(
    ("prompts", "settings", "message"),
    [
        ("   ", {}, "prompt 1 is empty"),
        ([], {}, "given no prompts"),
        (["Hi", 3], {}, "prompt 2 is a int, not a string"),
        ("Hi", {"max_new_tokens": 0}, "max_new_tokens must be at least 1, not 0"),
        ("Hi", {"max_new_tokens": -5}, "max_new_tokens must be at least 1, not -5"),
        ("Hi", {"max_new_tokens": 10**6}, "max_new_tokens 1000000 is more than the 128 tokens"),
        ("Hi", {"max_new_tokens": 2.5}, "max_new_tokens must be a whole number"),
        ("Hi " * 60, {"max_new_tokens": 100}, "with max_new_tokens 100 that is more than the 128"),
        ("Hi", {"do_sample": True, "temperature": 0}, "temperature must be above 0 to sample"),
        ("Hi", {"top_p": 0}, "top_p must be above 0 and at most 1, not 0"),
        ("Hi", {"top_p": 1.5}, "top_p must be above 0 and at most 1, not 1.5"),
        ("Hi", {"stop": [""]}, "stop must hold non-empty strings"),
    ],
    ids=[
        "empty",
        "no-prompts",
        "not-a-string",
        "zero",
        "negative",
        "absurd",
        "fractional",
        "too-long",
        "cold",
        "top-p-zero",
        "top-p-above-one",
        "empty-stop",
    ],
)
def test_a_bad_request_is_refused_in_one_line(predictor, prompts, settings, message) -> None:
    with pytest.raises(PredictError, match=message) as caught:
        predictor.generate(prompts, **settings)
    assert "\n" not in str(caught.value)


def test_too_long_a_prompt_is_told_the_numbers_and_the_fix(predictor) -> None:
    prompt = "Hi " * 20
    length = len(predictor._generator.prompt_ids(prompt))
    with pytest.raises(PredictError) as caught:
        predictor.generate(prompt, max_new_tokens=100)
    message = str(caught.value)
    assert f"prompt 1 is {length} tokens (after the chat template)" in message
    assert f"lower max_new_tokens to {128 - length}, or shorten the prompt" in message
    with pytest.raises(PredictError, match="shorten the prompt below 128 tokens"):
        predictor.generate("Hi " * 60, max_new_tokens=100)


def test_a_generative_model_does_not_predict_and_a_classifier_does_not_generate(
    predictor, converted
) -> None:
    with pytest.raises(PredictError, match="generate\\(prompts\\)"):
        predictor.predict(["Hi"])
    classifier = OnnxPredictor(converted("roberta-sequence").directory)
    with pytest.raises(PredictError, match="does not generate"):
        classifier.generate("Hi")


# --- onnxport predict ---------------------------------------------------------------------------


def test_cli_prints_the_generated_text(cli, chat_model, predictor) -> None:
    (expected,) = predictor.generate(PROMPTS[0], max_new_tokens=6)
    run = cli("predict", chat_model[1], PROMPTS[0], "--max-new-tokens", "6")
    assert run.code == 0, run.stderr
    assert run.stdout.rstrip("\n") == expected.text
    run = cli("predict", chat_model[1], PROMPTS[0], "--max-new-tokens", "6", "--json")
    assert run.code == 0, run.stderr
    assert json.loads(run.stdout) == [expected.to_dict()]


def test_cli_refuses_a_bad_generation_request_with_2(cli, chat_model) -> None:
    run = cli("predict", chat_model[1], "Hi", "--max-new-tokens", "0")
    assert run.code == 2
    assert "max_new_tokens must be at least 1" in run.stderr
