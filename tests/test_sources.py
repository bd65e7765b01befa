"""Loading Hugging Face checkpoints: what a good one yields, and how a bad one is refused."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch

from models import (
    ANY_RESOLUTION_MODELS,
    IMAGE_SIZE,
    MAX_POSITIONS,
    MODELS,
    NUM_LABELS,
    VOCAB_SIZE,
    edit_config_json,
    make_pickle_checkpoint,
    write_sentence_modules,
)
from onnxport.errors import EXIT_BAD_INPUT, SourceError
from onnxport.request.sections import SourceConfig
from onnxport.sources import load_source
from onnxport.sources.generative import DECODE_PAST_TOKENS
from onnxport.sources.huggingface_inputs import (
    DEFAULT_TEXT_SHAPES,
    TEXT_EXAMPLE_SHAPE,
    other_resolutions,
)
from onnxport.tasks import Modality, Task


def _refused(path: Path, settings: SourceConfig | None = None) -> str:
    with pytest.raises(SourceError) as info:
        load_source(path, settings)
    assert info.value.exit_code == EXIT_BAD_INPUT
    return str(info.value)


# --- good checkpoints -------------------------------------------------------------------


@pytest.mark.parametrize("name", list(MODELS))
def test_checkpoint_loads_as_a_source(source, checkpoint, name: str) -> None:
    expected = MODELS[name]
    loaded = source(name)
    assert loaded.kind == "huggingface"
    assert loaded.task is expected.task
    assert loaded.architecture == expected.architecture
    assert loaded.input_names == expected.input_names
    assert loaded.output_names == expected.output_names
    assert not loaded.module.training
    assert loaded.weight_files == (checkpoint(name) / "model.safetensors",)
    copied = set(loaded.files_to_copy)
    assert "config.json" in copied
    assert ("tokenizer.json" in copied) is expected.has_tokenizer
    assert loaded.num_parameters == sum(p.numel() for p in loaded.module.parameters())


@pytest.mark.parametrize(
    "name",
    [
        n
        for n, m in MODELS.items()
        if m.task not in (Task.IMAGE_CLASSIFICATION, Task.TEXT_GENERATION)
    ],
)
def test_text_sources_have_batch_and_sequence_axes(source, name: str) -> None:
    loaded = source(name)
    assert loaded.modality is Modality.TEXT
    assert loaded.dynamic_axes == {n: {0: "batch", 1: "sequence"} for n in loaded.input_names}
    assert loaded.example_shape == TEXT_EXAMPLE_SHAPE
    assert loaded.default_shapes == tuple(
        (b, min(s, MAX_POSITIONS)) for b, s in DEFAULT_TEXT_SHAPES
    )
    for batch, length in [(1, 8), (3, 21)]:
        inputs = loaded.make_inputs(batch, length, 0)
        assert list(inputs) == list(loaded.input_names)
        for value in inputs.values():
            assert value.dtype == torch.int64
            assert tuple(value.shape) == (batch, length)
        assert int(inputs["input_ids"].max()) < VOCAB_SIZE


def test_a_vit_source_has_a_batch_axis_and_declares_its_fixed_resolution(source) -> None:
    """ViT's position embeddings are sized for one resolution: PyTorch refuses another."""
    loaded = source("vit-image")
    assert loaded.modality is Modality.VISION
    assert loaded.dynamic_axes == {"pixel_values": {0: "batch"}}
    assert loaded.default_shapes == ((1, IMAGE_SIZE), (2, IMAGE_SIZE), (4, IMAGE_SIZE))
    assert loaded.fixed_resolution == IMAGE_SIZE
    assert loaded.record().fixed_resolution == [IMAGE_SIZE, IMAGE_SIZE]
    pixels = loaded.make_inputs(3, IMAGE_SIZE, 0)["pixel_values"]
    assert pixels.shape == (3, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert pixels.dtype == torch.float32


@pytest.mark.parametrize("name", ANY_RESOLUTION_MODELS)
def test_a_convolutional_source_varies_height_and_width(source, name: str) -> None:
    """A backbone PyTorch runs at any size: height and width are dynamic, and validation
    runs at two other resolutions (multiples of 32) besides the batch sizes."""
    loaded = source(name)
    assert loaded.dynamic_axes == {"pixel_values": {0: "batch", 2: "height", 3: "width"}}
    assert loaded.default_shapes == (
        (1, IMAGE_SIZE), (2, IMAGE_SIZE), (4, IMAGE_SIZE), (1, 64), (1, 96)
    )  # fmt: skip
    assert loaded.fixed_resolution is None
    assert loaded.record().fixed_resolution is None
    # Traced at another side than its own: DINOv2 skips interpolating its position
    # embeddings at its own resolution, and a graph traced there would keep that size.
    assert loaded.example_shape == (2, 64)


@pytest.mark.parametrize(
    ("size", "others"), [(32, (64, 96)), (64, (32, 96)), (224, (160, 288)), (384, (288, 480))]
)
def test_other_resolutions_are_multiples_of_the_stride_one_smaller_where_it_fits(
    size: int, others: tuple[int, int]
) -> None:
    assert other_resolutions(size) == others


def test_tokenized_inputs_are_real_text_with_padding_in_the_last_row(source) -> None:
    inputs = source("bert-token").make_inputs(3, 40, 0)
    mask = inputs["attention_mask"]
    assert bool(mask[0].all()), "long sample text fills the first row"
    assert int(mask[-1].sum()) < 40, "the shorter last row exercises padding"
    assert int(inputs["input_ids"][0, 0]) == 2  # [CLS] from the trained tokenizer
    assert set(inputs["token_type_ids"].unique().tolist()) == {0}


@pytest.mark.parametrize("name", ["distilbert-token", "bert-token", "roberta-sequence"])
def test_default_validation_shapes_exercise_padding(source, name: str) -> None:
    loaded = source(name)
    padded = [
        (batch, length)
        for i, (batch, length) in enumerate(loaded.default_shapes)
        if not bool(loaded.make_inputs(batch, length, i)["attention_mask"].all())
    ]
    assert padded, "validation must see padded rows, or attention-mask bugs go unnoticed"


def test_inputs_are_repeatable_per_seed(source) -> None:
    for name in ("distilbert-token", "bert-encoder", "vit-image"):
        loaded = source(name)
        first, again = loaded.make_inputs(2, 32, 7), loaded.make_inputs(2, 32, 7)
        assert all(torch.equal(first[k], again[k]) for k in first), name
    other = source("vit-image").make_inputs(2, 32, 8)["pixel_values"]
    assert not torch.equal(other, source("vit-image").make_inputs(2, 32, 7)["pixel_values"])


def test_without_tokenizer_inputs_are_random_ids_with_a_padded_row(source) -> None:
    inputs = source("bert-encoder").make_inputs(2, 16, 0)
    assert bool(inputs["attention_mask"][0].all())
    assert inputs["attention_mask"][1].tolist() == [1] * 8 + [0] * 8
    assert inputs["input_ids"][1, 8:].tolist() == [0] * 8  # the pad id
    assert int(inputs["token_type_ids"].abs().sum()) == 0


def test_output_names_follow_the_model_outputs(source) -> None:
    loaded = source("bert-qa")
    with torch.no_grad():
        outputs = loaded.module(**loaded.example_inputs())
    assert loaded.output_names == ("start_logits", "end_logits")
    assert outputs["start_logits"].shape == TEXT_EXAMPLE_SHAPE


# --- the task ---------------------------------------------------------------------------


def test_task_override_loads_another_head(checkpoint) -> None:
    loaded = load_source(checkpoint("distilbert-token"), SourceConfig(task=Task.FEATURE_EXTRACTION))
    assert loaded.task is Task.FEATURE_EXTRACTION
    assert loaded.architecture == "DistilBertModel"
    assert loaded.output_names == ("last_hidden_state",)


def test_task_override_names_an_architecture_onnxport_does_not_know(copy_checkpoint) -> None:
    path = copy_checkpoint("roberta-sequence")
    edit_config_json(path, architectures=["RobertaForSomethingNew"])
    assert "names no architecture onnxport knows" in _refused(path)
    assert "set source.task to one of" in _refused(path)
    loaded = load_source(path, SourceConfig(task=Task.SEQUENCE_CLASSIFICATION))
    assert loaded.architecture == "RobertaForSequenceClassification"


def test_config_without_architectures_needs_a_task(copy_checkpoint) -> None:
    path = copy_checkpoint("bert-encoder")
    edit_config_json(path, architectures=None)
    assert "(none)" in _refused(path)
    assert load_source(path, SourceConfig(task=Task.FEATURE_EXTRACTION)).task is (
        Task.FEATURE_EXTRACTION
    )


def test_task_the_architecture_does_not_support_is_refused(checkpoint) -> None:
    message = _refused(checkpoint("vit-image"), SourceConfig(task=Task.TOKEN_CLASSIFICATION))
    assert "vit models do not support the task token-classification" in message
    assert "image-classification" in message  # what it does support


def test_another_head_whose_weights_are_missing_is_refused(checkpoint) -> None:
    # ViTForImageClassification has no pooler; ViTModel would get a random one.
    message = _refused(checkpoint("vit-image"), SourceConfig(task=Task.FEATURE_EXTRACTION))
    assert "do not fit a ViTModel" in message
    assert "pooler" in message


def test_the_class_config_json_names_is_loaded_when_it_serves_the_task(tmp_path: Path) -> None:
    # AutoModel maps t5 to the encoder-decoder T5Model, which would need decoder inputs.
    from onnxport.coverage.registry import entry

    path = entry("t5-encoder/feature-extraction").build(tmp_path / "t5")
    loaded = load_source(path)
    assert type(loaded.module).__name__ == "T5EncoderModel"
    assert loaded.task is Task.FEATURE_EXTRACTION
    assert loaded.input_names == ("input_ids", "attention_mask")
    assert loaded.output_names == ("last_hidden_state",)


def test_model_type_quirks_apply_on_load_and_warn(tmp_path: Path, caplog) -> None:
    from onnxport.coverage.registry import entry
    from onnxport.sources.quirks import MODEL_TYPE_QUIRKS

    path = entry("big-bird/sequence-classification").build(tmp_path / "big-bird")
    assert json.loads((path / "config.json").read_text())["attention_type"] == "block_sparse"
    with caplog.at_level("WARNING", logger="onnxport.sources.huggingface_config"):
        loaded = load_source(path)
    assert loaded.module.config.attention_type == "original_full"
    assert MODEL_TYPE_QUIRKS["big_bird"].note in caplog.text


# --- safe loading -----------------------------------------------------------------------


def test_pickle_checkpoint_is_refused_unless_allowed(checkpoint, tmp_path: Path) -> None:
    path = make_pickle_checkpoint(checkpoint("bert-token"), tmp_path / "pickled")
    message = _refused(path)
    assert "pytorch_model.bin" in message
    assert "source.allow_pickle: true" in message

    loaded = load_source(path, SourceConfig(allow_pickle=True))
    assert loaded.weight_files == (path / "pytorch_model.bin",)
    reference = load_source(checkpoint("bert-token"))
    inputs = reference.example_inputs()
    with torch.no_grad():
        assert torch.equal(loaded.module(**inputs).logits, reference.module(**inputs).logits)


def test_safetensors_win_over_a_pickle_beside_them(copy_checkpoint) -> None:
    path = copy_checkpoint("bert-encoder")
    (path / "pytorch_model.bin").write_bytes(b"not even a pickle")
    assert load_source(path).weight_files == (path / "model.safetensors",)


@pytest.mark.parametrize(
    ("content", "fragment"), [(b"", "is empty"), (b"PK\x03\x04trunc", "cannot load the weights")]
)
def test_allowed_pickle_that_is_damaged_is_refused(
    checkpoint, tmp_path: Path, content: bytes, fragment: str
) -> None:
    path = make_pickle_checkpoint(checkpoint("bert-encoder"), tmp_path / "pickled")
    (path / "pytorch_model.bin").write_bytes(content)
    assert fragment in _refused(path, SourceConfig(allow_pickle=True))


# --- bad paths and config.json ------------------------------------------------------------


def test_missing_path(tmp_path: Path) -> None:
    message = _refused(tmp_path / "nowhere")
    assert "source not found" in message
    assert str(tmp_path / "nowhere") in message


def test_a_file_is_not_a_checkpoint(tmp_path: Path) -> None:
    file = tmp_path / "model.safetensors"
    file.write_bytes(b"x")
    assert "is a file" in _refused(file)


def test_directory_without_config_json(tmp_path: Path) -> None:
    assert "has no config.json" in _refused(tmp_path)


def test_training_output_points_at_its_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "checkpoint").mkdir()
    message = _refused(tmp_path)
    assert "looks like a training output" in message
    assert str(tmp_path / "checkpoint") in message


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("{not json", "is not valid JSON"),
        ('{"model_type": "bert",', "is not valid JSON"),
        ("[1, 2]", "must hold a JSON object, not list"),
        ("", "is not valid JSON"),
    ],
)
def test_invalid_config_json(copy_checkpoint, text: str, fragment: str) -> None:
    path = copy_checkpoint("bert-encoder")
    (path / "config.json").write_text(text, encoding="utf-8")
    message = _refused(path)
    assert fragment in message
    assert str(path / "config.json") in message


