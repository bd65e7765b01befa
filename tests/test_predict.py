"""OnnxPredictor and `onnxport predict`: the converted model answers as transformers does.

Every answer is compared with the transformers pipeline (or PyTorch itself) run on the same
PyTorch checkpoint: the tiny random models exercise the grouping on arbitrary labels, the
trained demo tagger on real résumé entities.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from models import MAX_POSITIONS, _bert_config, wordpiece_tokenizer, write_sentence_modules
from onnxport.artifact.manifest import MANIFEST_FILENAME, read_manifest
from onnxport.artifact.reader import PublishedDirectory
from onnxport.artifact.records.outputs import OutputRecord
from onnxport.errors import OutputError
from onnxport.pipeline import convert
from onnxport.predict import (
    EntityPrediction,
    LabelPrediction,
    OnnxPredictor,
    PredictError,
    TextTooLongError,
    VectorPrediction,
    length_buckets,
    model_max_length,
)
from onnxport.request import ConversionRequest
from onnxport.request.config import ConversionConfig

SENTENCES = (
    "Jane Doe , senior data engineer at Contoso Ltd .",
    "Contact Priya Natarajan at priya.natarajan@example.com or +44 (207) 555-0199 .",
    "Email : wei.chen@example.org | Phone : +1 (415) 555-0134",
    "Carlos Ramirez | carlos.ramirez@mail.example.net | +34 (911) 555-0042",
    "Worked with Fabrikam Inc from March 2019 to 2023 using PyTorch and SQL .",
    "Zoë Müller-Smith, zoe.muller@example.com, tel. +49 30 555 0199; skills: Python,Docker.",
)
RESUME_LINE = SENTENCES[1]
LONG_TEXT = " ".join(["Jane Doe, jane.doe@example.com, +1 (555) 010-2030."] * 40)
FAST = ConversionConfig().with_overrides(onnx={"exporter": "torchscript"})


@pytest.fixture(scope="session")
def encoder_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny BertModel saved with a tokenizer (the registry's encoder has none), converted."""
    from transformers import BertModel

    root = tmp_path_factory.mktemp("encoder-predict")
    wordpiece_tokenizer(root / "checkpoint")
    torch.manual_seed(0)
    BertModel(_bert_config()).eval().save_pretrained(root / "checkpoint")
    convert(ConversionRequest(root / "checkpoint", root / "onnx", config=FAST))
    return root / "checkpoint", root / "onnx"


SENTENCE_MODELS = {
    # name: the Pooling module's mode, a Normalize module or not, sentence_bert_config's
    # max_seq_length (12: below the model's 128, so that it cuts the longer sentences)
    "mean-normalized": ("mean", True, 12),
    "cls": ("cls", False, None),
    "max-normalized": ("max", True, None),
}


@pytest.fixture(scope="session")
def sentence_model(
    encoder_model, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str], tuple[Path, Path]]:
    """`sentence_model(name)`: (checkpoint, onnxport output) of the tiny encoder saved as a
    sentence-transformers checkpoint with the modules of `SENTENCE_MODELS[name]`."""
    built: dict[str, tuple[Path, Path]] = {}

    def get(name: str) -> tuple[Path, Path]:
        if name not in built:
            pooling, normalize, max_seq_length = SENTENCE_MODELS[name]
            root = tmp_path_factory.mktemp(f"sentence-{name}")
            shutil.copytree(encoder_model[0], root / "checkpoint")
            write_sentence_modules(
                root / "checkpoint",
                pooling=pooling,
                normalize=normalize,
                max_seq_length=max_seq_length,
            )
            convert(ConversionRequest(root / "checkpoint", root / "onnx", config=FAST))
            built[name] = root / "checkpoint", root / "onnx"
        return built[name]

    return get


@pytest.fixture(scope="session")
def token_model(
    checkpoint, converted, request: pytest.FixtureRequest
) -> Callable[[str], tuple[Path, Path]]:
    """`token_model(name)`: (PyTorch checkpoint, onnxport output) of a token classifier;
    "demo" is the trained tagger, trained only when asked for."""

    def get(name: str) -> tuple[Path, Path]:
        if name == "demo":
            return request.getfixturevalue("demo_model")
        return checkpoint(name), converted(name).directory

    return get


def _pipeline(task: str, checkpoint: Path, **options):
    from transformers import AutoTokenizer, pipeline

    tokenizer = AutoTokenizer.from_pretrained(checkpoint, local_files_only=True)
    return pipeline(task, model=str(checkpoint), tokenizer=tokenizer, device="cpu", **options)


