"""A model artifact as an ONNX graph: uint8 pixels in, the Embedder's unit vectors out.

The graph holds everything the Embedder does after `to_model_array`: the scaling to the artifact's
mean and std, the network, its test-time augmentation and the L2 normalisation. So an app that embeds
on its own device (onnxruntime on a phone, in a browser, in another service) gets the vectors the
service stores, and can search with them (`POST /search` with a JSON `vector`).

It needs the `onnx` extra (onnx, onnxscript, onnxruntime): torch's exporter writes the graph, and
onnxruntime checks it against torch before it is handed out.
"""
from __future__ import annotations

import copy
import json
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ._artifact import Artifact
from ._embedder import embed_tensor
from ._runtimes import missing_onnx_packages

MIN_OPSET = 18
INPUT_NAME = "images"
OUTPUT_NAME = "embeddings"
# How far the graph's vectors may be from torch's (unit vectors; observed: under 1e-6).
_TOLERANCE = 1e-4
INPUT_DOC = ("uint8 (N, C, S, S), channels L or RGB: the image turned upright by its EXIF orientation, "
             "transparency flattened onto white, its short side resized to S (bilinear) and centre-cropped "
             "to S x S; model.to_model_array does exactly this")


class OnnxUnavailable(RuntimeError):
    """The packages for ONNX export or ONNX Runtime are not installed."""


class _Exported(nn.Module):
    """What the graph computes: (x / 255 - mean) / std, the network under its tta, L2-normalised."""

    def __init__(self, net: nn.Module, mean: list[float], std: list[float], tta: str):
        super().__init__()
        self.net, self.tta = net, tta
        c = len(mean)
        std_t = torch.tensor(std, dtype=torch.float32).view(1, c, 1, 1)
        self.register_buffer("scale", 1.0 / (255.0 * std_t))
        self.register_buffer("shift", -torch.tensor(mean, dtype=torch.float32).view(1, c, 1, 1) / std_t)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(torch.float32) * self.scale + self.shift
        return F.normalize(embed_tensor(self.net, x, self.tta).float(), dim=1)


def to_onnx(artifact: Artifact, opset: int | None = None) -> bytes:
    """The artifact's embedding as a serialised ONNX model (any batch size), checked against torch.

    `opset`: the ONNX operator set (18 or newer; default: the exporter's). Raises OnnxUnavailable when
    the `onnx` extra is missing, ValueError for an opset it cannot write, RuntimeError when the exported
    graph does not give torch's vectors (to within 1e-4) on random images.
    """
    missing = missing_onnx_packages()
    if missing:
        raise OnnxUnavailable(f"ONNX needs {', '.join(missing)}: pip install 'simsearch[onnx]'")
    if opset is not None:
        import onnx

        # torch's exporter writes 18 and up (its conversion down to older sets fails on Pad and keeps 18),
        # and the onnx package knows sets up to its own release's.
        newest = onnx.defs.onnx_opset_version()
        if not MIN_OPSET <= opset <= newest:
            raise ValueError(f"opset {opset}: the exporter writes opsets {MIN_OPSET} to {newest}")

    meta = artifact.meta
    net = copy.deepcopy(artifact.model).cpu()   # the artifact's own model may live on a GPU
    wrapped = _Exported(net.eval(), meta.mean, meta.std, meta.tta).eval()
    size = (meta.in_chans, meta.image_size, meta.image_size)
    example = torch.randint(0, 256, (2, *size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    batch = torch.export.Dim("batch", min=1)
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # the exporter's notes on its own internals
            # and its log lines, e.g. that torchvision's detection operators are skipped where torchvision
            # is not installed (the service image): nothing here uses them
            exporter_log.setLevel(logging.ERROR)
            program = torch.onnx.export(wrapped, (example,), dynamo=True, input_names=[INPUT_NAME],
                                        output_names=[OUTPUT_NAME], dynamic_shapes={"images": {0: batch}},
                                        opset_version=opset, external_data=False, verbose=False)
    finally:
        exporter_log.setLevel(level)
    proto = program.model_proto
    written = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is not None and written != opset:
        raise ValueError(f"opset {opset}: the exporter wrote opset {written} instead")
    proto.doc_string = (f"simsearch {meta.name}: {INPUT_DOC}. Output: float32 (N, {meta.embed_dim}) "
                        "embeddings of unit length; nearer (higher dot product) is more alike.")
    props = {"simsearch.model_id": artifact.model_id, "simsearch.input": INPUT_DOC,
             "simsearch.meta": json.dumps(meta.model_dump(exclude={"training", "metrics"}), sort_keys=True)}
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    data = proto.SerializeToString()
    _check(data, wrapped, size)
    return data


def to_onnx_in_child(artifact: Artifact, opset: int | None = None) -> bytes:
    """`to_onnx` run in a fresh (spawned) process, for a process that goes on serving: torch's exporter
    and onnxscript take about 260 MiB that would otherwise stay in it for good (docs/results/benchmarks.md,
    thirtieth session). Costs a few seconds more: the child imports torch."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(to_onnx, artifact, opset).result()


def _check(data: bytes, wrapped: nn.Module, size: tuple[int, int, int]) -> None:
    """The graph must give torch's vectors at batch sizes other than the example's."""
    session = session_from_bytes(data, threads=1)
    rng = np.random.default_rng(1)
    for n in (1, 5):
        x = rng.integers(0, 256, (n, *size), dtype=np.uint8)
        got = session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
        with torch.no_grad():
            want = wrapped(torch.from_numpy(x)).numpy()
        gap = float(np.abs(got - want).max())
        if got.shape != want.shape or not gap <= _TOLERANCE:
            raise RuntimeError(f"the exported ONNX graph does not match torch at batch {n} "
                               f"(shape {got.shape} against {want.shape}, largest difference {gap:.2g})")


def session_from_bytes(data: bytes, threads: int = 1):
    """An onnxruntime CPU session for a serialised model, run in `threads` threads that never spin.

    Why no spinning: onnxruntime's worker threads busy-wait between runs by default, which on a few
    cores shared with a server's event loop costs what OpenMP's spinning did (docs/benchmarks.md).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, threads)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3   # errors only: its notes on graph optimisation are not the user's business
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def export_onnx(artifact: Artifact, path: str | os.PathLike, opset: int | None = None) -> Path:
    """Write the artifact's embedding as an ONNX file (see `to_onnx`); returns the path written."""
    data = to_onnx(artifact, opset)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path