def test_config_json_in_a_wrong_encoding(copy_checkpoint) -> None:
    path = copy_checkpoint("bert-encoder")
    (path / "config.json").write_bytes(b'{"model_type": "\xff"}')
    assert "is not valid JSON" in _refused(path)


def test_config_json_without_model_type(copy_checkpoint) -> None:
    path = copy_checkpoint("bert-encoder")
    edit_config_json(path, model_type=None)
    assert "has no model_type" in _refused(path)


def test_unknown_model_type(copy_checkpoint) -> None:
    path = copy_checkpoint("bert-encoder")
    edit_config_json(path, model_type="bertish-unknown")
    message = _refused(path)
    assert "unknown or invalid model" in message
    assert "'bertish-unknown'" in message
    assert "source.trust_remote_code: true" in message


# --- bad weights --------------------------------------------------------------------------


def test_missing_weights(copy_checkpoint) -> None:
    path = copy_checkpoint("bert-encoder")
    (path / "model.safetensors").unlink()
    assert "has no weights" in _refused(path)


def test_safetensors_index_without_its_shards(copy_checkpoint) -> None:
    path = copy_checkpoint("bert-encoder")
    (path / "model.safetensors").unlink()
    (path / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"x": "model-00001-of-00002.safetensors"}})
    )
    assert "names shards that are missing" in _refused(path)


