"""The model artifact: one .safetensors file, weights plus a JSON metadata header. Never unpickles."""
from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Literal, get_args

import torch
from pydantic import BaseModel, Field, ValidationError, model_validator
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ._registry import create_model, is_model, list_models

FORMAT = "simsearch-artifact/1"
# The metadata fields that change how an image is embedded, which this version applies. A field of this kind
# added later goes into an artifact's `requires`, so that a version from before it refuses the file instead of
# embedding without it under the same model id (a gallery would then mix two models' vectors).
KNOWN_REQUIREMENTS = ("tta",)
_META_KEY = "simsearch"
_MODEL_PREFIX = "model."


# Test-time augmentations an artifact can ask for (model.embed_tensor computes them).
TTA = Literal["none", "hflip"]
TTA_MODES: tuple[str, ...] = get_args(TTA)


class ArtifactError(ValueError):
    """The file is not a usable simsearch artifact; the message says why."""


class ArtifactMeta(BaseModel):
    """Everything needed to use a model, stored in the artifact's header."""

    format: str = FORMAT
    name: str = Field(description="human name, e.g. hybrid1-cifar10")
    arch: str = Field(description="registered architecture name")
    arch_kwargs: dict[str, Any] = Field(default_factory=dict, description="builder arguments besides in_chans")
    arch_source: str | None = Field(None, description="for an architecture of the user's own: the module or .py "
                                                      "file that registered it (SIMSEARCH_MODEL_MODULES)")
    in_chans: int = Field(3, ge=1)
    image_size: int = Field(32, ge=1)
    mean: list[float] = Field(default_factory=lambda: [0.5, 0.5, 0.5])
    std: list[float] = Field(default_factory=lambda: [0.5, 0.5, 0.5])
    embed_dim: int = Field(256, ge=1)
    class_names: list[str] = Field(default_factory=list)
    training: dict[str, Any] = Field(default_factory=dict, description="data and recipe it was trained with")
    metrics: dict[str, Any] = Field(default_factory=dict, description="evaluation scores")
    heads: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="extra heads stored beside the model, name -> build arguments")
    tta: TTA = Field(
        "none", description="test-time augmentation of every embedding: 'hflip' averages it with the embedding "
                            "of the mirrored image (twice the compute); see model.embed_tensor")
    requires: list[str] = Field(
        default_factory=list, description="the fields of this metadata a reader must apply to embed as the "
                                          "writer did (written by save: 'tta' when it is not 'none'); a reader "
                                          "that does not know one refuses the artifact rather than embed otherwise")

    @model_validator(mode="after")
    def _one_mean_and_std_per_channel(self) -> "ArtifactMeta":
        if not len(self.mean) == len(self.std) == self.in_chans:
            raise ValueError(f"mean {self.mean} and std {self.std} must give one value per channel each "
                             f"(in_chans={self.in_chans})")
        if not all(s > 0 and math.isfinite(s) for s in self.std) or not all(math.isfinite(m) for m in self.mean):
            # pixels are divided by std: 0 would give infinite inputs, every embedding alike
            raise ValueError(f"std {self.std} must be positive and mean {self.mean} finite")
        return self

    def build(self) -> nn.Module:
        """An untrained model of this artifact's architecture."""
        return create_model(self.arch, in_chans=self.in_chans, embed_dim=self.embed_dim, **self.arch_kwargs)


class Artifact:
    """A loaded artifact: metadata, the embedding model (eval mode) and any extra head weights.

    `model` is the bare network: it gives the artifact's vectors only for input made as Embedder makes it,
    which is what to use (Embedder(artifact).embed, or .embed_arrays for uint8 pixels). Calling `model`
    yourself needs all of: pixels as model.to_model_array makes them (uint8 (N, C, S, S), meta.in_chans and
    meta.image_size), as floats x / 255, then (x - meta.mean) / meta.std per channel; the test-time
    augmentation meta.tta (embed_tensor(artifact.model, x, artifact.meta.tta) does it); and each row
    L2-normalised (torch.nn.functional.normalize). Plain x / 255 input gives other vectors, not a little off
    them: a mean cosine of 0.25 to the right ones for the bundled CIFAR-10 model on 200 CIFAR-10 images."""

    def __init__(self, meta: ArtifactMeta, model: nn.Module, heads: dict[str, dict[str, torch.Tensor]],
                 sha256: str):
        self.meta, self.model, self.heads, self.sha256 = meta, model, heads, sha256

    @property
    def model_id(self) -> str:
        """Identifies the weights: the artifact name plus the first 12 hex digits of the file's SHA-256."""
        return f"{self.meta.name}@{self.sha256[:12]}"


