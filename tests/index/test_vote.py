"""index.vote: the label the nearest items agree on."""
from __future__ import annotations

import pytest

from index import Hit, vote


def _hits(*labels: str | None) -> list[Hit]:
    """Hits nearest first, with these labels."""
    return [Hit(f"i{n}", 1 - n / 10, n / 10, label, {}) for n, label in enumerate(labels)]


def test_the_most_common_label_wins_and_a_tie_goes_to_the_nearest_of_the_tied():
    assert vote(_hits("cat", "dog", "dog")).label == "dog"
    tied = vote(_hits("dog", "cat", "cat", "dog", "bird"))
    assert (tied.label, tied.votes, tied.confidence) == ("dog", {"dog": 2, "cat": 2, "bird": 1}, pytest.approx(0.4))
    assert vote(_hits("bird", "cat", "cat", "dog", "dog")).label == "cat"


def test_unlabelled_items_abstain_and_with_no_label_the_answer_is_unknown():
    assert vote(_hits(None, "cat", None)).votes == {"cat": 1} and vote(_hits(None, "cat")).confidence == 1.0
    for hits in ([], _hits(None, None)):
        assert (vote(hits).label, vote(hits).votes, vote(hits).confidence) == (None, {}, 0.0)
