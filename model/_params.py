from __future__ import annotations

from pathlib import Path

from torch import nn

WEIGHTS_DIR = Path(__file__).parent / "weights"   # the bundled artifacts


def count_parameters(model: nn.Module) -> int:
    """Parameters plus BatchNorm running mean and variance: how Keras, and so the paper, counts."""
    params = sum(p.numel() for p in model.parameters())
    stats = sum(b.numel() for n, b in model.named_buffers() if n.endswith(("running_mean", "running_var")))
    return params + stats


def default_artifact_path(dataset: str = "cifar10") -> Path:
    """The bundled Hybrid-1 artifact trained on `dataset` (cifar10, fashion-mnist or mnist)."""
    return WEIGHTS_DIR / f"hybrid1-{dataset}.safetensors"
