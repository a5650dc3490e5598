"""Name -> builder registry for the model zoo (the timm pattern), and architectures of a user's own."""
from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import sys
import warnings
from pathlib import Path
from typing import Callable, Iterable

from torch import nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}
_SOURCES: dict[str, str] = {}   # architecture -> the module or file of a user's that registered it
_IMPORTED: dict[str, str] = {}  # module name or resolved file path -> what it was imported as


class ModelModuleError(Exception):
    """A module of the user's architectures could not be imported; the message names it and says why."""


class UnknownModel(KeyError, ValueError):
    """create_model's error for a name no architecture is registered under: a KeyError (as a dict lookup
    raises; callers catch that) and a ValueError (a bad argument), whose message reads plainly (a KeyError's
    alone is shown in quotes) and names the nearest registered names."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a builder under its function name; the builder returns an embedding network.

    A builder of a user's module imported as any module is (not through import_models) is recorded as registered
    by that module (model_source; artifacts name it). The same function registered again by the same module (a
    notebook cell run twice, importlib.reload) replaces the old one with a warning; another function of that name
    is refused (ValueError)."""
    name = getattr(fn, "__name__", None)
    if not isinstance(name, str) or not callable(fn):
        raise TypeError(f"register_model takes a builder function, registered under its name; got {fn!r} (a "
                        "functools.partial has none: define a function that calls it)")
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", name)
    old = _MODELS.get(name)
    if old is not None:
        if (getattr(old, "__module__", None), getattr(old, "__qualname__", None)) != (module, qualname):
            raise ValueError(f"model {name!r} is registered twice")
        warnings.warn(f"model {name!r} registered again by {module}.{qualname}: the new builder replaces the old "
                      "one", stacklevel=2)
    _MODELS[name] = fn
    if isinstance(module, str) and module != "__main__" and module.split(".")[0] != __name__.split(".")[0]:
        _SOURCES.setdefault(name, module)   # import_models records a file's path over it
    return fn


def list_models() -> list[str]:
    """Names of every registered architecture, sorted."""
    return sorted(_MODELS)


def is_model(name: str) -> bool:
    return name in _MODELS


def create_model(name: str, **kwargs) -> nn.Module:
    """Build the registered architecture `name`; kwargs go to its builder (in_chans, act, stride, ...).

    Every built model maps (N, in_chans, H, W) float images to (N, embed_dim) embeddings and has
    the attributes `embed_dim` and `in_chans`, and `simsearch_built_as`: (name, kwargs), what built it
    (save_artifact names it when the artifact's metadata would build another network).

    Raises UnknownModel, a KeyError and a ValueError, for a name not registered, naming the nearest ones.
    """
    try:
        builder = _MODELS[name]
    except KeyError:
        near = difflib.get_close_matches(str(name), list_models(), n=3, cutoff=0.6)
        raise UnknownModel(f"unknown model {name!r}" + (f" (nearest: {', '.join(near)})" if near else "")
                           + f"; known: {', '.join(list_models())}") from None
    net = builder(**kwargs)
    net.simsearch_built_as = (name, dict(kwargs))
    return net


def import_models(specs: str | Iterable[str]) -> list[str]:
    """Import the modules that register a user's own architectures with `@register_model`, so that
    `create_model`, training and artifacts know them. `specs`: dotted module names (importable from
    sys.path) or paths to .py files, as a list or one comma-separated string. Importing one again does
    nothing. Returns the architectures these imports registered; raises ModelModuleError naming the spec."""
    if isinstance(specs, str):
        specs = [s.strip() for s in specs.split(",")]
    new: list[str] = []
    for spec in (s for s in specs if s):
        is_file = spec.endswith(".py") or "/" in spec or "\\" in spec
        key = str(Path(spec).expanduser().resolve()) if is_file else spec
        if key in _IMPORTED:
            continue
        before = set(_MODELS)
        if is_file and not Path(key).is_file():
            raise ModelModuleError(f"model module {spec!r}: no such file")
        # a file's module is named after its stem and its path, so that two users' models.py never collide
        module_name = (f"simsearch_user_models.{Path(key).stem}_{hashlib.sha1(key.encode()).hexdigest()[:8]}"
                       if is_file else spec)
        try:
            if is_file:
                module_spec = importlib.util.spec_from_file_location(module_name, key)
                module = importlib.util.module_from_spec(module_spec)
                sys.modules[module_name] = module
                module_spec.loader.exec_module(module)
            else:
                importlib.import_module(spec)
        except Exception as exc:  # the user's code: any error is theirs to see, with where it came from
            for name in set(_MODELS) - before:  # half-imported: forget what it registered
                del _MODELS[name]
            sys.modules.pop(module_name, None)
            raise ModelModuleError(f"cannot import model module {spec!r}: {type(exc).__name__}: {exc}") from exc
        _IMPORTED[key] = spec
        added = sorted(set(_MODELS) - before)
        _SOURCES.update({name: key for name in added})
        new += added
    return new


def model_source(name: str) -> str | None:
    """The module name or .py file that registered architecture `name` through import_models; None for
    the built-in zoo (and for names not registered)."""
    return _SOURCES.get(name)
