"""Embedder: PIL images in, L2-normalised float32 vectors out."""
from __future__ import annotations

import logging
import numbers
import os
import warnings
from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ._artifact import TTA_MODES, Artifact, ArtifactMeta, load_artifact
from ._crop import Crop
from ._formats import unreadable_reason
from ._normalize import PixelNormalize
from ._preprocess import DAMAGED_EXIF, exif_notes, open_image, to_model_array
from ._runtimes import RUNTIMES


_EXIF_LOG = logging.getLogger("simsearch.images")   # where model.open_image says damaged EXIF data


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def embed_tensor(net: torch.nn.Module, x: torch.Tensor, tta: str = "none") -> torch.Tensor:
    """Raw (not normalised) embeddings of a normalised float batch (N, C, S, S) under test-time augmentation
    `tta`: "none" is net(x); "hflip" is the mean of net(x) and net(x mirrored left-right), one forward pass
    of 2N images (the mean, not the sum, so that a linear head on it sees the mean of its two logits).

    hflip suits models trained with horizontal flips (photos, clothing), where it adds 0.5-3.5 points of
    precision@1 (docs/results/training.md); on digits it loses. Every embedding the service, the indexer and
    the evaluation compute goes through here, so gallery and queries always agree.
    """
    if tta == "none":
        return net(x)
    if tta == "hflip":
        n = x.shape[0]   # not len(x): an exported graph would fix the batch size at the example's
        y = net(torch.cat([x, x.flip(3)]))
        return (y[:n] + y[n:]) * 0.5
    raise ValueError(f"unknown test-time augmentation {tta!r}; known: {', '.join(TTA_MODES)}")


def _traced(net: torch.nn.Module, in_chans: int, size: int, device: torch.device) -> torch.nn.Module | None:
    """`net` as a frozen TorchScript graph, or None when it cannot be traced faithfully.

    Why: an eager forward is some thirty Python calls, and a small model's forward at small batches
    is mostly those calls; in the server each of them also has to win the GIL back from the event
    loop. The graph runs the whole forward in C++: 1.27x the images/s of the eager Hybrid-1 at batch
    1, 1.18x at 8, 1.06x at 256 (one thread); inside the server the embedding step of /search is 10-14% shorter
    (docs/results/benchmarks.md, tenth session). The trace is checked against the eager
    forward on another batch size and other pixels, so a network whose forward branches on its
    input, or anything TorchScript cannot follow, stays eager. TorchScript is deprecated in favour
    of torch.compile, which needs a compiler at run time and seconds to minutes of warm-up per
    shape; should a later torch drop it, this returns None and the Embedder stays eager.
    """
    gen = torch.Generator().manual_seed(0)
    example, check = (torch.randn(n, in_chans, size, size, generator=gen).to(device) for n in (4, 3))
    try:
        with warnings.catch_warnings(), torch.inference_mode():
            warnings.simplefilter("ignore")  # the deprecation warnings of torch.jit (see above)
            graph = torch.jit.freeze(torch.jit.trace(net, example, check_trace=False))
            same = torch.allclose(F.normalize(graph(check).float(), dim=1), F.normalize(net(check).float(), dim=1),
                                  atol=1e-5)
            for _ in range(2):  # the graph executor optimises on its first runs (17 ms): not on a request
                graph(example[:1])
    except Exception:  # noqa: BLE001  (any failure to trace leaves the eager network in use)
        return None
    return graph if same else None


