"""The offline tokenizer trainer that the demo and the test models share.

The demo's model training (`build_demo_checkpoint`) is exercised by the demo's own tests; this
file covers the part every tiny test checkpoint depends on.
"""

from __future__ import annotations

from pathlib import Path

from onnxport.demo.training import SPECIAL_TOKENS, corpus, train_wordpiece_tokenizer
from onnxport.samples import RESUME_LINES


def test_corpus_holds_the_resume_lines_in_two_cases() -> None:
    texts = corpus()
    assert set(RESUME_LINES) <= set(texts)
    assert {line.lower() for line in RESUME_LINES} <= set(texts)


def test_trained_tokenizer_is_saved_and_reloads_offline(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    trained = train_wordpiece_tokenizer(corpus(), tmp_path, vocab_size=2000)
    assert (tmp_path / "tokenizer.json").is_file()
    assert [trained.convert_ids_to_tokens(i) for i in range(5)] == list(SPECIAL_TOKENS)

    loaded = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    encoded = loaded(["Skills: Python, ONNX Runtime."], ["Jane Doe"])
    ids = encoded["input_ids"][0]
    assert ids[0] == loaded.cls_token_id
    assert ids.count(loaded.sep_token_id) == 2
    assert loaded.unk_token_id not in ids  # every word of the corpus is known
    decoded = loaded.decode(ids, skip_special_tokens=True)
    assert "onnx runtime" in decoded
    assert decoded.endswith("jane doe")
    assert (
        encoded["input_ids"]
        == trained(["Skills: Python, ONNX Runtime."], ["Jane Doe"])["input_ids"]
    )


def test_padding_uses_the_pad_token(tmp_path: Path) -> None:
    trained = train_wordpiece_tokenizer(corpus(), tmp_path, vocab_size=2000)
    encoded = trained(["Jane Doe"], padding="max_length", max_length=10)
    assert encoded["input_ids"][0][-1] == trained.pad_token_id == 0
    assert encoded["attention_mask"][0][-1] == 0