def _entities(prediction) -> list[tuple[str, int, int]]:
    assert isinstance(prediction, EntityPrediction)
    return [(e.entity_group, e.start, e.end) for e in prediction.entities]


# --- token classification against transformers' pipeline ------------------------------------


@pytest.mark.parametrize("strategy", ["simple", "first", "average", "max"])
@pytest.mark.parametrize(
    "name",
    ["distilbert-token", "bert-token", pytest.param("demo", marks=pytest.mark.slow)],
)
def test_entities_equal_the_transformers_pipeline(token_model, name: str, strategy: str) -> None:
    """The tiny models' labels are random, so the résumé words the small vocabulary splits
    into pieces get pieces of different labels: each strategy's word rule is exercised."""
    checkpoint, output = token_model(name)
    reference = _pipeline("token-classification", checkpoint, aggregation_strategy=strategy)
    predictions = OnnxPredictor(output, aggregation_strategy=strategy).predict(SENTENCES)
    for text, prediction in zip(SENTENCES, predictions):
        expected = reference(text)
        assert _entities(prediction) == [
            (e["entity_group"], e["start"], e["end"]) for e in expected
        ], text
        for ours, theirs in zip(prediction.entities, expected):
            assert ours.word == text[theirs["start"] : theirs["end"]]
            assert ours.score == pytest.approx(float(theirs["score"]), abs=1e-3)
        assert prediction.truncated is False
    assert sum(len(p.entities) for p in predictions) > len(SENTENCES)  # not vacuous


def _inside_a_word(text: str, index: int) -> bool:
    return 0 < index < len(text) and text[index - 1].isalnum() and text[index].isalnum()


def _fragments(prediction) -> list[str]:
    """The entities that begin or end inside a word: pieces of it."""
    return [
        e.word
        for e in prediction.entities
        if _inside_a_word(prediction.text, e.start) or _inside_a_word(prediction.text, e.end)
    ]


def test_words_labelled_piece_by_piece_come_back_whole_by_default(converted) -> None:
    """The default ("first") labels a word by its first piece, as the demo trains: words
    whose pieces the model labels differently are not cut into fragments."""
    output = converted("distilbert-token").directory
    pieces = OnnxPredictor(output, aggregation_strategy="simple").predict(SENTENCES)
    assert any(_fragments(p) for p in pieces)  # the model does label pieces differently
    whole = OnnxPredictor(output).predict(SENTENCES)
    assert [_fragments(p) for p in whole] == [[]] * len(SENTENCES)
    assert sum(len(p.entities) for p in whole) > len(SENTENCES)


@pytest.mark.slow
def test_demo_model_finds_the_entities_of_a_resume_line(demo_model) -> None:
    (prediction,) = OnnxPredictor(demo_model[1]).predict(RESUME_LINE)
    assert [(e.entity_group, e.word) for e in prediction.entities] == [
        ("NAME", "Priya Natarajan"),
        ("EMAIL", "priya.natarajan@example.com"),
        ("PHONE", "+44 (207) 555-0199"),
    ]
    assert all(e.score > 0.8 for e in prediction.entities)


