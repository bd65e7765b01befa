"""The built-in demo checkpoint: a small DistilBERT-style résumé entity tagger.

Built once, offline, into a cache directory: a WordPiece tokenizer trained with the
`tokenizers` package on synthetic résumé text, and a token-classification model from a
`DistilBertConfig`. Nothing is downloaded.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from onnxport.export.cache.store import cache_root
from onnxport.samples import RESUME_LINES

logger = logging.getLogger(__name__)

DEMO_LABELS = (
    "O", "B-NAME", "I-NAME", "B-EMAIL", "I-EMAIL", "B-PHONE", "I-PHONE",
    "B-SKILL", "I-SKILL", "B-ORG", "I-ORG", "B-DATE", "I-DATE",
)  # fmt: skip
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
DEMO_VERSION = "3"
MAX_LENGTH = 48
BATCH_SIZE = 16
TRAIN_EXAMPLES = 3000
HELD_OUT_EXAMPLES = 300
DEFAULT_TRAIN_STEPS = 300


def train_wordpiece_tokenizer(
    texts: list[str],
    directory: Path,
    *,
    vocab_size: int = 2000,
    tokenizer_class: type | None = None,
):
    """Make a BERT-style WordPiece tokenizer for `texts` and save it with save_pretrained().

    The vocabulary is chosen deterministically: the special tokens, every character (alone
    and as a `##` continuation), then the most frequent words, ties in alphabetical order.
    (`tokenizers`' WordPiece trainer breaks its ties differently in every process, so the
    demo model, and every accuracy figure measured on it, would change from run to run.)
    `tokenizer_class`: the transformers fast tokenizer class to save it as (default
    `PreTrainedTokenizerFast`; `BertTokenizerFast` also emits token_type_ids)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    words: Counter[str] = Counter(
        word
        for text in texts
        for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text))
    )
    characters = sorted({c for word in words for c in word})
    vocab = list(SPECIAL_TOKENS) + characters + [f"##{c}" for c in characters]
    # Candidates: whole words, word beginnings and (as `##` pieces) word endings, by how many
    # words hold them: common stems and endings let unseen words split into known pieces.
    pieces: Counter[str] = Counter()
    for word, count in words.items():
        pieces[word] += count
        for cut in range(2, len(word)):
            pieces[word[:cut]] += count
            pieces[f"##{word[cut:]}"] += count
    known = set(vocab)
    ranked = sorted((p for p in pieces if p not in known), key=lambda p: (-pieces[p], p))
    vocab += ranked[: max(0, vocab_size - len(vocab))]
    tokenizer = Tokenizer(
        models.WordPiece({token: i for i, token in enumerate(vocab)}, unk_token="[UNK]")
    )
    tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = pre_tokenizer
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    tokenizer.decoder = decoders.WordPiece()
    fast = (tokenizer_class or PreTrainedTokenizerFast)(
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


def corpus(examples: list | None = None) -> list[str]:
    """Text to train the demo tokenizer on: the résumé lines and the training examples."""
    lines = list(RESUME_LINES) + [e.text for e in (examples or [])]
    return lines + [line.lower() for line in lines]


@dataclass(frozen=True)
class TrainedDemo:
    checkpoint: Path
    held_out_f1: float
    train_seconds: float
    steps: int


def encode_examples(tokenizer, examples: list, *, max_length: int = MAX_LENGTH):
    """Tokenize word-split examples. Every sub-token is labelled (a word's first with its
    label, the rest as its continuation), so the model is confident on all of them."""
    import torch

    label_ids = {label: i for i, label in enumerate(DEMO_LABELS)}
    encoded = tokenizer(
        [list(e.words) for e in examples],
        is_split_into_words=True,
        padding="max_length",
        truncation=True,
        max_length=max_length,
        return_tensors="pt",
    )
    labels = torch.full(encoded["input_ids"].shape, -100, dtype=torch.long)
    for row, example in enumerate(examples):
        previous = None
        for col, word in enumerate(encoded.word_ids(row)):
            if word is None:
                continue
            label = example.labels[word]
            if word == previous and label.startswith("B-"):
                label = "I-" + label[2:]
            labels[row, col] = label_ids[label]
            previous = word
    return encoded, labels


def word_predictions(tokenizer, examples: list, logits) -> list[list[str]]:
    """Word-level labels from token logits (first sub-token of each word)."""
    encoded = tokenizer(
        [list(e.words) for e in examples],
        is_split_into_words=True,
        truncation=True,
        max_length=MAX_LENGTH,
    )
    from onnxport.verify.evaluation import word_labels

    best = logits.argmax(-1)
    id2label = dict(enumerate(DEMO_LABELS))
    return [
        word_labels(encoded.word_ids(row), best[row], id2label, len(example.words))
        for row, example in enumerate(examples)
    ]


def held_out_f1(tokenizer, examples: list, run) -> float:
    """Entity F1 of `run` (named numpy inputs -> logits) on `examples`."""
    from onnxport.verify.evaluation import entity_f1

    encoded, _ = encode_examples(tokenizer, examples)
    inputs = {k: v.numpy() for k, v in encoded.items() if k in ("input_ids", "attention_mask")}
    logits = run(inputs)
    return entity_f1(
        [list(e.labels) for e in examples], word_predictions(tokenizer, examples, logits)
    )


def train_demo_model(
    directory: Path, *, steps: int = DEFAULT_TRAIN_STEPS, seed: int = 0
) -> TrainedDemo:
    """Train the demo tagger on synthetic résumé lines and save it to `directory`."""
    import time

    import torch
    from transformers import DistilBertConfig, DistilBertForTokenClassification
    from transformers.utils import logging as hf_logging

    from onnxport.demo.data import generate

    started = time.perf_counter()
    # One thread: on 2 cores shared with anything else, torch's second thread spin-waits and
    # a step takes ten times longer (measured: 3.4 s vs 0.4 s per step under load).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    train = generate(TRAIN_EXAMPLES, seed=seed)
    held_out = generate(HELD_OUT_EXAMPLES, seed=seed + 10_000)
    tokenizer = train_wordpiece_tokenizer(corpus(train), directory)
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
        architectures=["DistilBertForTokenClassification"],
    )
    torch.manual_seed(seed)
    model = DistilBertForTokenClassification(config)
    encoded, labels = encode_examples(tokenizer, train)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-3, total_steps=steps)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for step in range(steps):
        batch = torch.randint(0, len(train), (BATCH_SIZE,), generator=generator)
        loss = model(
            input_ids=encoded["input_ids"][batch],
            attention_mask=encoded["attention_mask"][batch],
            labels=labels[batch],
        ).loss
        loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        if step % 100 == 0:
            logger.info("demo training step %d/%d: loss %.3f", step, steps, loss.item())
    model.eval()
    torch.set_num_threads(threads)

    def run_torch(inputs):
        with torch.inference_mode():
            return model(**{k: torch.from_numpy(v) for k, v in inputs.items()}).logits.numpy()

    f1 = held_out_f1(tokenizer, held_out, run_torch)
    hf_logging.disable_progress_bar()  # a one-file checkpoint: no "Writing model shards" bar
    model.save_pretrained(directory, safe_serialization=True)
    seconds = time.perf_counter() - started
    logger.info("demo model trained in %.0f s: held-out entity F1 %.3f", seconds, f1)
    return TrainedDemo(directory, f1, seconds, steps)


def build_demo_checkpoint(cache_dir: Path | None = None) -> Path:
    """The demo checkpoint directory, trained on first use and reused afterwards."""
    target = (cache_dir or cache_root()) / f"demo-checkpoint-v{DEMO_VERSION}"
    if (target / "model.safetensors").is_file():
        return target
    logger.info("training the demo model into %s (once)", target)
    work = target.with_name(f".{target.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:6]}")
    work.mkdir(parents=True)
    try:
        trained = train_demo_model(work)
        (work / "training_metrics.json").write_text(
            json.dumps(
                {
                    "held_out_entity_f1": trained.held_out_f1,
                    "train_seconds": trained.train_seconds,
                    "steps": trained.steps,
                }
            ),
            encoding="utf-8",
        )
        if target.exists():
            shutil.rmtree(target)
        work.rename(target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target
