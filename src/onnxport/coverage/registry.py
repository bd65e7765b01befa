"""The coverage matrix: one entry per (architecture, task), each a tiny random-weight model.

Every entry builds its checkpoint offline from a `transformers` config (hidden 32, 2 layers,
small vocabulary and images), writes it with `save_pretrained()`, and is converted by the
same pipeline as any user checkpoint, with the default settings. Where an entry's tiny model
departs from the defaults of its config (an initializer range), its `note` says why, and
`docs/coverage.md` shows it beside the result.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onnxport.tasks import Task

SEED = 0
NUM_LABELS = 3
VOCAB_SIZE = 256
HIDDEN = 32
LAYERS = 2
HEADS = 2
INTERMEDIATE = 64
MAX_POSITIONS = 128
IMAGE_SIZE = 32
INIT_STD = 0.02


@dataclass(frozen=True)
class CoverageEntry:
    """One (architecture, task) pair: how to build its tiny checkpoint and convert it."""

    architecture: str
    task: Task
    model_class: str
    """The `transformers` class saved, e.g. `BertForTokenClassification`."""
    config_class: str
    config: Mapping[str, Any] = field(hash=False)
    note: str | None = None
    """Why the tiny model departs from the defaults; shown in docs/coverage.md."""

    @property
    def name(self) -> str:
        return f"{self.architecture}/{self.task.value}"

    @property
    def model_type(self) -> str:
        import transformers

        return str(getattr(transformers, self.config_class).model_type)

    def build(self, directory: Path) -> Path:
        """Write the tiny checkpoint (config.json, model.safetensors) into `directory`."""
        import torch
        import transformers

        settings = dict(self.config)
        if self.task in _CLASSIFICATION_TASKS:
            settings.update(labels(NUM_LABELS))
        config = getattr(transformers, self.config_class)(**settings)
        torch.manual_seed(SEED)
        model = getattr(transformers, self.model_class)(config).eval()
        with torch.no_grad():
            for parameter in model.parameters():
                # Tensors initialized to zero (biases) add nothing, so a graph that dropped
                # or misplaced them would still validate: draw them at random too.
                if not parameter.any():
                    parameter.normal_(0.0, INIT_STD)
        model.save_pretrained(directory)
        return directory


_CLASSIFICATION_TASKS = (
    Task.TOKEN_CLASSIFICATION,
    Task.SEQUENCE_CLASSIFICATION,
    Task.IMAGE_CLASSIFICATION,
)


def labels(count: int) -> dict[str, Any]:
    """config.json's keys for `count` labels (`LABEL_0`, ...)."""
    return {
        "num_labels": count,
        "id2label": {i: f"LABEL_{i}" for i in range(count)},
        "label2id": {f"LABEL_{i}": i for i in range(count)},
    }


def _architecture(
    name: str,
    config_class: str,
    config: Mapping[str, Any],
    tasks: Mapping[Task, str],
    note: str | None = None,
) -> tuple[CoverageEntry, ...]:
    """The entries of one architecture: its tiny config crossed with the tasks it supports."""
    return tuple(
        CoverageEntry(
            architecture=name,
            task=task,
            model_class=model_class,
            config_class=config_class,
            config=config,
            note=note,
        )
        for task, model_class in tasks.items()
    )


def _heads(prefix: str, *tasks: Task) -> dict[Task, str]:
    suffixes = {
        Task.TOKEN_CLASSIFICATION: "ForTokenClassification",
        Task.SEQUENCE_CLASSIFICATION: "ForSequenceClassification",
        Task.QUESTION_ANSWERING: "ForQuestionAnswering",
        Task.MASKED_LM: "ForMaskedLM",
        Task.FEATURE_EXTRACTION: "Model",
        Task.IMAGE_CLASSIFICATION: "ForImageClassification",
        Task.TEXT_GENERATION: "ForCausalLM",
    }
    return {task: prefix + suffixes[task] for task in tasks}


TOKEN, SEQUENCE, QA, MLM, FEATURES, IMAGE, GENERATION = (
    Task.TOKEN_CLASSIFICATION,
    Task.SEQUENCE_CLASSIFICATION,
    Task.QUESTION_ANSWERING,
    Task.MASKED_LM,
    Task.FEATURE_EXTRACTION,
    Task.IMAGE_CLASSIFICATION,
    Task.TEXT_GENERATION,
)

_ENCODER = {
    "vocab_size": VOCAB_SIZE,
    "hidden_size": HIDDEN,
    "num_hidden_layers": LAYERS,
    "num_attention_heads": HEADS,
    "intermediate_size": INTERMEDIATE,
    "max_position_embeddings": MAX_POSITIONS,
}
_DECODER = {**_ENCODER, "num_key_value_heads": 1, "pad_token_id": 0}
# RoBERTa and its kin number positions from pad_token_id + 1: two more for 128 tokens.
_ROBERTA = {**_ENCODER, "max_position_embeddings": MAX_POSITIONS + 2}
_VIT = {
    "image_size": IMAGE_SIZE,
    "patch_size": 8,
    "hidden_size": HIDDEN,
    "num_hidden_layers": LAYERS,
    "num_attention_heads": HEADS,
    "intermediate_size": INTERMEDIATE,
}
# Convolutional configs have no image size; the loader reads `image_size` from config.json,
# so the tiny checkpoints record one (a real checkpoint's default is 224).
_STAGES = {"image_size": IMAGE_SIZE, "hidden_sizes": [16, 32], "depths": [1, 1]}