@pytest.mark.slow
def test_published_tokenizer_loads_in_transformers_as_the_checkpoints_does(demo_model) -> None:
    """transformers 5 saved the tagger's tokenizer as "TokenizersBackend", which transformers
    4 refuses; the published one names a class both read, and tokenizes the same."""
    from transformers import AutoTokenizer

    checkpoint, output = demo_model
    original = json.loads((checkpoint / "tokenizer_config.json").read_text(encoding="utf-8"))
    published = json.loads((output / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert original["tokenizer_class"] == "TokenizersBackend"
    assert published == {**original, "tokenizer_class": "PreTrainedTokenizerFast"}
    ours = AutoTokenizer.from_pretrained(output, local_files_only=True)
    theirs = AutoTokenizer.from_pretrained(checkpoint, local_files_only=True)
    assert ours(list(SENTENCES))["input_ids"] == theirs(list(SENTENCES))["input_ids"]


@pytest.mark.slow
def test_int8_variant_loads_and_gives_the_same_entities(demo_model) -> None:
    output = demo_model[1]
    int8 = OnnxPredictor(output, "int8").predict(SENTENCES[:5])
    fp32 = OnnxPredictor(output).predict(SENTENCES[:5])
    assert [_entities(p) for p in int8] == [_entities(p) for p in fp32]
    assert {"NAME", "EMAIL", "PHONE"} <= {e.entity_group for p in int8 for e in p.entities}


# --- the other tasks ------------------------------------------------------------------------


def test_sequence_classification_equals_the_transformers_pipeline(checkpoint, converted) -> None:
    name = "roberta-sequence"
    reference = _pipeline("text-classification", checkpoint(name))
    predictions = OnnxPredictor(converted(name).directory).predict(SENTENCES)
    for text, prediction in zip(SENTENCES, predictions):
        (expected,) = reference(text)
        assert isinstance(prediction, LabelPrediction)
        assert prediction.label == expected["label"]
        assert prediction.score == pytest.approx(expected["score"], abs=1e-3)


def _pytorch_sentence_vectors(
    checkpoint: Path, pooling: str, *, normalize: bool = False, max_length: int = MAX_POSITIONS
) -> np.ndarray:
    """SENTENCES' vectors as sentence-transformers computes them from PyTorch's token vectors:
    pooled under the attention mask, then L2-normalized when `normalize`."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(checkpoint, local_files_only=True)
    model = AutoModel.from_pretrained(checkpoint).eval()
    encoded = tokenizer(
        list(SENTENCES), padding=True, truncation=True, max_length=max_length, return_tensors="pt"
    )
    with torch.inference_mode():
        hidden = model(**encoded).last_hidden_state
    mask = encoded["attention_mask"].unsqueeze(-1).float()
    if pooling == "mean":
        vectors = (hidden * mask).sum(1) / mask.sum(1)
    elif pooling == "max":
        vectors = hidden.masked_fill(mask == 0, -1e9).max(1).values
    else:
        vectors = hidden[:, 0]
    if normalize:
        vectors = torch.nn.functional.normalize(vectors, p=2, dim=1)
    return vectors.numpy()


def _assert_vectors(predictions, expected: np.ndarray) -> None:
    for prediction, vector in zip(predictions, expected, strict=True):
        assert isinstance(prediction, VectorPrediction)
        got = prediction.vector
        assert got.shape == vector.shape == (32,)
        assert got @ vector / (np.linalg.norm(got) * np.linalg.norm(vector)) > 0.9999
        np.testing.assert_allclose(got, vector, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("pooling", [None, "mean", "cls"])
def test_feature_extraction_vectors_equal_pytorch(encoder_model, pooling: str | None) -> None:
    """Without modules.json (a plain transformers checkpoint) the default is the mean under
    the attention mask, not normalized."""
    checkpoint, output = encoder_model
    expected = _pytorch_sentence_vectors(checkpoint, pooling or "mean")
    options = {"pooling": pooling} if pooling else {}
    _assert_vectors(OnnxPredictor(output, **options).predict(SENTENCES), expected)
    assert abs(np.linalg.norm(expected[0]) - 1) > 0.1, "the plain vectors are not unit ones"


@pytest.mark.parametrize("name", list(SENTENCE_MODELS))
def test_sentence_transformers_vectors_equal_what_its_modules_compute(
    sentence_model, name: str
) -> None:
    """A sentence-transformers checkpoint's vectors are pooled as its Pooling module says,
    normalized when a Normalize module follows, from texts cut at its max_seq_length."""
    pooling, normalize, max_seq_length = SENTENCE_MODELS[name]
    checkpoint, output = sentence_model(name)
    expected = _pytorch_sentence_vectors(
        checkpoint, pooling, normalize=normalize, max_length=max_seq_length or MAX_POSITIONS
    )
    predictor = OnnxPredictor(output)
    predictions = predictor.predict(SENTENCES)
    _assert_vectors(predictions, expected)
    assert (predictor.pooling.value, predictor.normalize) == (pooling, normalize)
    norms = [float(np.linalg.norm(p.vector)) for p in predictions]
    if normalize:
        assert norms == pytest.approx([1.0] * len(SENTENCES), abs=1e-5)
    else:
        assert min(abs(n - 1) for n in norms) > 0.1
    if max_seq_length is not None:
        assert predictor.max_length == max_seq_length
        assert any(p.truncated for p in predictions), "some sentences are longer than 12"


def test_a_sentence_transformers_directory_records_its_modules_and_publishes_their_files(
    sentence_model,
) -> None:
    checkpoint, output = sentence_model("mean-normalized")
    published = PublishedDirectory.open(output)  # every file, module ones included, intact
    recorded = published.manifest.source.sentence_embedding
    assert recorded is not None
    assert (recorded.pooling.value, recorded.normalize, recorded.max_seq_length) == (
        "mean",
        True,
        12,
    )
    for name in ("modules.json", "sentence_bert_config.json", "1_Pooling/config.json"):
        assert (output / name).read_bytes() == (checkpoint / name).read_bytes()
        assert name in published.manifest.files


# --- batching and long text -----------------------------------------------------------------


def test_batches_give_what_one_text_at_a_time_gives(converted) -> None:
    texts = [*SENTENCES, "Jane", RESUME_LINE + " " + RESUME_LINE]
    output = converted("distilbert-token").directory
    batched = OnnxPredictor(output, batch_size=3).predict(texts)
    single = OnnxPredictor(output, batch_size=1)
    for text, prediction in zip(texts, batched):
        (alone,) = single.predict(text)
        assert prediction.text == text
        assert _entities(prediction) == _entities(alone)
        for a, b in zip(prediction.entities, alone.entities):
            assert a.score == pytest.approx(b.score, abs=1e-5)


def test_length_buckets_run_texts_of_similar_length_together() -> None:
    assert length_buckets([9, 3, 40, 3, 12], 2) == [[1, 3], [0, 4], [2]]
    assert length_buckets([5, 5, 5], 8) == [[0, 1, 2]]
    assert length_buckets([], 4) == []


def test_one_predictor_answers_many_threads_at_once(converted) -> None:
    """A server calls one predictor from its request threads: each gets its own answers."""
    from concurrent.futures import ThreadPoolExecutor

    predictor = OnnxPredictor(converted("distilbert-token").directory, batch_size=3, threads=1)
    requests = [[*SENTENCES[i % 6 :], LONG_TEXT[: 40 * (i + 1)]][: 1 + i % 7] for i in range(48)]
    alone = [[p.to_dict() for p in predictor.predict(texts)] for texts in requests]
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda t: [p.to_dict() for p in predictor.predict(t)], requests))
    assert together == alone
    assert len({json.dumps(a) for a in alone}) > 10  # the requests differ


def test_max_length_comes_from_the_model_and_the_tokenizer(checkpoint, converted) -> None:
    # distilbert: 128 positions, tokenizer 512; roberta: 130 positions numbered from pad + 1.
    assert OnnxPredictor(converted("distilbert-token").directory).max_length == 128
    assert OnnxPredictor(converted("roberta-sequence").directory).max_length == 129
    assert model_max_length({"max_position_embeddings": 514}, {"model_max_length": 512}) == 512
    assert model_max_length({"n_positions": 1024}, {"model_max_length": int(1e30)}) == 1024
    assert model_max_length({}, {}) is None


@pytest.mark.parametrize("name", ["distilbert-token", "roberta-sequence"])
def test_long_text_is_truncated_and_says_so(
    converted, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    predictor = OnnxPredictor(converted(name).directory)
    with caplog.at_level(logging.WARNING, logger="onnxport.predict"):
        long, short = predictor.predict([LONG_TEXT, "Jane Doe"])
    assert (long.truncated, short.truncated) == (True, False)
    # (`converted` may build the model here: only the predictor's own records count)
    (warning,) = [r.getMessage() for r in caplog.records if r.name.startswith("onnxport.predict")]
    assert f"text 1 has more than {predictor.max_length} tokens: truncated" in warning
    assert "only characters 0-" in warning and f"of {len(LONG_TEXT)} were read" in warning
    if isinstance(long, EntityPrediction):
        assert max(e.end for e in long.entities) < len(LONG_TEXT) // 2


def test_a_smaller_max_length_truncates_earlier(converted) -> None:
    output = converted("distilbert-token").directory
    (prediction,) = OnnxPredictor(output, max_length=6).predict(RESUME_LINE)
    assert prediction.truncated
    assert max(e.end for e in prediction.entities) <= len("Contact Priya Natarajan at")
    with pytest.raises(PredictError, match="more than the 128 tokens"):
        OnnxPredictor(output, max_length=129)


def test_long_text_can_be_refused(converted) -> None:
    predictor = OnnxPredictor(converted("distilbert-token").directory, on_long_text="error")
    assert predictor.predict("Jane Doe")[0].truncated is False
    with pytest.raises(TextTooLongError, match=r"text 2 \(\d+ characters\) has more than the 128"):
        predictor.predict(["Jane Doe", LONG_TEXT])
    assert TextTooLongError("x").exit_code == 2


# onnxport.cli too: `onnxport predict` must start without torch, whatever else the CLI holds.
@pytest.mark.parametrize("module", ["onnxport.predict", "onnxport.cli"])
def test_importing_imports_no_torch(module: str) -> None:
    code = (
        f"import sys, {module}; "
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, "
        "sorted(m for m in sys.modules if m.startswith(('torch', 'transformers')))[:5]"
    )
    process = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert process.returncode == 0, process.stderr


# --- bad input ------------------------------------------------------------------------------


def _unpublish_int8(directory: Path) -> None:
    manifest = read_manifest(directory)
    unpublished = OutputRecord(file="model_int8.onnx", variant="int8", published=False)
    manifest = manifest.model_copy(update={"outputs": [*manifest.outputs, unpublished]})
    (directory / MANIFEST_FILENAME).write_text(manifest.to_json(), encoding="utf-8")


def _set_task(directory: Path, task: str) -> None:
    data = json.loads((directory / MANIFEST_FILENAME).read_text(encoding="utf-8"))
    data["source"]["task"] = task
    (directory / MANIFEST_FILENAME).write_text(json.dumps(data), encoding="utf-8")


@pytest.mark.parametrize(
    ("damage", "variant", "message"),
    [
        (lambda d: None, "fp16", "has no 'fp16' variant"),
        (_unpublish_int8, "int8", "the 'int8' variant of .* was not published"),
        (
            lambda d: (d / "tokenizer.json").unlink(),
            "fp32",
            "is damaged: tokenizer.json is missing",
        ),
        (lambda d: (d / MANIFEST_FILENAME).unlink(), "fp32", "holds no manifest.json"),
        (lambda d: _set_task(d, "masked-lm"), "fp32", "holds a masked-lm model"),
    ],
)
def test_unusable_directories_are_clear_errors(copy_output, damage, variant, message) -> None:
    directory = copy_output("distilbert-token")
    damage(directory)
    with pytest.raises((PredictError, OutputError), match=message) as raised:
        OnnxPredictor(directory, variant)
    assert raised.value.exit_code == 2


# --- images ----------------------------------------------------------------------------------


def test_image_labels_equal_pytorch_at_any_size_the_model_takes(converted, source) -> None:
    """A convolutional model labels images of its own size and of others, as PyTorch does."""
    predictor = OnnxPredictor(converted("resnet-image").directory)
    model = source("resnet-image").module
    for height, width in ((32, 32), (48, 80)):
        pixels = torch.randn(3, 3, height, width, generator=torch.Generator().manual_seed(height))
        with torch.no_grad():
            expected = torch.softmax(model(pixel_values=pixels).logits, dim=-1)
        labels = predictor.predict_images(pixels.numpy())
        assert [p.index for p in labels] == [1, 2, 3]
        assert [p.label for p in labels] == [f"LABEL_{int(i)}" for i in expected.argmax(-1)]
        assert [p.score for p in labels] == pytest.approx(
            expected.max(-1).values.tolist(), abs=1e-5
        )


def test_an_image_of_another_size_than_a_fixed_resolution_is_refused(converted) -> None:
    predictor = OnnxPredictor(converted("vit-image").directory)
    assert len(predictor.predict_images(np.zeros((2, 3, 32, 32), dtype=np.float32))) == 2
    with pytest.raises(PredictError, match=r"takes 32x32 images only .*, not 64x64") as refused:
        predictor.predict_images(np.zeros((3, 64, 64), dtype=np.float32))
    assert refused.value.hint == "resize the images to 32x32 (height x width) first"
    assert refused.value.exit_code == 2
    with pytest.raises(PredictError, match="takes 3-channel images, not 1"):
        predictor.predict_images(np.zeros((1, 1, 32, 32), dtype=np.float32))
    with pytest.raises(PredictError, match="image classification model, which reads no text"):
        predictor.predict(["Jane Doe"])


def test_a_text_model_takes_no_images(converted) -> None:
    predictor = OnnxPredictor(converted("distilbert-token").directory)
    with pytest.raises(PredictError, match="token-classification model, which reads text"):
        predictor.predict_images(np.zeros((1, 3, 32, 32), dtype=np.float32))


def test_predict_takes_strings(converted) -> None:
    predictor = OnnxPredictor(converted("distilbert-token").directory)
    with pytest.raises(PredictError, match="takes strings, not int"):
        predictor.predict(["Jane", 3])  # type: ignore[list-item]
    assert predictor.predict([]) == []


def test_an_unknown_setting_names_the_choices(converted) -> None:
    output = converted("distilbert-token").directory
    with pytest.raises(PredictError, match="aggregation_strategy 'none' is not one of"):
        OnnxPredictor(output, aggregation_strategy="none")
    with pytest.raises(PredictError, match="pooling 'sum' is not one of: mean, cls, max"):
        OnnxPredictor(output, pooling="sum")


# --- the command ----------------------------------------------------------------------------


def test_cli_prints_entities_per_text(cli, converted) -> None:
    run = cli("predict", converted("distilbert-token").directory, *SENTENCES[:2], "--threads", "1")
    assert run.code == 0, run.stderr
    assert f"1. {SENTENCES[0]}" in run.stdout
    assert f"2. {SENTENCES[1]}" in run.stdout
    assert "entity" in run.stdout and "score" in run.stdout
    assert "LABEL_" in run.stdout


def test_cli_json_equals_the_library(cli, converted) -> None:
    output = converted("distilbert-token").directory
    run = cli("predict", output, *SENTENCES, "--json")
    assert run.code == 0, run.stderr
    printed = json.loads(run.stdout)
    expected = [p.to_dict() for p in OnnxPredictor(output).predict(SENTENCES)]
    assert printed == expected
    assert [p["text"] for p in printed] == list(SENTENCES)
    run = cli("predict", output, *SENTENCES, "--json", "--aggregation", "average")
    assert run.code == 0, run.stderr
    predictor = OnnxPredictor(output, aggregation_strategy="average")
    assert json.loads(run.stdout) == [p.to_dict() for p in predictor.predict(SENTENCES)]
    assert json.loads(run.stdout) != expected


def test_cli_labels_vectors_and_truncation(
    cli, converted, encoder_model, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="onnxport.predict"):
        run = cli("predict", converted("roberta-sequence").directory, "Jane Doe", LONG_TEXT)
    assert run.code == 0, run.stderr
    assert "LABEL_" in run.stdout
    assert "truncated to the model's maximum length: text 2" in run.stdout
    assert "text 2 has more than 129 tokens: truncated" in caplog.text
    run = cli("predict", encoder_model[1], "Jane Doe", "--json", "--pooling", "cls")
    assert run.code == 0, run.stderr
    (printed,) = json.loads(run.stdout)
    assert len(printed["vector"]) == 32


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("{missing}", "Jane"), "is not a directory"),
        (("{out}", "Jane", "--variant", "int4"), "has no 'int4' variant"),
        (("{out}", "Jane", "--on-long-text", "ignore"), "'ignore' is not one of"),
        (("{out}", "Jane", "--aggregation", "none"), "'none' is not one of"),
        (("{out}",), "Missing argument 'TEXT"),
        (("{out}", LONG_TEXT, "--on-long-text", "error"), "has more than the 128 tokens"),
    ],
)
def test_cli_bad_input_exits_with_2(cli, converted, tmp_path: Path, args, message) -> None:
    paths = {"{out}": converted("distilbert-token").directory, "{missing}": tmp_path / "missing"}
    run = cli("predict", *(paths.get(a, a) for a in args))
    assert run.code == 2
    assert message in run.stderr + run.stdout
    assert "Traceback" not in run.stderr
    assert len((run.stderr + run.stdout).strip().splitlines()) <= 4


@pytest.mark.slow
def test_cli_in_a_subprocess_on_the_demo_output(demo_model) -> None:
    env = {**os.environ, "COLUMNS": "60"}
    command = [sys.executable, "-m", "onnxport.cli", "predict", str(demo_model[1]), RESUME_LINE]
    process = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert process.returncode == 0, process.stderr
    for word in ("NAME", "Priya Natarajan", "EMAIL", "priya.natarajan@example.com", "PHONE"):
        assert word in process.stdout
    process = subprocess.run(
        [*command, "--variant", "int8", "--json"], capture_output=True, text=True, timeout=120
    )
    assert process.returncode == 0, process.stderr
    (printed,) = json.loads(process.stdout)
    assert [e["entity_group"] for e in printed["entities"]] == ["NAME", "EMAIL", "PHONE"]
