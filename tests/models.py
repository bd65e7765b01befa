"""Tiny Hugging Face checkpoints for the tests, built offline with random weights.

Each builder writes a checkpoint with `save_pretrained()` (safetensors) into a directory and
is small enough (hidden 32, 2 layers) that an export takes seconds. `MODELS` is the registry
the tests parametrize over; `test_tasks.py` fails when a task has no model here.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from onnxport.coverage.registry import (
    HEADS,
    HIDDEN,
    IMAGE_SIZE,
    INTERMEDIATE,
    LAYERS,
    MAX_POSITIONS,
    SEED,
    labels,
)
from onnxport.demo.training import corpus, train_wordpiece_tokenizer
from onnxport.sources.generative import past_names, present_names
from onnxport.tasks import Task

# The dimensions are the coverage matrix's tiny models'; these models also read the demo's
# tokenizer, which stops at ~480 tokens on the résumé corpus: room above that.
TOKENIZER_VOCAB_SIZE = 500  # within the tiny models' 512 embeddings
VOCAB_SIZE = 512
NUM_LABELS = 5
PATCH_SIZE = 8


def _save(model: torch.nn.Module, directory: Path) -> Path:
    model.eval().save_pretrained(directory, safe_serialization=True)
    return directory


def wordpiece_tokenizer(directory: Path) -> Any:
    """The demo's WordPiece tokenizer, trained on résumé text; its inputs: ids and mask."""
    tokenizer = train_wordpiece_tokenizer(corpus(), directory, vocab_size=TOKENIZER_VOCAB_SIZE)
    assert len(tokenizer) <= VOCAB_SIZE, "the tiny models' embeddings must cover the tokenizer"
    return tokenizer


def bert_tokenizer(directory: Path) -> Any:
    """The same vocabulary saved as a `BertTokenizer`, which also emits token_type_ids."""
    from transformers import BertTokenizerFast

    return train_wordpiece_tokenizer(
        corpus(), directory, vocab_size=TOKENIZER_VOCAB_SIZE, tokenizer_class=BertTokenizerFast
    )


def _bert_config(**extra: Any) -> Any:
    from transformers import BertConfig

    return BertConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=INTERMEDIATE,
        max_position_embeddings=MAX_POSITIONS,
        pad_token_id=0,
        **extra,
    )


def build_distilbert_token_classifier(directory: Path, *, initializer_range: float = 0.02) -> Path:
    from transformers import DistilBertConfig, DistilBertForTokenClassification

    tokenizer = wordpiece_tokenizer(directory)
    config = DistilBertConfig(
        vocab_size=VOCAB_SIZE,
        dim=HIDDEN,
        n_layers=LAYERS,
        n_heads=HEADS,
        hidden_dim=INTERMEDIATE,
        max_position_embeddings=MAX_POSITIONS,
        pad_token_id=tokenizer.pad_token_id,
        initializer_range=initializer_range,
        **labels(NUM_LABELS),
    )
    torch.manual_seed(SEED)
    return _save(DistilBertForTokenClassification(config), directory)


def build_distilbert_at_trained_scale(directory: Path) -> Path:
    """The tiny DistilBERT with weights at a trained model's scale: its activations are of
    order 1, where an approximate GELU or a changed LayerNorm epsilon shows (at the default
    initialization they are near 0, where both agree to float32's rounding)."""
    return build_distilbert_token_classifier(directory, initializer_range=0.5)


def build_bert_token_classifier(directory: Path) -> Path:
    from transformers import BertForTokenClassification

    bert_tokenizer(directory)
    torch.manual_seed(SEED)
    return _save(BertForTokenClassification(_bert_config(**labels(NUM_LABELS))), directory)


def build_roberta_sequence_classifier(directory: Path) -> Path:
    from transformers import RobertaConfig, RobertaForSequenceClassification

    tokenizer = wordpiece_tokenizer(directory)
    config = RobertaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=INTERMEDIATE,
        # RoBERTa numbers positions from pad_token_id + 1: room for 128 tokens.
        max_position_embeddings=MAX_POSITIONS + 2,
        pad_token_id=tokenizer.pad_token_id,
        **labels(3),
    )
    torch.manual_seed(SEED)
    return _save(RobertaForSequenceClassification(config), directory)