ENTRIES: tuple[CoverageEntry, ...] = (
    *_architecture(
        "bert", "BertConfig", _ENCODER, _heads("Bert", TOKEN, SEQUENCE, QA, MLM, FEATURES)
    ),
    *_architecture(
        "distilbert",
        "DistilBertConfig",
        {
            "vocab_size": VOCAB_SIZE,
            "dim": HIDDEN,
            "n_layers": LAYERS,
            "n_heads": HEADS,
            "hidden_dim": INTERMEDIATE,
            "max_position_embeddings": MAX_POSITIONS,
        },
        _heads("DistilBert", TOKEN, SEQUENCE, QA, MLM),
    ),
    *_architecture(
        "roberta", "RobertaConfig", _ROBERTA, _heads("Roberta", TOKEN, SEQUENCE, QA, MLM)
    ),
    *_architecture(
        "xlm-roberta", "XLMRobertaConfig", _ROBERTA, _heads("XLMRoberta", TOKEN, SEQUENCE)
    ),
    *_architecture("camembert", "CamembertConfig", _ROBERTA, _heads("Camembert", SEQUENCE, MLM)),
    *_architecture(
        "albert",
        "AlbertConfig",
        {**_ENCODER, "embedding_size": 16},
        _heads("Albert", TOKEN, SEQUENCE, QA, MLM),
    ),
    *_architecture(
        "electra",
        "ElectraConfig",
        {**_ENCODER, "embedding_size": 16},
        _heads("Electra", TOKEN, SEQUENCE, MLM),
    ),
    *_architecture(
        "deberta-v2",
        "DebertaV2Config",
        # DeBERTa-v3's attention: relative positions in buckets, both attention directions.
        {
            **_ENCODER,
            "relative_attention": True,
            "position_buckets": 32,
            "max_relative_positions": -1,
            "pos_att_type": ["p2c", "c2p"],
            "norm_rel_ebd": "layer_norm",
            "share_att_key": True,
            "position_biased_input": False,
        },
        _heads("DebertaV2", TOKEN, SEQUENCE, QA, MLM),
    ),
    *_architecture("mpnet", "MPNetConfig", _ROBERTA, _heads("MPNet", TOKEN, SEQUENCE, MLM)),
    *_architecture(
        "mobilebert",
        "MobileBertConfig",
        {
            **_ENCODER,
            "hidden_size": 64,
            "embedding_size": 16,
            "intra_bottleneck_size": 32,
            "true_hidden_size": 32,
            "num_feedforward_networks": 2,
            "initializer_range": 0.1,
        },
        _heads("MobileBert", TOKEN, SEQUENCE, QA),
        note="the tiny model is drawn with initializer_range 0.1: at the default 0.02 "
        "its NoNorm layers shrink the signal until the classifier's outputs differ "
        "between inputs by less than the 1e-4 tolerance",
    ),
    *_architecture(
        "convbert",
        "ConvBertConfig",
        {**_ENCODER, "num_attention_heads": 4, "embedding_size": HIDDEN, "conv_kernel_size": 3},
        _heads("ConvBert", TOKEN, SEQUENCE),
    ),
    *_architecture(
        "longformer",
        "LongformerConfig",
        {**_ROBERTA, "attention_window": 8},
        _heads("Longformer", SEQUENCE),
    ),
    *_architecture(
        "big-bird",
        "BigBirdConfig",
        {**_ENCODER, "block_size": 4, "num_random_blocks": 1},
        _heads("BigBird", SEQUENCE),
    ),
    *_architecture(
        "t5-encoder",
        "T5Config",
        {
            "vocab_size": VOCAB_SIZE,
            "d_model": HIDDEN,
            "d_kv": 16,
            "d_ff": INTERMEDIATE,
            "num_layers": LAYERS,
            "num_heads": HEADS,
        },
        {FEATURES: "T5EncoderModel"},
    ),
    *_architecture(
        "gpt2",
        "GPT2Config",
        {
            "vocab_size": VOCAB_SIZE,
            "n_embd": HIDDEN,
            "n_layer": LAYERS,
            "n_head": HEADS,
            "n_positions": MAX_POSITIONS,
            "pad_token_id": 0,
        },
        {GENERATION: "GPT2LMHeadModel", **_heads("GPT2", SEQUENCE, TOKEN)},
    ),
    *_architecture(
        "llama",
        "LlamaConfig",
        {
            **_ENCODER,
            "num_key_value_heads": 1,
            "head_dim": 16,
            "pad_token_id": 0,
        },
        _heads("Llama", GENERATION, SEQUENCE),
    ),
    # Decoder LMs with their KV cache: grouped-query attention, sliding windows, partial
    # rotary embeddings, learned positions (OPT), parallel attention (GPT-NeoX, Falcon).
    *_architecture(
        "mistral",
        "MistralConfig",
        {**_DECODER, "num_key_value_heads": 1, "sliding_window": 16},
        _heads("Mistral", GENERATION),
    ),
    *_architecture("qwen2", "Qwen2Config", _DECODER, _heads("Qwen2", GENERATION)),
    *_architecture(
        "qwen3", "Qwen3Config", {**_DECODER, "head_dim": 16}, _heads("Qwen3", GENERATION)
    ),
    *_architecture("phi3", "Phi3Config", _DECODER, _heads("Phi3", GENERATION)),
    *_architecture(
        "gemma", "GemmaConfig", {**_DECODER, "head_dim": 16}, _heads("Gemma", GENERATION)
    ),
    *_architecture(
        "gemma2", "Gemma2Config", {**_DECODER, "head_dim": 16}, _heads("Gemma2", GENERATION)
    ),
    *_architecture(
        "opt",
        "OPTConfig",
        {
            **_DECODER,
            "ffn_dim": INTERMEDIATE,
            "word_embed_proj_dim": HIDDEN,
            "pad_token_id": 1,
        },
        _heads("OPT", GENERATION),
    ),
    *_architecture("gpt-neox", "GPTNeoXConfig", _DECODER, _heads("GPTNeoX", GENERATION)),
    *_architecture(
        "falcon",
        "FalconConfig",
        {**_DECODER, "new_decoder_architecture": True, "num_kv_heads": 1},
        _heads("Falcon", GENERATION),
    ),
    *_architecture("vit", "ViTConfig", _VIT, _heads("ViT", IMAGE)),
    *_architecture("deit", "DeiTConfig", _VIT, {IMAGE: "DeiTForImageClassificationWithTeacher"}),
    *_architecture(
        "beit",
        "BeitConfig",
        {**_VIT, "vocab_size": VOCAB_SIZE, "use_relative_position_bias": True},
        _heads("Beit", IMAGE),
    ),
    # DINOv2 and BEiT's kin interpolate their position embeddings (or relative position
    # bias) for other image sizes; I-JEPA and ViT-MSN, like ViT, only when asked to.
    *_architecture("dinov2", "Dinov2Config", _VIT, _heads("Dinov2", IMAGE)),
    *_architecture(
        "dinov2-with-registers",
        "Dinov2WithRegistersConfig",
        _VIT,
        _heads("Dinov2WithRegisters", IMAGE),
    ),
    *_architecture(
        "data2vec-vision",
        "Data2VecVisionConfig",
        {**_VIT, "use_relative_position_bias": True},
        _heads("Data2VecVision", IMAGE),
    ),
    *_architecture("ijepa", "IJepaConfig", _VIT, _heads("IJepa", IMAGE)),
    *_architecture("vit-msn", "ViTMSNConfig", _VIT, _heads("ViTMSN", IMAGE)),
    *_architecture(
        "convnext", "ConvNextConfig", {**_STAGES, "num_stages": 2}, _heads("ConvNext", IMAGE)
    ),
    *_architecture(
        "resnet",
        "ResNetConfig",
        {**_STAGES, "embedding_size": 16, "layer_type": "basic"},
        _heads("ResNet", IMAGE),
    ),
    *_architecture(
        "swin",
        "SwinConfig",
        {
            "image_size": IMAGE_SIZE,
            "patch_size": 4,
            "embed_dim": 16,
            "depths": [1, 1],
            "num_heads": [1, 2],
            "window_size": 4,
        },
        _heads("Swin", IMAGE),
    ),
    *_architecture(
        "segformer",
        "SegformerConfig",
        {
            "image_size": IMAGE_SIZE,
            "num_encoder_blocks": 2,
            "depths": [1, 1],
            "sr_ratios": [2, 1],
            "hidden_sizes": [16, 32],
            "patch_sizes": [7, 3],
            "strides": [4, 2],
            "num_attention_heads": [1, 2],
            "mlp_ratios": [2, 2],
            "decoder_hidden_size": 32,
        },
        _heads("Segformer", IMAGE),
    ),
    *_architecture(
        "mobilevit",
        "MobileViTConfig",
        {
            "image_size": IMAGE_SIZE,
            "hidden_sizes": [16, 24, 32],
            "neck_hidden_sizes": [8, 8, 16, 16, 24, 32, 64],
            "num_attention_heads": 2,
            "initializer_range": 0.5,
        },
        _heads("MobileViT", IMAGE),
        note="the tiny model is drawn with initializer_range 0.5: at the default 0.02, "
        "its BatchNorm scales (drawn from N(0, 0.02)) vanish the signal and every image "
        "gets the same logits, which any graph would match",
    ),
)


def entry(name: str) -> CoverageEntry:
    """The entry called `name` (`bert/token-classification`)."""
    for candidate in ENTRIES:
        if candidate.name == name:
            return candidate
    raise KeyError(f"no coverage entry {name!r}; see onnxport.coverage.registry.ENTRIES")