def save_artifact(path: str | os.PathLike, model: nn.Module, meta: ArtifactMeta,
                  heads: dict[str, nn.Module] | None = None) -> Path:
    """Write `model` (and optional named heads) with `meta` to `path`, atomically.

    The file keeps `model`'s weights, and `meta` says how to build the network they go into
    (`meta.build()`: arch, arch_kwargs, in_chans, embed_dim). Options that change no weight's shape (a
    stride, the activation) are in meta alone, so before writing, the network meta builds is given the
    weights and must compute `model`'s embeddings on random images. Raises ArtifactError when it cannot
    be built, the weights do not fit it, or it computes other embeddings (naming the arguments `model`
    was built with, when create_model built it)."""
    _check_meta_builds(model, meta)
    head_states = {name: head.state_dict() for name, head in (heads or {}).items()}
    return _write(Path(path), _tensors(model.state_dict(), head_states), meta)


def _check_meta_builds(model: nn.Module, meta: ArtifactMeta) -> None:
    """ArtifactError unless meta.build() with `model`'s weights embeds as `model` does (eval mode, random
    images of meta's size; `model` is left in the mode it was in)."""
    built_as = getattr(model, "simsearch_built_as", None)
    said = f"meta builds create_model({meta.arch!r}, in_chans={meta.in_chans}, embed_dim={meta.embed_dim}" + "".join(
        f", {k}={v!r}" for k, v in meta.arch_kwargs.items()) + ")"
    if built_as is not None:
        name, kwargs = built_as
        said += "; the network was built by create_model(" + ", ".join(
            [repr(name)] + [f"{k}={v!r}" for k, v in kwargs.items()]) + ")"
    try:
        rebuilt = meta.build()
        rebuilt.load_state_dict(model.state_dict())
    except Exception as exc:  # noqa: BLE001  (any builder's or load_state_dict's failure)
        raise ArtifactError(f"meta does not describe this network ({said}): the weights do not fit architecture "
                            f"{meta.arch!r}: {type(exc).__name__}: {exc}") from exc
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    x = torch.randn(2, meta.in_chans, meta.image_size, meta.image_size,
                    generator=torch.Generator().manual_seed(0)).to(device)
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            want = model(x).float()
            got = rebuilt.to(device).eval()(x).float()
    finally:
        for m, training in modes.items():
            m.training = training
    if tuple(want.shape) != (2, meta.embed_dim):
        raise ArtifactError(f"meta does not describe this network ({said}): it embeds 2 images as "
                            f"{tuple(want.shape)}, not (2, {meta.embed_dim}) as meta.embed_dim says")
    scale = max(1.0, float(want.abs().max())) if want.numel() else 1.0
    if got.shape != want.shape or not float((got - want).abs().max()) <= 1e-4 * scale:
        raise ArtifactError(f"meta does not describe this network ({said}): with these weights it computes other "
                            "embeddings; give meta.arch_kwargs the arguments the network was built with (stride, "
                            "act, widths, ...)")


def resave_artifact(artifact: Artifact, path: str | os.PathLike, meta: ArtifactMeta) -> Path:
    """Write `artifact`'s weights and heads as they are now with new metadata `meta` to `path`, atomically (for
    settings such as `tta`, or a shift folded into the weights of the loaded model)."""
    return _write(Path(path), _tensors(artifact.model.state_dict(), artifact.heads), meta)


def _tensors(model_state: dict[str, torch.Tensor], head_states: dict[str, dict[str, torch.Tensor]]) -> dict:
    """The file's tensor names: the model's under "model.", each head's under "<head name>."."""
    tensors = {_MODEL_PREFIX + k: v for k, v in model_state.items()}
    for head_name, state in head_states.items():
        tensors.update({f"{head_name}.{k}": v for k, v in state.items()})
    return tensors


def _write(path: Path, tensors: dict[str, torch.Tensor], meta: ArtifactMeta) -> Path:
    required = sorted(set(meta.requires) | ({"tta"} if meta.tta != "none" else set()))
    meta = meta.model_copy(update={"requires": required})
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={_META_KEY: meta.model_dump_json()})
        # mkstemp makes the file 0600; give it the mode a plain open() would (0666 less the umask).
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def read_meta(path: str | os.PathLike) -> ArtifactMeta:
    """Only the metadata header of an artifact."""
    return _parse_meta(_read_header(Path(path)), Path(path))