def build_bert_encoder(directory: Path) -> Path:
    """A bare `BertModel` without tokenizer: inputs are generated, token_type_ids included."""
    from transformers import BertModel

    torch.manual_seed(SEED)
    return _save(BertModel(_bert_config()), directory)


def write_sentence_modules(
    directory: Path, *, pooling: str, normalize: bool, max_seq_length: int | None = None
) -> Path:
    """Make the checkpoint at `directory` a sentence-transformers one, as
    `SentenceTransformer.save()` lays it out: `modules.json` (the Transformer at the root, a
    Pooling module with one `pooling_mode_*` set, optionally Normalize), the Pooling module's
    config and `sentence_bert_config.json`. The Normalize module has no files."""
    modules = [("Transformer", ""), ("Pooling", "1_Pooling")]
    if normalize:
        modules.append(("Normalize", "2_Normalize"))
    entries = [
        {"idx": i, "name": str(i), "path": path, "type": f"sentence_transformers.models.{kind}"}
        for i, (kind, path) in enumerate(modules)
    ]
    (directory / "modules.json").write_text(json.dumps(entries, indent=2), encoding="utf-8")
    modes = {"cls": "cls_token", "mean": "mean_tokens", "max": "max_tokens"}
    others = ("mean_sqrt_len_tokens", "weightedmean_tokens", "lasttoken")
    pooling_config = {"word_embedding_dimension": HIDDEN} | {
        f"pooling_mode_{mode}": mode == modes.get(pooling, pooling)
        for mode in (*modes.values(), *others)
    }
    (directory / "1_Pooling").mkdir(exist_ok=True)
    (directory / "1_Pooling" / "config.json").write_text(
        json.dumps(pooling_config, indent=2), encoding="utf-8"
    )
    settings = {"max_seq_length": max_seq_length or MAX_POSITIONS, "do_lower_case": False}
    (directory / "sentence_bert_config.json").write_text(json.dumps(settings), encoding="utf-8")
    return directory


def build_vit_image_classifier(directory: Path) -> Path:
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(SEED)
    return _save(ViTForImageClassification(_vit_like(ViTConfig)), directory)


def _vit_like(config_class: Any, **extra: Any) -> Any:
    return config_class(
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=INTERMEDIATE,
        **labels(4),
        **extra,
    )


def build_dinov2_image_classifier(directory: Path) -> Path:
    """A ViT that interpolates its position embeddings: PyTorch runs it at any size."""
    from transformers import Dinov2Config, Dinov2ForImageClassification

    torch.manual_seed(SEED)
    return _save(Dinov2ForImageClassification(_vit_like(Dinov2Config)), directory)


def build_beit_image_classifier(directory: Path) -> Path:
    """PyTorch runs it at any size, but the dynamo graph fixes the traced size inside (its
    relative position bias is sized with Python ints): it falls back to its resolution."""
    from transformers import BeitConfig, BeitForImageClassification

    config = _vit_like(BeitConfig, use_relative_position_bias=True)
    torch.manual_seed(SEED)
    return _save(BeitForImageClassification(config), directory)


def build_resnet_image_classifier(directory: Path) -> Path:
    """A convolutional backbone: it takes images of any size, so height and width vary."""
    from transformers import ResNetConfig, ResNetForImageClassification

    config = ResNetConfig(
        embedding_size=16,
        hidden_sizes=[16, 32],
        depths=[1, 1],
        layer_type="basic",
        image_size=IMAGE_SIZE,
        **labels(4),
    )
    torch.manual_seed(SEED)
    return _save(ResNetForImageClassification(config), directory)


def build_regnet_image_classifier(directory: Path) -> Path:
    from transformers import RegNetConfig, RegNetForImageClassification

    config = RegNetConfig(
        embedding_size=16,
        hidden_sizes=[16, 32],
        depths=[1, 1],
        groups_width=8,
        image_size=IMAGE_SIZE,
        **labels(4),
    )
    torch.manual_seed(SEED)
    return _save(RegNetForImageClassification(config), directory)


def build_bert_question_answering(directory: Path) -> Path:
    from transformers import BertForQuestionAnswering

    bert_tokenizer(directory)
    torch.manual_seed(SEED)
    return _save(BertForQuestionAnswering(_bert_config()), directory)