@pytest.mark.parametrize(
    ("damage", "fragment"),
    [
        (lambda data: b"", "not a valid safetensors file"),
        (lambda data: data[:5], "not a valid safetensors file"),
        (lambda data: data[:-1], "is truncated or padded"),
        (lambda data: data[: len(data) // 2], "is truncated or padded"),
        (lambda data: data + b"\0", "is truncated or padded"),
        (lambda data: struct.pack("<Q", 10**12) + data[8:], "not a valid safetensors file"),
        (lambda data: data[:8] + b"\xff" + data[9:], "not a valid safetensors file"),
    ],
    ids=["zero-bytes", "five-bytes", "one-byte-short", "half", "padded", "huge-header", "garbage"],
)
def test_damaged_safetensors_are_refused_naming_the_file(copy_checkpoint, damage, fragment) -> None:
    path = copy_checkpoint("bert-encoder")
    weights = path / "model.safetensors"
    weights.write_bytes(damage(weights.read_bytes()))
    message = _refused(path)
    assert fragment in message
    assert str(weights) in message


@pytest.mark.parametrize(
    "header", [b"[1, 2, 3]", b'{"w": {"dtype": "F32", "shape": [1]}}', b'{"w": 3}']
)
def test_json_header_that_is_not_a_safetensors_header_is_refused(copy_checkpoint, header) -> None:
    path = copy_checkpoint("bert-encoder")
    (path / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    assert "not a valid safetensors file" in _refused(path)


@pytest.mark.parametrize(
    "changes",
    [
        {"hidden_size": 64, "intermediate_size": 128},
        {"vocab_size": VOCAB_SIZE + 20},
        {"num_hidden_layers": 3},
        {"num_hidden_layers": 1},
    ],
    ids=["wider", "bigger-vocab", "more-layers", "fewer-layers"],
)
def test_weights_that_do_not_match_config_are_refused(copy_checkpoint, changes: dict) -> None:
    path = copy_checkpoint("bert-encoder")
    edit_config_json(path, **changes)
    message = _refused(path)
    assert "cannot load the weights" in message or "do not fit a BertModel" in message
    assert "config.json" in message


def test_a_classifier_head_of_another_size_is_refused(copy_checkpoint) -> None:
    path = copy_checkpoint("distilbert-token")
    labels = NUM_LABELS + 2
    edit_config_json(
        path,
        id2label={str(i): f"L{i}" for i in range(labels)},
        label2id={f"L{i}": i for i in range(labels)},
    )
    assert "config.json" in _refused(path)


def test_damaged_tokenizer_is_refused(copy_checkpoint) -> None:
    path = copy_checkpoint("distilbert-token")
    (path / "tokenizer.json").write_text("{", encoding="utf-8")
    assert "the tokenizer files" in _refused(path)


def test_published_tokenizer_config_names_a_class_both_transformers_generations_read(
    tmp_path: Path,
) -> None:
    from onnxport.artifact.companions import publish_companions

    source, target = tmp_path / "source", tmp_path / "target"
    source.mkdir()
    target.mkdir()
    generic = {"tokenizer_class": "TokenizersBackend", "backend": "tokenizers", "pad_token": "x"}
    (source / "tokenizer_config.json").write_text(json.dumps(generic), encoding="utf-8")
    (source / "vocab.txt").write_bytes(b"[PAD]\n")
    files = {name: source / name for name in ("tokenizer_config.json", "vocab.txt")}
    publish_companions(files, target)
    published = json.loads((target / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert published == {**generic, "tokenizer_class": "PreTrainedTokenizerFast"}
    assert (target / "vocab.txt").read_bytes() == b"[PAD]\n"
    # A model's own class is known to both; a file that is not JSON is loaders' business.
    for content in ('{"tokenizer_class": "BertTokenizer"}', '{"model_max_length": '):
        (source / "tokenizer_config.json").write_text(content, encoding="utf-8")
        publish_companions({"tokenizer_config.json": source / "tokenizer_config.json"}, target)
        assert (target / "tokenizer_config.json").read_text(encoding="utf-8") == content


# --- sentence-transformers checkpoints --------------------------------------------------


def test_a_sentence_transformers_checkpoint_records_its_pooling_and_publishes_its_modules(
    copy_checkpoint,
) -> None:
    path = write_sentence_modules(
        copy_checkpoint("bert-encoder"), pooling="cls", normalize=True, max_seq_length=64
    )
    loaded = load_source(path)
    recorded = loaded.record().sentence_embedding
    assert recorded is not None
    assert (recorded.pooling.value, recorded.normalize, recorded.max_seq_length) == (
        "cls",
        True,
        64,
    )
    assert loaded.files_to_copy["1_Pooling/config.json"] == path / "1_Pooling" / "config.json"
    assert {"modules.json", "sentence_bert_config.json", "config.json"} <= set(loaded.files_to_copy)


@pytest.mark.parametrize(
    ("change", "found"),
    [
        ("dense", "lists Transformer (root), Pooling (1_Pooling), Dense (2_Dense)"),
        ("lasttoken", "pools with pooling_mode_lasttoken, which onnxport does not compute"),
        ("two modes", "pools with pooling_mode_cls_token + pooling_mode_mean_tokens"),
        ("outside", "names the module directory '../1_Pooling', outside"),
        ("no pooling config", "names a Pooling module, and"),
    ],
)
def test_sentence_modules_onnxport_cannot_compute_are_refused_in_one_line(
    copy_checkpoint, change: str, found: str
) -> None:
    """Vectors pooled otherwise than the checkpoint says would be wrong without a word."""
    path = write_sentence_modules(copy_checkpoint("bert-encoder"), pooling="mean", normalize=False)
    modules = json.loads((path / "modules.json").read_text(encoding="utf-8"))
    pooling_file = path / "1_Pooling" / "config.json"
    pooling = json.loads(pooling_file.read_text(encoding="utf-8"))
    if change == "dense":
        modules.append({"idx": 2, "path": "2_Dense", "type": "sentence_transformers.models.Dense"})
    elif change == "lasttoken":
        pooling.update(pooling_mode_mean_tokens=False, pooling_mode_lasttoken=True)
    elif change == "two modes":
        pooling.update(pooling_mode_cls_token=True)
    elif change == "outside":
        modules[1]["path"] = "../1_Pooling"
    else:
        pooling_file.unlink()
    (path / "modules.json").write_text(json.dumps(modules), encoding="utf-8")
    if pooling_file.exists():
        pooling_file.write_text(json.dumps(pooling), encoding="utf-8")
    message = _refused(path)
    assert found in message
    assert "\n" not in message


def test_a_generative_source_feeds_steps_with_a_past(source) -> None:
    """A text-generation step: new tokens after a past, its mask covering both."""
    loaded = source("gpt2-generation")
    assert loaded.input_names[:3] == ("input_ids", "attention_mask", "position_ids")
    assert loaded.dynamic_axes["past_key_values.0.key"] == {0: "batch", 2: "past_sequence"}
    assert loaded.dynamic_axes["attention_mask"] == {0: "batch", 1: "total_sequence"}
    prefill, decode = loaded.make_inputs(2, 9, 0), loaded.make_inputs(3, 1, 0)
    assert tuple(prefill["past_key_values.0.key"].shape)[2] == 0
    assert tuple(decode["past_key_values.0.key"].shape)[2] == DECODE_PAST_TOKENS
    assert tuple(decode["attention_mask"].shape) == (3, DECODE_PAST_TOKENS + 1)
    # The last row is left-padded; positions count its real tokens from 0, as generate() does.
    mask, positions = prefill["attention_mask"][-1], prefill["position_ids"][-1]
    first = int(mask.argmax())
    assert first > 0 and positions[first] == 0 and positions[-1] == 9 - first - 1
    traced = loaded.example_inputs()
    assert {tuple(v.shape)[2] for k, v in traced.items() if k.startswith("past_")} == {3}
