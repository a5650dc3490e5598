"""A user's own architecture and loss, as .py files they would write: what SIMSEARCH_MODEL_MODULES imports in
tests."""
from __future__ import annotations

from pathlib import Path

SOURCE = '''
"""An architecture of a user's own: a small plain CNN, registered under its builder's name."""
from torch import nn

from model import register_model


class _SmallCNN(nn.Module):
    def __init__(self, in_chans, embed_dim):
        super().__init__()
        self.in_chans, self.embed_dim = in_chans, embed_dim
        self.body = nn.Sequential(nn.Conv2d(in_chans, 16, 3, 2, 1), nn.GELU(), nn.Conv2d(16, 32, 3, 2, 1),
                                  nn.GELU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, embed_dim))

    def forward(self, x):
        return self.body(x)


@register_model
def NAME(in_chans=3, embed_dim=64, **kwargs):
    return _SmallCNN(in_chans, embed_dim)
'''


def write_user_models(folder: Path, arch: str = "users_cnn", stem: str = "my_models") -> Path:
    """Write a module registering `arch` as folder/<stem>.py; returns its path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stem}.py"
    path.write_text(SOURCE.replace("def NAME(", f"def {arch}("))
    return path


LOSS_SOURCE = '''
"""A loss of a user's own: pytorch-metric-learning's triplet margin loss with its hard-triplet miner."""
from pytorch_metric_learning import losses, miners

from training import MetricLoss, register_loss


class _Triplet(MetricLoss):
    needs_pairs = True  # class-balanced batches

    def __init__(self, margin):
        super().__init__()
        self.loss, self.miner = losses.TripletMarginLoss(margin=margin), miners.TripletMarginMiner(margin=margin)

    def forward(self, embeddings, labels):
        return self.loss(embeddings, labels, self.miner(embeddings, labels))


@register_loss("users_triplet")
def _users_triplet(embed_dim, num_classes, margin=0.1, **_):
    return _Triplet(margin)
'''


def write_user_loss(folder: Path, stem: str = "my_losses") -> Path:
    """Write a module registering the loss "users_triplet" as folder/<stem>.py; returns its path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stem}.py"
    path.write_text(LOSS_SOURCE)
    return path