def build_bert_masked_lm(directory: Path) -> Path:
    from transformers import BertForMaskedLM

    wordpiece_tokenizer(directory)
    torch.manual_seed(SEED)
    return _save(BertForMaskedLM(_bert_config()), directory)


def build_gpt2_causal_lm(directory: Path) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = wordpiece_tokenizer(directory)
    config = GPT2Config(
        vocab_size=VOCAB_SIZE,
        n_embd=HIDDEN,
        n_layer=LAYERS,
        n_head=HEADS,
        n_positions=MAX_POSITIONS,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id,
    )
    torch.manual_seed(SEED)
    return _save(GPT2LMHeadModel(config), directory)


CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def chat_tokenizer(directory: Path) -> Any:
    """A byte-level BPE tokenizer trained on the résumé corpus, as decoder LMs ship one: no
    pad token, `<|im_end|>` as EOS, and a ChatML chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TOKENIZER_VOCAB_SIZE,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(corpus(), trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token="<|im_end|>", bos_token="<|im_start|>"
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(directory)
    return tokenizer


def build_llama_chat(directory: Path, **config: Any) -> Path:
    """A Llama-architecture chat model (grouped-query attention) with `chat_tokenizer`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = chat_tokenizer(directory)
    settings = {
        "vocab_size": VOCAB_SIZE,
        "hidden_size": HIDDEN,
        "intermediate_size": HIDDEN * 2,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": MAX_POSITIONS,
        "eos_token_id": tokenizer.eos_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        **config,
    }
    torch.manual_seed(SEED)
    return _save(LlamaForCausalLM(LlamaConfig(**settings)), directory)


DEEP_LAYERS = 24