class Embedder:
    """Embeds images with a loaded model artifact, in batches, deterministically."""

    def __init__(self, artifact: Artifact, device: str | torch.device | None = None, batch_size: int = 256,
                 trace: bool = True, runtime: str = "torch"):
        """`trace`: run the network as a TorchScript graph when it traces faithfully (see `traced`).
        `runtime`: "torch", or "onnx" to run the model exported to ONNX in onnxruntime on the CPU (the
        `onnx` extra; several times torch's images/s at the small batches a server sees, fewer at 256:
        docs/results/benchmarks.md). Raises ValueError for an unknown runtime or onnx on a GPU, and
        model.OnnxUnavailable when onnxruntime is not installed."""
        if runtime not in RUNTIMES:
            raise ValueError(f"unknown runtime {runtime!r}; known: {', '.join(RUNTIMES)}")
        self.artifact = artifact
        self.meta: ArtifactMeta = artifact.meta
        self.device = torch.device(device) if device else (
            torch.device("cpu") if runtime == "onnx" else default_device())
        if runtime == "onnx" and self.device.type != "cpu":
            raise ValueError(f"the onnx runtime runs on the CPU; device {self.device} needs runtime torch")
        if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.batch_size = int(batch_size)
        self.model = artifact.model.to(self.device).eval()
        self._session = None
        graph = None
        if runtime == "onnx":
            from ._onnx import session_from_bytes, to_onnx_in_child

            self._session = session_from_bytes(to_onnx_in_child(artifact), threads=torch.get_num_threads())
        elif trace:
            graph = _traced(self.model, self.meta.in_chans, self.meta.image_size, self.device)
        self._net = graph if graph is not None else self.model
        #: whether embeddings come from the traced graph (True) or not (eager modules, or onnxruntime)
        self.traced = graph is not None
        #: what runs the network: "onnxruntime", "TorchScript graph" or "eager modules"
        self.runtime = "onnxruntime" if self._session is not None else (
            "TorchScript graph" if self.traced else "eager modules")
        # (x / 255 - mean) / std as x * scale + shift, in place on the float copy: no further
        # allocations (fresh multi-MB tensors cost page faults); see docs/results/benchmarks.md.
        self._normalize = PixelNormalize(self.meta.mean, self.meta.std).to(self.device)

    @classmethod
    def from_file(cls, path: str | os.PathLike, device: str | torch.device | None = None,
                  batch_size: int = 256, trace: bool = True, runtime: str = "torch") -> "Embedder":
        """Load an artifact file (raises model.ArtifactError when it is not usable)."""
        dev = torch.device(device) if device else (torch.device("cpu") if runtime == "onnx" else default_device())
        return cls(load_artifact(path, device=dev), dev, batch_size, trace, runtime)

    @property
    def dim(self) -> int:
        return self.meta.embed_dim

    @property
    def model_id(self) -> str:
        return self.artifact.model_id

    def preprocess(self, image: Image.Image, crop: Crop | None = None, owned: bool = False) -> np.ndarray:
        """One image (or its region `crop`, model.parse_crop) -> uint8 (C, S, S) array as the model sees
        it (decode-side work, thread-safe). `owned`: the caller opened `image` for this alone, and it may be
        drafted in place (model.to_model_array)."""
        return to_model_array(image, self.meta.in_chans, self.meta.image_size, crop, owned)

    def embed(self, images: Iterable[Image.Image | str | os.PathLike]) -> np.ndarray:
        """Embed a list (or any iterable) of images: PIL images of any size and mode, or paths of image files
        (str or os.PathLike), which are opened, decoded as the service and `simsearch index build` decode
        files, and closed here. An iterable is read a batch (batch_size) at a time, each embedded before the next
        is read: a generator over a large folder is never held whole. Returns float32 (N, dim), each row of unit
        length; an empty list gives (0, dim).

        The caller's PIL images are not changed. One freshly opened (Image.open, not yet decoded) gets the
        vector the service gives its file; one already decoded (.load(), .convert("RGB"), a thumbnail made
        from it) a vector a little off it (cosine about 0.998 or more), as its JPEG is then used at full
        size (model.to_model_array). Pixels already made (uint8 (N, C, S, S)) go to `embed_arrays`.

        Raises TypeError for one image or path given alone (put it in a list) and for an item of another
        kind, naming it; FileNotFoundError for a path that is not there; ValueError naming a file that does
        not decode as an image or that model.open_image refuses (a JPEG of more than 100 scans), and for a PIL
        image with no pixels or closed before it was decoded (used after its `with Image.open(...)` block)."""
        if isinstance(images, (Image.Image, str, bytes, os.PathLike)):
            raise TypeError(f"embed takes a list of images or paths, got one alone ({_kind(images)}): embed([image])")
        if isinstance(images, (np.ndarray, torch.Tensor)):
            raise TypeError(f"embed takes a list of PIL images or file paths, got {_kind(images)}; uint8 "
                            f"pixel arrays (N, {self.meta.in_chans}, {self.meta.image_size}, "
                            f"{self.meta.image_size}) go to embed_arrays")
        try:
            items = iter(images)
        except TypeError:
            raise TypeError(f"embed takes a list of PIL images or file paths, got {_kind(images)}") from None
        # a batch at a time as the items come: a generator over a large folder is never held whole (its images,
        # and their arrays); the batches are embed_arrays' own (batch_size), so the vectors are the whole list's
        out, batch = [], []
        for i, item in enumerate(items):
            batch.append(self._array(item, i))
            if len(batch) == self.batch_size:
                out.append(self.embed_arrays(np.stack(batch)))
                batch = []
        if batch:
            out.append(self.embed_arrays(np.stack(batch)))
        if not out:
            return np.zeros((0, self.dim), np.float32)
        return out[0] if len(out) == 1 else np.concatenate(out)

    def _array(self, item: Image.Image | str | os.PathLike, i: int) -> np.ndarray:
        """One item of `embed`'s list as the model's uint8 input."""
        if isinstance(item, Image.Image):
            return self.preprocess(item)
        if not isinstance(item, (str, os.PathLike)):
            hint = "; uint8 pixel arrays go to embed_arrays" if isinstance(item, (np.ndarray, torch.Tensor)) else ""
            raise TypeError(f"embed: item {i} is {_kind(item)}, not a PIL image or a file path{hint}")
        # opened as `simsearch index build` and the service open files (model.open_image): with their checks (a
        # JPEG of 20,000 scans refused at once; Image.open(path) took minutes over it) and their pixels
        data = None
        try:
            with open(item, "rb") as f:
                data = f.read()
            with exif_notes() as said, open_image(data) as im:
                array = self.preprocess(im, owned=True)
        except (FileNotFoundError, IsADirectoryError):
            raise
        except Exception as exc:  # noqa: BLE001  (any decoder failure: the file is not a readable image)
            raise ValueError(f"{os.fspath(item)}: cannot read it as an image ({unreadable_reason(exc, data)})") \
                from exc
        for why in said:   # the file named, where open_image alone says "an image"
            _EXIF_LOG.warning("%s: %s", os.fspath(item), DAMAGED_EXIF.format(why=why))
        return array

    @torch.inference_mode()
    def embed_arrays(self, batch: np.ndarray) -> np.ndarray:
        """Embed pixels as `preprocess` (model.to_model_array) makes them: uint8 (N, C, S, S), values 0..255,
        C and S the artifact's (meta.in_chans, meta.image_size). Arrays of another integer dtype are taken
        when every value is within 0..255. Floats are refused, whatever their range: [0, 1], 0..255 and
        mean/std-normalised floats all occur, and guessing would give wrong vectors without a word; scale
        floats in [0, 1] with `(x * 255).round().astype(np.uint8)`. An empty batch (0, C, S, S) gives (0, dim).
        Raises ValueError naming the dtype, shape or values that do not fit."""
        batch = self._check_batch(batch)
        if not len(batch):
            return np.zeros((0, self.dim), np.float32)
        if self._session is not None:
            # One call holds the whole graph (scaling, network, tta, normalisation) and releases the GIL.
            return np.concatenate([self._session.run(None, {"images": np.ascontiguousarray(
                batch[start:start + self.batch_size], dtype=np.uint8)})[0]
                for start in range(0, len(batch), self.batch_size)]).astype(np.float32, copy=False)
        out = []
        for start in range(0, len(batch), self.batch_size):
            x = torch.from_numpy(np.ascontiguousarray(batch[start:start + self.batch_size])).to(self.device)
            x = self._normalize(x)   # a float copy: never the caller's memory
            out.append(F.normalize(embed_tensor(self._net, x, self.meta.tta).float(), dim=1).cpu())
        return (out[0] if len(out) == 1 else torch.cat(out)).numpy().astype(np.float32, copy=False)

    def _check_batch(self, batch) -> np.ndarray:
        """`batch` as uint8 (N, C, S, S) for this model, or ValueError (TypeError for what is no array) naming
        what does not fit."""
        c, size = self.meta.in_chans, self.meta.image_size
        want = f"uint8 (N, {c}, {size}, {size})"
        if isinstance(batch, torch.Tensor):
            batch = batch.detach().cpu().numpy()
        if not isinstance(batch, np.ndarray):
            raise TypeError(f"embed_arrays takes a numpy array {want}, got {_kind(batch)}"
                            + ("; PIL images and file paths go to embed" if isinstance(batch, (list, tuple)) else ""))
        if batch.ndim != 4 or batch.shape[1:] != (c, size, size):
            hint = ""
            if batch.ndim == 3 and batch.shape in ((c, size, size), (size, size, c)):
                hint = "; one image: add the batch axis (array[None])"
            elif batch.ndim == 4 and batch.shape[1:] == (size, size, c):
                hint = "; channels last: array.transpose(0, 3, 1, 2)"
            elif batch.ndim == 4 and batch.shape[1] == c:
                hint = f"; images are made {size}x{size} by preprocess (model.to_model_array)"
            raise ValueError(f"embed_arrays: an array of shape {batch.shape}, expected {want}{hint}")
        if batch.dtype != np.uint8:
            if not np.issubdtype(batch.dtype, np.integer) or batch.dtype == np.bool_:
                hint = ("; floats in [0, 1]: (array * 255).round().astype(np.uint8)"
                        if np.issubdtype(batch.dtype, np.floating) else
                        "; a mask of booleans: array.astype(np.uint8) * 255" if batch.dtype == np.bool_ else "")
                raise ValueError(f"embed_arrays: an array of dtype {batch.dtype}, expected {want} pixels "
                                 f"0..255{hint}")
            if batch.size and (batch.min() < 0 or batch.max() > 255):
                raise ValueError(f"embed_arrays: {batch.dtype} values from {batch.min()} to {batch.max()}, expected "
                                 f"pixels 0..255 ({want})")
            batch = batch.astype(np.uint8)
        return batch


def _kind(value) -> str:
    """What `value` is, for a message: its type, with the shape of an array."""
    name = type(value).__module__.split(".")[0] + "." + type(value).__qualname__
    name = type(value).__qualname__ if type(value).__module__ == "builtins" else name
    shape = getattr(value, "shape", None)
    return f"a {name}" + (f" of shape {tuple(shape)}" if shape is not None else "")
