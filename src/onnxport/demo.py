"""The built-in demo checkpoint: a small DistilBERT-style résumé entity tagger.

Built once, offline, into a cache directory: a WordPiece tokenizer trained with the
`tokenizers` package on synthetic résumé text, and a token-classification model from a
`DistilBertConfig`. Nothing is downloaded.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from pathlib import Path

from onnxport.samples import RESUME_LINES

logger = logging.getLogger(__name__)

DEMO_LABELS = (
    "O",
    "B-NAME",
    "I-NAME",
    "B-EMAIL",
    "B-PHONE",
    "I-PHONE",
    "B-SKILL",
    "I-SKILL",
    "B-ORG",
    "I-ORG",
    "B-DATE",
    "I-DATE",
)
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
DEMO_VERSION = "1"


def default_cache_dir() -> Path:
    base = os.environ.get("ONNXPORT_CACHE") or os.environ.get("XDG_CACHE_HOME")
    return Path(base) / "onnxport" if base else Path.home() / ".cache" / "onnxport"


def train_wordpiece_tokenizer(texts: list[str], directory: Path, *, vocab_size: int = 2000):
    """Train a BERT-style WordPiece tokenizer on `texts` and save it with save_pretrained()."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS))
    tokenizer.train_from_iterator(texts, trainer=trainer)
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    from tokenizers import decoders

    tokenizer.decoder = decoders.WordPiece()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=512,
    )
    fast.save_pretrained(directory)
    return fast


def corpus() -> list[str]:
    """Text to train the demo tokenizer on: the résumé lines, with variations."""
    lines = list(RESUME_LINES)
    return lines + [line.lower() for line in lines] + [line.upper() for line in lines]


def build_demo_checkpoint(cache_dir: Path | None = None) -> Path:
    """The demo checkpoint directory, built on first use and reused afterwards."""
    target = (cache_dir or default_cache_dir()) / f"demo-checkpoint-v{DEMO_VERSION}"
    if (target / "model.safetensors").is_file():
        return target
    import torch
    from transformers import DistilBertConfig, DistilBertForTokenClassification

    logger.info("building the demo checkpoint in %s (once)", target)
    work = target.with_name(f".{target.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:6]}")
    work.mkdir(parents=True)
    try:
        tokenizer = train_wordpiece_tokenizer(corpus(), work)
        config = DistilBertConfig(
            vocab_size=len(tokenizer),
            dim=128,
            n_layers=2,
            n_heads=4,
            hidden_dim=512,
            max_position_embeddings=256,
            num_labels=len(DEMO_LABELS),
            id2label=dict(enumerate(DEMO_LABELS)),
            label2id={label: i for i, label in enumerate(DEMO_LABELS)},
            pad_token_id=tokenizer.pad_token_id,
        )
        torch.manual_seed(0)
        model = DistilBertForTokenClassification(config).eval()
        model.save_pretrained(work, safe_serialization=True)
        if target.exists():
            shutil.rmtree(target)
        work.rename(target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target