def build_deep_llama(directory: Path) -> Path:
    """A deep decoder LM, correct, initialized at the scale of a trained one: logits up to
    about 20, where PyTorch's own float32 error (against float64) passes 1e-4 + 1e-3 * |x|
    on dozens of elements. No tokenizer: random token ids."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=2000,
        hidden_size=128,
        intermediate_size=512,
        num_hidden_layers=DEEP_LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        initializer_range=0.4,
    )
    torch.manual_seed(SEED)
    return _save(LlamaForCausalLM(config), directory)


def build_funnel_sequence_classifier(directory: Path) -> Path:
    """A model whose code fixes the sequence length when traced (Funnel's pooling): the
    dynamo exporter refuses it, the TorchScript exporter bakes the example's length in, and
    the graph refuses other lengths. Not in `MODELS`: it cannot be converted as it is."""
    from transformers import FunnelConfig, FunnelForSequenceClassification

    tokenizer = wordpiece_tokenizer(directory)
    config = FunnelConfig(
        vocab_size=VOCAB_SIZE,
        block_sizes=[1, 1],
        num_decoder_layers=1,
        d_model=HIDDEN,
        n_head=HEADS,
        d_head=HIDDEN // HEADS,
        d_inner=INTERMEDIATE,
        pad_token_id=tokenizer.pad_token_id,
        **labels(3),
    )
    torch.manual_seed(SEED)
    return _save(FunnelForSequenceClassification(config), directory)


@dataclass(frozen=True)
class TinyModel:
    """A registry entry: how to build the checkpoint and what loading it must yield."""

    build: Callable[[Path], Path]
    task: Task
    architecture: str
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    has_tokenizer: bool


TEXT_INPUTS = ("input_ids", "attention_mask")

MODELS: dict[str, TinyModel] = {
    "distilbert-token": TinyModel(
        build_distilbert_token_classifier,
        Task.TOKEN_CLASSIFICATION,
        "DistilBertForTokenClassification",
        TEXT_INPUTS,
        ("logits",),
        True,
    ),
    "bert-token": TinyModel(
        build_bert_token_classifier,
        Task.TOKEN_CLASSIFICATION,
        "BertForTokenClassification",
        (*TEXT_INPUTS, "token_type_ids"),
        ("logits",),
        True,
    ),
    "roberta-sequence": TinyModel(
        build_roberta_sequence_classifier,
        Task.SEQUENCE_CLASSIFICATION,
        "RobertaForSequenceClassification",
        TEXT_INPUTS,
        ("logits",),
        True,
    ),
    "bert-encoder": TinyModel(
        build_bert_encoder,
        Task.FEATURE_EXTRACTION,
        "BertModel",
        (*TEXT_INPUTS, "token_type_ids"),
        ("last_hidden_state", "pooler_output"),
        False,
    ),
    "vit-image": TinyModel(
        build_vit_image_classifier,
        Task.IMAGE_CLASSIFICATION,
        "ViTForImageClassification",
        ("pixel_values",),
        ("logits",),
        False,
    ),
    "resnet-image": TinyModel(
        build_resnet_image_classifier,
        Task.IMAGE_CLASSIFICATION,
        "ResNetForImageClassification",
        ("pixel_values",),
        ("logits",),
        False,
    ),
    "regnet-image": TinyModel(
        build_regnet_image_classifier,
        Task.IMAGE_CLASSIFICATION,
        "RegNetForImageClassification",
        ("pixel_values",),
        ("logits",),
        False,
    ),
    "dinov2-image": TinyModel(
        build_dinov2_image_classifier,
        Task.IMAGE_CLASSIFICATION,
        "Dinov2ForImageClassification",
        ("pixel_values",),
        ("logits",),
        False,
    ),
    "beit-image": TinyModel(
        build_beit_image_classifier,
        Task.IMAGE_CLASSIFICATION,
        "BeitForImageClassification",
        ("pixel_values",),
        ("logits",),
        False,
    ),
    "bert-qa": TinyModel(
        build_bert_question_answering,
        Task.QUESTION_ANSWERING,
        "BertForQuestionAnswering",
        (*TEXT_INPUTS, "token_type_ids"),
        ("start_logits", "end_logits"),
        True,
    ),
    "bert-mlm": TinyModel(
        build_bert_masked_lm,
        Task.MASKED_LM,
        "BertForMaskedLM",
        TEXT_INPUTS,
        ("logits",),
        True,
    ),
    "gpt2-generation": TinyModel(
        build_gpt2_causal_lm,
        Task.TEXT_GENERATION,
        "GPT2LMHeadModel",
        (*TEXT_INPUTS, "position_ids", *past_names(LAYERS)),
        ("logits", *present_names(LAYERS)),
        True,
    ),
}

# Image models whose height and width vary (convolutional backbones, DINOv2 which interpolates
# its position embeddings); ViT's resolution is fixed, and so is BEiT's once exported.
ANY_RESOLUTION_MODELS = ("resnet-image", "regnet-image", "dinov2-image")

# The five the CLI converts end to end with the default (dynamo) exporter; the pipeline
# tests convert every entry of MODELS with the faster TorchScript exporter.
CORE_MODELS = ("distilbert-token", "bert-token", "roberta-sequence", "bert-encoder", "vit-image")


def edit_config_json(directory: Path, **changes: Any) -> None:
    """Change keys of `config.json` in place (None removes a key)."""
    path = directory / "config.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")


def make_pickle_checkpoint(safetensors_checkpoint: Path, directory: Path) -> Path:
    """The same model saved the pre-safetensors way: `pytorch_model.bin` (a pickle).

    transformers 5 ignores `save_pretrained(safe_serialization=False)` and always writes
    safetensors, so the pickle is written with `torch.save` as older versions did.
    """
    from safetensors.torch import load_file

    shutil.copytree(safetensors_checkpoint, directory)
    state = load_file(directory / "model.safetensors")
    (directory / "model.safetensors").unlink()
    torch.save(state, directory / "pytorch_model.bin")
    return directory


def retrained(checkpoint: Path, directory: Path, *, seed: int, **config: Any) -> Path:
    """A copy of `checkpoint` (its tokenizer, its config with `config`'s changes) with other
    weights: the architecture's initialisation with `seed`, every tensor then moved by noise
    as training moves them (a fresh LayerNorm is all ones in every layer; a trained one is
    not)."""
    import transformers

    shutil.copytree(checkpoint, directory)
    edit_config_json(directory, **config)
    settings = transformers.AutoConfig.from_pretrained(directory)
    torch.manual_seed(seed)
    model = getattr(transformers, settings.architectures[0])(settings)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    return _save(model, directory)
