"""Classification by retrieval: the label the nearest gallery items agree on."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from ._types import Hit


@dataclass(frozen=True)
class Vote:
    """What the neighbours say: `label` (None when none of them has one), the votes of each label
    (most first), and `confidence`, the winner's share of the labelled neighbours (0 when none)."""

    label: str | None
    votes: dict[str, int]
    confidence: float


def vote(hits: Sequence[Hit]) -> Vote:
    """The label most of the labelled hits have; a tie goes to the label of the nearest of the tied
    (hits come nearest first). Unlabelled hits do not vote. With one hit, its label: the nearest
    neighbour rule that `simsearch evaluate`'s match thresholds are calibrated for."""
    votes: dict[str, int] = {}
    for h in hits:   # insertion order is the order of each label's nearest member
        if h.label is not None:
            votes[h.label] = votes.get(h.label, 0) + 1
    if not votes:
        return Vote(None, {}, 0.0)
    ranked = sorted(votes, key=votes.__getitem__, reverse=True)   # stable: ties keep nearest-first order
    return Vote(ranked[0], {lb: votes[lb] for lb in ranked}, votes[ranked[0]] / sum(votes.values()))