def load_artifact(path: str | os.PathLike, device: str | torch.device = "cpu") -> Artifact:
    """Load an artifact; raises ArtifactError with the reason when the file is not usable."""
    path = Path(path)
    meta = _parse_meta(_read_header(path), path)
    try:
        tensors = load_file(str(path), device=str(device))
    except (SafetensorError, OSError) as exc:
        raise ArtifactError(f"{path}: cannot read the weights: {exc}") from exc
    if not is_model(meta.arch):
        where = f"it was registered by {meta.arch_source!r}; " if meta.arch_source else ""
        python = f"model.import_models({meta.arch_source!r})" if meta.arch_source else "model.import_models(...)"
        raise ArtifactError(f"{path}: architecture {meta.arch!r} is not known here ({where}name the module or .py "
                            f"file that registers it in SIMSEARCH_MODEL_MODULES); known: {', '.join(list_models())}; "
                            f"in Python, import it first: {python}")
    try:
        model = meta.build()
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(f"{path}: cannot build architecture {meta.arch!r}{_culprit(meta)}: {exc}") from exc
    except ModuleNotFoundError as exc:  # the torchvision/timm baselines, on an install without them
        package = (exc.name or "?").split(".")[0]
        raise ArtifactError(f"{path}: architecture {meta.arch!r} needs the package {package!r}, which is not "
                            "installed (pip install 'simsearch[train]')") from exc
    state = {k[len(_MODEL_PREFIX):]: v for k, v in tensors.items() if k.startswith(_MODEL_PREFIX)}
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ArtifactError(f"{path}: weights do not fit architecture {meta.arch!r}: {exc}") from exc
    heads: dict[str, dict[str, torch.Tensor]] = {}
    for name in meta.heads:
        prefix = name + "."
        heads[name] = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    model.to(device).eval()
    _try_once(path, meta, model, device)
    return Artifact(meta, model, heads, _sha256(path))


def _try_once(path: Path, meta: ArtifactMeta, model: nn.Module, device: str | torch.device) -> None:
    """ArtifactError naming `path` unless `model` embeds one blank image of meta's channels and size: builder
    arguments that only fail when the network runs (a stride given as a string, edited into the file), or an
    image size too small for the architecture, are refused at load rather than at the first image embedded."""
    x = torch.zeros(1, meta.in_chans, meta.image_size, meta.image_size, device=device)
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as exc:  # noqa: BLE001  (any architecture's own code: whatever it raises says why)
        first = (str(exc).splitlines() or [""])[0]
        given = _culprit(meta) or f" (arch_kwargs {meta.arch_kwargs})"
        raise ArtifactError(f"{path}: architecture {meta.arch!r} cannot embed a {meta.in_chans}x{meta.image_size}x"
                            f"{meta.image_size} image (image_size {meta.image_size}){given}: {type(exc).__name__}: "
                            f"{first}") from exc
    shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    if shape != (1, meta.embed_dim):
        raise ArtifactError(f"{path}: architecture {meta.arch!r} embeds an image as {shape}, not the (1, "
                            f"{meta.embed_dim}) its embed_dim says")


def _culprit(meta: ArtifactMeta) -> str:
    """' with arch_kwargs KEY=VALUE', the first builder argument the architecture cannot be built and run with
    on its own (at meta's channels and image size), or '' when each works alone."""
    x = torch.zeros(1, meta.in_chans, meta.image_size, meta.image_size)
    for key, value in meta.arch_kwargs.items():
        try:
            with torch.no_grad():
                create_model(meta.arch, in_chans=meta.in_chans, embed_dim=meta.embed_dim, **{key: value}).eval()(x)
        except Exception:  # noqa: BLE001  (as in _try_once)
            return f" with arch_kwargs {key}={value!r}"
    return ""


