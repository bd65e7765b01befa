"""Sample text: real-looking résumé lines, repeatable, cycling."""

from __future__ import annotations

import pytest

from onnxport.samples import RESUME_LINES, sample_texts


def test_count_and_content() -> None:
    texts = sample_texts(3)
    assert texts == list(RESUME_LINES[:3])


def test_each_text_joins_consecutive_lines() -> None:
    (text,) = sample_texts(1, min_lines=3, offset=2)
    assert text == " ".join(RESUME_LINES[2:5])


def test_lines_cycle_past_the_end() -> None:
    n = len(RESUME_LINES)
    texts = sample_texts(2, min_lines=2, offset=n - 1)
    assert texts[0] == f"{RESUME_LINES[-1]} {RESUME_LINES[0]}"
    assert texts[1] == f"{RESUME_LINES[1]} {RESUME_LINES[2]}"


@pytest.mark.parametrize("offset", [5, 100])
def test_an_offset_past_the_end_wraps_around(offset: int) -> None:
    n = len(RESUME_LINES)
    assert sample_texts(4, min_lines=2, offset=offset + n) == sample_texts(
        4, min_lines=2, offset=offset
    )
    assert sample_texts(1, offset=offset) == [RESUME_LINES[offset % n]]


def test_texts_differ_by_offset_and_are_not_empty() -> None:
    assert sample_texts(2, offset=0) != sample_texts(2, offset=1)
    assert all(text.strip() for text in sample_texts(len(RESUME_LINES) * 2))
    assert sample_texts(0) == []
