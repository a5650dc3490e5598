"""PDDM training: hard quadruplet mining with the PDDM score and the joint loss of Huang et al. 2016.

loss = hinge_weight * E_m + lam * E_e + pair_weight * E_p + embedding_weight * L_emb (defaults 0.1, 0.1,
1, 1), where on the L2-normalised embeddings f of one mini-batch:

* the miner scores every pair with the PDDM (no gradient) and, for every class in the batch, takes
  the positive pair (i, j) with the lowest score and, for it, the negative k of i and the negative l
  of j with the highest scores (per="batch": the paper's single hardest quadruplet of the batch);
* E_m, the double-header hinge on the PDDM scores of the mined quadruplets:
  max(0, margin + S(i,k) - S(i,j)) + max(0, margin + S(j,l) - S(i,j)), averaged over quadruplets
  (the paper's alpha);
* E_e, the same double header on the features with squared Euclidean distances D:
  max(0, feature_margin + D(i,j) - D(i,k)) + max(0, feature_margin + D(i,j) - D(j,l)) (the paper's
  embedding loss and beta);
* E_p, a class-balanced logistic loss of S against "same class" on all pairs of a random subset of
  the batch (our addition: it calibrates S on ordinary pairs, which re-ranking needs);
* L_emb, the trainer's Multi-Similarity loss on the embeddings.

Warm-up: for the first warmup_steps training steps only L_emb is used (the PDDM is untouched), then
E_e's weight ramps from 0 to lam over the next warmup_steps. Why these weights and the warm-up: see
docs/pddm.md ("What it took to make it learn").

E_m and E_p train the PDDM on detached features by default (detach=True): the features are shaped by
E_e on the PDDM-mined quadruplets and by L_emb. With detach=False (fully end to end) E_m's gradient
reaches the network through the PDDM, and at Hybrid-1's start it is about 1000 times the
Multi-Similarity gradient and follows the untrained PDDM (measured; see docs/pddm.md).

docs/pddm.md gives the reasons for each choice.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model import PDDM

from ._losses import MetricLoss, MultiSimilarity, register_loss

_MINING = ("class", "batch")


@torch.no_grad()
def mine_quadruplets(scores: torch.Tensor, labels: torch.Tensor, per: str = "class") -> torch.Tensor:
    """Hard quadruplets (i, j, k, l) from an (N, N) PDDM score matrix: (i, j) is the positive pair
    (same label, i < j) with the lowest score among the positive pairs of its class (per="class": one
    quadruplet per class with a positive pair and a negative; per="batch": one for the whole batch),
    k the negative of i and l the negative of j with the highest scores. Returns int64 (Q, 4), Q = 0
    when the batch has no positive pair or no negative."""
    if per not in _MINING:
        raise ValueError(f"per must be one of {_MINING}, got {per!r}")
    n = len(labels)
    labels = labels.to(scores.device)
    same = labels[:, None] == labels[None, :]
    upper = torch.ones(n, n, dtype=torch.bool, device=scores.device).triu(1)
    pos = same & upper
    s = scores.float()
    neg_scores = s.masked_fill(same, float("-inf"))  # negatives only
    groups = [pos] if per == "batch" else [pos & (labels[:, None] == c) for c in torch.unique(labels)]
    quads = []
    for mask in groups:
        if not mask.any():
            continue
        flat = s.masked_fill(~mask, float("inf")).flatten().argmin()
        i, j = divmod(int(flat), n)
        if torch.isinf(neg_scores[i]).all():  # no negative in the batch
            continue
        quads.append((i, j, int(neg_scores[i].argmax()), int(neg_scores[j].argmax())))
    return torch.tensor(quads, dtype=torch.long).reshape(-1, 4)


class PDDMLoss(MetricLoss):
    """The joint PDDM objective (see the module docstring); owns the PDDM, stored as head "pddm"."""

    needs_pairs = True

    def __init__(self, embed_dim: int = 256, hidden: int = 128, margin: float = 0.5,
                 feature_margin: float = 0.5, lam: float = 0.1, pair_weight: float = 1.0, pair_sample: int = 64, per: str = "class",
                 embedding_loss: nn.Module | None = None, embedding_weight: float = 1.0, detach: bool = True,
                 warmup_steps: int = 200, hinge_weight: float = 0.1):
        super().__init__()
        if per not in _MINING:
            raise ValueError(f"per must be one of {_MINING}, got {per!r}")
        self.pddm = PDDM(embed_dim, hidden)
        self.margin, self.feature_margin, self.lam = float(margin), float(feature_margin), float(lam)
        self.pair_weight, self.pair_sample, self.per = float(pair_weight), int(pair_sample), per
        self.embedding_loss = embedding_loss if embedding_loss is not None else MultiSimilarity()
        self.embedding_weight = float(embedding_weight)
        self.detach = bool(detach)
        self.warmup_steps = int(warmup_steps)
        self.hinge_weight = float(hinge_weight)
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))  # training steps seen
        #: the parts of the last forward, as floats (for logs and tests)
        self.last: dict[str, float] = {}

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.steps += 1
        if int(self.steps) <= self.warmup_steps:  # the embedding loss alone, the PDDM untouched
            l_emb = self.embedding_loss(embeddings, labels)
            self.last = {"embedding": float(l_emb.detach()), "total": float(l_emb.detach()), "quadruplets": 0.0}
            return self.embedding_weight * l_emb
        f = F.normalize(embeddings.float(), dim=1)
        with torch.no_grad():
            scores = self.pddm.pairwise(f.detach())
        quads = mine_quadruplets(scores, labels, self.per).to(f.device)
        zero = f.sum() * 0.0
        if len(quads):
            i, j, k, l = quads.unbind(1)
            g = f.detach() if self.detach else f
            s_ij, s_ik, s_jl = self.pddm(g[i], g[j]), self.pddm(g[i], g[k]), self.pddm(g[j], g[l])
            e_m = (F.relu(self.margin + s_ik - s_ij) + F.relu(self.margin + s_jl - s_ij)).mean()
            d = lambda a, b: (f[a] - f[b]).pow(2).sum(1)  # noqa: E731
            d_ij = d(i, j)
            e_e = (F.relu(self.feature_margin + d_ij - d(i, k)) + F.relu(self.feature_margin + d_ij - d(j, l))).mean()
        else:
            e_m = e_e = zero
        e_p = self._pair_loss(f.detach() if self.detach else f, labels) if self.pair_weight else zero
        l_emb = self.embedding_loss(embeddings, labels) if self.embedding_weight else zero
        ramp = self._ramp()
        total = self.hinge_weight * e_m + ramp * self.lam * e_e + self.pair_weight * e_p + self.embedding_weight * l_emb
        parts = {"pddm_hinge": e_m, "feature_hinge": e_e, "pair_logistic": e_p, "embedding": l_emb, "total": total}
        self.last = {k: float(v.detach()) for k, v in parts.items()} | {"quadruplets": float(len(quads))}
        return total

    def _ramp(self) -> float:
        """The weight factor of E_e: 0 -> 1 linearly over the warmup_steps training steps after the warm-up."""
        if self.warmup_steps <= 0:
            return 1.0
        return min(1.0, max(0.0, float(self.steps) - self.warmup_steps) / self.warmup_steps)

    def _pair_loss(self, f: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Class-balanced logistic loss of S against the same-class indicator over the pairs i < j of a
        random subset of at most pair_sample rows."""
        idx = torch.randperm(len(f), device=f.device)[:self.pair_sample]
        a, b = torch.triu_indices(len(idx), len(idx), 1, device=f.device)
        a, b = idx[a], idx[b]
        s = self.pddm(f[a], f[b])
        same = labels.to(f.device)[a] == labels.to(f.device)[b]
        parts = [F.softplus(-s[same]).mean()] if same.any() else []
        parts += [F.softplus(s[~same]).mean()] if (~same).any() else []
        return torch.stack(parts).mean() if parts else f.sum() * 0.0

    def heads(self) -> dict[str, nn.Module]:
        heads = {"pddm": self.pddm}
        if isinstance(self.embedding_loss, MetricLoss):
            heads.update(self.embedding_loss.heads())
        return heads

    def head_meta(self) -> dict[str, dict]:
        meta = {"pddm": {"type": "pddm", **self.pddm.build_args, "margin": self.margin,
                         "feature_margin": self.feature_margin, "lam": self.lam, "pair_weight": self.pair_weight, "per": self.per}}
        if isinstance(self.embedding_loss, MetricLoss):
            meta.update(self.embedding_loss.head_meta())
        return meta


@register_loss("pddm")
def _pddm(embed_dim: int, num_classes: int, hidden: int = 128, margin: float = 0.5, feature_margin: float = 0.5,
          lam: float = 0.1, hinge_weight: float = 0.1, pair_weight: float = 1.0, pair_sample: int = 64,
          per: str = "class", embedding_weight: float = 1.0, detach: bool = True, warmup_steps: int = 200,
          alpha: float = 2.0, beta: float = 50.0, base: float = 0.5, epsilon: float = 0.1, **_) -> MetricLoss:
    """The joint PDDM loss; alpha, beta, base and epsilon are the Multi-Similarity settings, as for "ms"."""
    return PDDMLoss(embed_dim, hidden, margin, feature_margin, lam, pair_weight, pair_sample, per,
                    MultiSimilarity(alpha, beta, base, epsilon), embedding_weight, detach, warmup_steps, hinge_weight)
