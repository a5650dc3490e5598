"""PDDM: the Position-Dependent Deep Metric unit (Huang, Loy and Tang, NeurIPS 2016).

A learned similarity between two embeddings that looks at both where the pair lies (the mean)
and how it differs (the absolute difference), so that it can adapt to the local density of the
feature space. Used by training (hard quadruplet mining and the double-header hinge loss, see
training/_pddm.py) and by search (re-scoring the top FAISS candidates). docs/pddm.md has the
formulation and the choices made where the paper leaves details open.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ._artifact import ArtifactError

HEAD_NAME = "pddm"


class PDDM(nn.Module):
    """S(f_i, f_j): a scalar similarity score, symmetric in i and j, higher = more similar.

    u1 = |f_i - f_j|, v1 = (f_i + f_j) / 2 (on L2-normalised embeddings);
    u = L2norm(ReLU(W_u u1 + b_u)), v = L2norm(ReLU(W_v v1 + b_v));
    c = ReLU(W_c [u; v] + b_c); S = W_s c + b_s.
    Each L2norm is scaled by sqrt(its size) (unit RMS): see docs/pddm.md.
    """

    def __init__(self, embed_dim: int = 256, hidden: int = 128):
        super().__init__()
        self.embed_dim, self.hidden = int(embed_dim), int(hidden)
        self.fc_u = nn.Linear(self.embed_dim, self.hidden)
        self.fc_v = nn.Linear(self.embed_dim, self.hidden)
        self.fc_c = nn.Linear(2 * self.hidden, self.hidden)
        self.fc_s = nn.Linear(self.hidden, 1)

    @property
    def build_args(self) -> dict[str, Any]:
        """The constructor arguments, as stored in an artifact's meta.heads["pddm"]."""
        return {"embed_dim": self.embed_dim, "hidden": self.hidden}

    def forward(self, f_i: torch.Tensor, f_j: torch.Tensor) -> torch.Tensor:
        """Scores of the pairs (f_i[..., :], f_j[..., :]): shapes broadcast, the last is the
        embedding; returns the broadcast shape without it. Inputs are L2-normalised here."""
        # Unit vectors have entries of about 1/sqrt(dim); every L2 normalisation here is scaled by
        # sqrt(dim) (unit RMS, entries of about 1) so that the layers start well conditioned. A fixed
        # factor: the function class is that of plain L2 normalisation.
        f_i, f_j = _unit_rms(f_i.float()), _unit_rms(f_j.float())
        u = _unit_rms(F.relu(self.fc_u((f_i - f_j).abs())))
        v = _unit_rms(F.relu(self.fc_v((f_i + f_j) / 2)))
        c = F.relu(self.fc_c(torch.cat(torch.broadcast_tensors(u, v), dim=-1)))
        return self.fc_s(c).squeeze(-1)

    def pairwise(self, features: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
        """The symmetric (N, N) matrix of scores between all rows of `features` (N, dim). Scores only
        the pairs i <= j (S is symmetric), `chunk` pairs at a time to bound memory. Differentiable;
        wrap in torch.no_grad() when only ranking or mining."""
        n = len(features)
        a, b = torch.triu_indices(n, n, 0, device=features.device)
        upper = torch.cat([self(features[a[s:s + chunk]], features[b[s:s + chunk]])
                           for s in range(0, len(a), chunk)]) if n else features.new_zeros(0)
        out = features.new_zeros((n, n), dtype=upper.dtype)
        out = out.index_put((a, b), upper).index_put((b, a), upper)
        return out

    @torch.inference_mode()
    def rerank(self, query_vectors: np.ndarray | torch.Tensor,
               candidate_vectors: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Re-score search candidates. query_vectors (Q, dim), candidate_vectors (Q, K, dim)
        (or (dim,) and (K, dim) for one query). Returns (order, scores): for each query the
        candidate positions sorted by descending PDDM score (stable for ties) and the scores in
        the candidates' original order, as int64 and float32 arrays shaped like the candidates."""
        single = np.ndim(query_vectors) == 1
        q = torch.as_tensor(np.asarray(query_vectors, dtype=np.float32))
        c = torch.as_tensor(np.asarray(candidate_vectors, dtype=np.float32))
        if single:
            q, c = q[None], c[None]
        if q.ndim != 2 or c.ndim != 3 or c.shape[0] != q.shape[0] or q.shape[1] != c.shape[2] \
                or q.shape[1] != self.embed_dim:
            raise ValueError(f"rerank wants queries (Q, {self.embed_dim}) and candidates (Q, K, {self.embed_dim}); "
                             f"got {tuple(q.shape)} and {tuple(c.shape)}")
        device = self.fc_s.weight.device
        was_training = self.training
        self.eval()
        try:
            scores = self(q.to(device)[:, None, :], c.to(device)).float().cpu()
        finally:
            self.train(was_training)
        order = torch.sort(scores, dim=1, descending=True, stable=True).indices
        order_np, scores_np = order.numpy().astype(np.int64), scores.numpy().astype(np.float32)
        return (order_np[0], scores_np[0]) if single else (order_np, scores_np)

    @classmethod
    def from_state(cls, build_args: Mapping[str, Any], state: Mapping[str, torch.Tensor]) -> "PDDM":
        """A PDDM (eval mode) from an artifact head: meta.heads["pddm"] and its weights."""
        kwargs = {k: build_args[k] for k in ("embed_dim", "hidden") if k in build_args}
        try:
            head = cls(**kwargs)
            head.load_state_dict(dict(state))
        except (TypeError, ValueError, RuntimeError) as exc:
            raise ArtifactError(f"the {HEAD_NAME!r} head does not fit {kwargs}: {exc}") from exc
        return head.eval()

    @classmethod
    def from_artifact(cls, artifact) -> "PDDM | None":
        """The artifact's PDDM head (eval mode, on the model's device), or None when it has none."""
        if HEAD_NAME not in artifact.meta.heads or not artifact.heads.get(HEAD_NAME):
            return None
        head = cls.from_state(artifact.meta.heads[HEAD_NAME], artifact.heads[HEAD_NAME])
        try:
            device = next(artifact.model.parameters()).device
        except StopIteration:
            device = torch.device("cpu")
        return head.to(device)


def _unit_rms(x: torch.Tensor) -> torch.Tensor:
    """L2-normalise the last axis, times sqrt(its size): entries of root mean square 1 (0 stays 0)."""
    return F.normalize(x, dim=-1) * (x.shape[-1] ** 0.5)
