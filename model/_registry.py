"""Name -> builder registry for the model zoo (the timm pattern)."""
from __future__ import annotations

from typing import Callable

from torch import nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a builder under its function name; the builder returns an embedding network."""
    name = fn.__name__
    if name in _MODELS:
        raise ValueError(f"model {name!r} is registered twice")
    _MODELS[name] = fn
    return fn


def list_models() -> list[str]:
    """Names of every registered architecture, sorted."""
    return sorted(_MODELS)


def is_model(name: str) -> bool:
    return name in _MODELS


def create_model(name: str, **kwargs) -> nn.Module:
    """Build the registered architecture `name`; kwargs go to its builder (in_chans, act, stride, ...).

    Every built model maps (N, in_chans, H, W) float images to (N, embed_dim) embeddings and has
    the attributes `embed_dim` and `in_chans`.
    """
    try:
        builder = _MODELS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(list_models())}") from None
    return builder(**kwargs)
