"""parse_option: the option an answer settles on; the article "A" and the pronoun "I" are not votes."""

from __future__ import annotations

import pytest

from defenses.options import parse_option


@pytest.mark.parametrize(
    ("text", "option"),
    [
        ("The answer I believe is (C)", "C"),
        ("Answer: I believe it is (C)", "C"),
        ("answer - I would say (C)", "C"),
        ("The answer, I think, is (C).", "C"),
        ("Answer: A good choice is (B)", "B"),
        ("My answer: I think B", None),
        ("answer: A good one", None),
        ("The final answer I cannot give.", None),
    ],
)
def test_the_article_and_the_pronoun_are_not_options(text: str, option: str | None) -> None:
    assert parse_option(text) == option


@pytest.mark.parametrize(
    ("text", "option"),
    [
        ("Answer: (B)", "B"),
        ("the answer is C", "C"),
        ("The answer is A.", "A"),
        ("The answer is A", "A"),
        ("answer: A", "A"),
        ("The answer is I.", "I"),
        ("Answer: (I)", "I"),
        ("Answer: A)", "A"),
        ("Answer: **B**", "B"),
        ("The answer is A because it fits.", "A"),
        ("The answer A is right.", "A"),
        ("The answer is option D.", "D"),
        ("The answer is option A, clearly", "A"),
        ("The correct answer is B, Canberra.", "B"),
        ("The answer would be B", "B"),
        ("The answer is\nB", "B"),
        ("answer B", "B"),
        ("The answer is: C", "C"),
        ("I believe it is (C)", "C"),
        ("A good answer is (B)", "B"),
        ("Reading it closely, the passage supports option B. Answer: (B)", "B"),
        ("Answer: (B) is what I said first; on reflection the answer is C", "C"),
        ("No option here.", None),
        ("the answer is island", None),
    ],
)
def test_stated_and_bracketed_options(text: str, option: str | None) -> None:
    assert parse_option(text) == option


def test_labels_limit_the_options() -> None:
    assert parse_option("Answer: E", labels="ABCD") is None
    assert parse_option("Answer: (E), or (B)", labels="ABCD") == "B"