def _read_header(path: Path) -> dict[str, Any]:
    # safetensors layout: 8-byte little-endian header length, then the JSON header.
    try:
        with open(path, "rb") as f:
            raw_len = f.read(8)
            if len(raw_len) != 8:
                raise ArtifactError(f"{path}: too short to be a safetensors file")
            n = int.from_bytes(raw_len, "little")
            if n > 100_000_000:
                raise ArtifactError(f"{path}: not a safetensors file (header length {n})")
            header = json.loads(f.read(n))
    except FileNotFoundError:
        raise ArtifactError(f"{path}: no such model artifact") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{path}: not a safetensors file: {exc}") from exc
    if not isinstance(header, dict):
        raise ArtifactError(f"{path}: not a safetensors file: its header is a JSON {type(header).__name__}, "
                            "not an object")
    return header


def _parse_meta(header: dict[str, Any], path: Path) -> ArtifactMeta:
    metadata = header.get("__metadata__")
    raw = metadata.get(_META_KEY) if isinstance(metadata, dict) else None
    if raw is None:
        raise ArtifactError(f"{path}: the safetensors file has no simsearch metadata (was it written by simsearch?)")
    if not isinstance(raw, str):
        raise ArtifactError(f"{path}: invalid artifact metadata: a JSON {type(raw).__name__} where the metadata's "
                            "JSON text belongs")
    try:
        meta = ArtifactMeta.model_validate_json(raw)
    except ValidationError as exc:
        raise ArtifactError(f"{path}: invalid artifact metadata: {_said(exc)}") from exc
    if meta.format != FORMAT:
        raise ArtifactError(f"{path}: unsupported artifact format {meta.format!r} (this version reads {FORMAT!r})")
    unknown = sorted(set(meta.requires) - set(KNOWN_REQUIREMENTS))
    if unknown:
        raise ArtifactError(f"{path}: the artifact requires {unknown}, which this version of simsearch does not "
                            f"apply (it applies {list(KNOWN_REQUIREMENTS)}): it was written by a newer simsearch; "
                            "load it with that version, as its embeddings would differ here")
    return meta


def _said(exc: ValidationError) -> str:
    """pydantic's errors on one line, each naming its field and the value found there."""
    parts = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        found = f" (found {err['input']!r})" if field and not isinstance(err.get("input"), (dict, list)) else ""
        parts.append(f"{field}: {msg}{found}" if field else msg)
    return "; ".join(parts)


def bundled_artifact(model_id: str) -> Path | None:
    """The artifact in model/weights whose model id (name@sha12, as Artifact.model_id) is `model_id`, or None."""
    from ._params import WEIGHTS_DIR

    name, _, sha = model_id.rpartition("@")
    for path in sorted(WEIGHTS_DIR.glob("*.safetensors")):
        try:
            if read_meta(path).name == name and _sha256(path)[:12] == sha:
                return path
        except ArtifactError:
            continue
    return None


def bundled_artifacts(nearest_to: str | os.PathLike | None = None) -> dict[str, Path]:
    """The artifacts shipped in model/weights, by name (each file's stem): sorted, or with `nearest_to` (a name
    or path someone gave) the names nearest to its file name first (difflib), as an error listing them gives."""
    import difflib

    from ._params import WEIGHTS_DIR

    found = {p.stem: p for p in sorted(WEIGHTS_DIR.glob("*.safetensors"))}
    if nearest_to is None:
        return found
    given = Path(nearest_to).name.removesuffix(".safetensors")
    return {name: found[name] for name in difflib.get_close_matches(given, list(found), n=len(found), cutoff=0.0)}


def find_artifact(name_or_path: str | os.PathLike) -> Path:
    """The artifact file `name_or_path` means: the path itself when something is there (a path that exists
    always wins, a folder included: reading it says what is wrong), else the bundled artifact of that name (its
    file stem, with or without .safetensors, or the name in its metadata). ArtifactError "NAME: no such model
    artifact", listing the bundled names nearest first, when it is neither."""
    path = Path(name_or_path)
    if path.exists():
        return path
    given = str(name_or_path)
    bare = path.name == given and given not in (".", "..")   # a name, no folder in it
    if bare:
        bundled = bundled_artifacts()
        stem = given.removesuffix(".safetensors")
        if stem in bundled:
            return bundled[stem]
        for found in bundled.values():
            try:
                if read_meta(found).name == stem:
                    return found
            except ArtifactError:
                continue
    near = list(bundled_artifacts(nearest_to=given))
    names = f"; the bundled models (give one by name), nearest first: {', '.join(near)}" if near else ""
    nor = " (no such file, nor the name of a bundled model)" if bare else ""
    raise ArtifactError(f"{given}: no such model artifact{nor}{names}")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
