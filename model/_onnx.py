"""A model artifact as an ONNX graph: uint8 pixels in, the Embedder's unit vectors out.

The graph holds everything the Embedder does after `to_model_array`: the scaling to the artifact's
mean and std, the network, its test-time augmentation and the L2 normalisation. So an app that embeds
on its own device (onnxruntime on a phone, in a browser, in another service) gets the vectors the
service stores, and can search with them (`POST /search` with a JSON `vector`).

It needs the `onnx` extra (onnx, onnxscript, onnxruntime): torch's exporter writes the graph, and
onnxruntime checks it against torch before it is handed out.
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ._artifact import Artifact, ArtifactMeta
from ._embedder import embed_tensor
from ._normalize import PixelNormalize
from ._runtimes import missing_onnx_packages

MIN_OPSET = 18
INPUT_NAME = "images"
OUTPUT_NAME = "embeddings"
# How far the graph's vectors may be from torch's (unit vectors; observed: under 1e-6).
_TOLERANCE = 1e-4
INPUT_DOC = ("uint8 (N, C, S, S), channels L or RGB: the image turned upright by its EXIF orientation, "
             "transparency flattened onto white, its short side resized to S (bilinear; a JPEG or HEIC may "
             "first be decoded at a reduced scale) and centre-cropped to S x S; model.to_model_array does "
             "exactly this")


class OnnxUnavailable(RuntimeError):
    """The packages for ONNX export or ONNX Runtime are not installed."""


class _Exported(nn.Module):
    """What the graph computes: (x / 255 - mean) / std, the network under its tta, L2-normalised."""

    def __init__(self, net: nn.Module, meta: ArtifactMeta):
        super().__init__()
        self.net, self.tta = net, meta.tta
        self.normalize = PixelNormalize(meta.mean, meta.std)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(embed_tensor(self.net, self.normalize(images), self.tta).float(), dim=1)


def to_onnx(artifact: Artifact, opset: int | None = None, int8_calibration: np.ndarray | None = None) -> bytes:
    """The artifact's embedding as a serialised ONNX model (any batch size), checked against torch.

    `opset`: the ONNX operator set (18 or newer; default: the exporter's). `int8_calibration`: uint8
    images (N, C, S, S), as to_model_array makes them, of the kind the model will embed: the graph is
    then quantized to int8 (see `_quantize_int8`), a file about 2.3x smaller. Raises OnnxUnavailable
    when the `onnx` extra is missing, ValueError for an opset it cannot write, RuntimeError when the
    exported graph does not give torch's vectors (to within 1e-4 on random images; for int8, a mean
    cosine of 0.9 on held-out calibration images).
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
    wrapped = _Exported(net.eval(), meta).eval()
    size = (meta.in_chans, meta.image_size, meta.image_size)
    example = torch.randint(0, 256, (2, *size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    batch = torch.export.Dim("batch", min=1)
    # The exporter's warnings on its own internals, and its log lines, e.g. that torchvision's detection
    # operators are skipped where torchvision is not installed (the service image): nothing here uses them.
    with warnings.catch_warnings(), _errors_only("torch.onnx"):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(wrapped, (example,), dynamo=True, input_names=[INPUT_NAME],
                                    output_names=[OUTPUT_NAME], dynamic_shapes={"images": {0: batch}},
                                    opset_version=opset, external_data=False, verbose=False)
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
    if int8_calibration is not None:
        data = _quantize_int8(data, int8_calibration, wrapped)
    return data


# From this many calibration images a quarter is held out to check the int8 graph (and choose its calibration)
# on images it was not calibrated on; below, it is checked on the calibration images themselves.
INT8_HELD_OUT_FROM = 8
# How activation ranges are calibrated: the candidates tried, each on the same images.
_CALIBRATIONS = {"minmax": ("MinMax", {}), "percentile 99.9": ("Percentile", {"CalibPercentile": 99.9}),
                 "percentile 99.99": ("Percentile", {"CalibPercentile": 99.99}),
                 "percentile 99.999": ("Percentile", {"CalibPercentile": 99.999})}
# The most images fed to the calibrators at once (memory: their activations are kept per batch).
_CALIBRATION_BATCH = 64


def _quantize_int8(data: bytes, images: np.ndarray, wrapped: nn.Module) -> bytes:
    """ONNX Runtime's static quantization of the graph: weights int8 per output channel, activations
    uint8, as QuantizeLinear/DequantizeLinear pairs that any ONNX runtime reads. The activation ranges
    come from about three quarters of `images`, by each of the _CALIBRATIONS; the one whose vectors stay
    closest to torch's on the other quarter (mean cosine; no labels needed) is kept, and the figures of
    all of them are stored in the file's `simsearch.int8` metadata.

    On the bundled CIFAR-10 model: 248 KB instead of 566 KB; int8 queries searched in the float gallery
    reach precision@1 0.7406 (512 training images; 0.7355 with 2,048; min-max ranges alone 0.7321) against
    0.7425 for float queries (bench/bench_onnx_int8.py, docs/model-zoo.md)."""
    import tempfile

    import onnx
    from onnxruntime import quantization as q

    images = np.ascontiguousarray(images, dtype=np.uint8)
    if images.ndim != 4 or not len(images):
        raise ValueError(f"int8 calibration needs uint8 images (N, C, S, S), got shape {images.shape}")
    held = len(images) // 4 if len(images) >= INT8_HELD_OUT_FROM else 0
    # The histogram (Percentile) calibrators stack the batches' outputs, so every batch must be the same
    # size: as few batches as keep each at most _CALIBRATION_BATCH images, all of one size; the few left
    # over (fewer than the number of batches) join the held-out images rather than make a short batch.
    batches = -(-(len(images) - held) // _CALIBRATION_BATCH)
    size = (len(images) - held) // batches
    fit = images[:batches * size]
    check = (images[batches * size:] if held else images)[:256]
    with torch.no_grad():
        want = wrapped(torch.from_numpy(check)).numpy()

    class _Batches(q.CalibrationDataReader):
        def __init__(self):
            self._next = iter(fit[i:i + size] for i in range(0, len(fit), size))

        def get_next(self):
            batch = next(self._next, None)
            return None if batch is None else {INPUT_NAME: batch}

    tried, best = {}, None
    # onnxruntime's quantizer logs to the root logger, advising pre-processing (which fails on this
    # graph's Expand), and its histogram calibrators print their progress on stdout, which is the caller's
    with tempfile.TemporaryDirectory(prefix="simsearch-int8-") as tmp, _errors_only(None), \
            contextlib.redirect_stdout(io.StringIO()):
        for name, (method, extra) in _CALIBRATIONS.items():
            out = Path(tmp) / "int8.onnx"
            q.quantize_static(onnx.load_from_string(data), out, _Batches(), quant_format=q.QuantFormat.QDQ,
                              activation_type=q.QuantType.QUInt8, weight_type=q.QuantType.QInt8,
                              per_channel=True, calibrate_method=getattr(q.CalibrationMethod, method),
                              extra_options=extra)
            proto = onnx.load(str(out))
            got = session_from_bytes(proto.SerializeToString()).run([OUTPUT_NAME], {INPUT_NAME: check})[0]
            cosine = (got * want).sum(1)
            tried[name] = {"mean_cosine_to_float": round(float(cosine.mean()), 4),
                           "min_cosine_to_float": round(float(cosine.min()), 4)}
            if best is None or cosine.mean() > best[1]:
                best = (name, float(cosine.mean()), proto)
    name, mean, proto = best
    if not mean >= 0.9:
        raise RuntimeError(f"the int8 graph's vectors are too far from torch's (mean cosine {mean:.3f} at best, on "
                           f"{len(check)} calibration images); calibrate on images like those it will embed")
    entry = proto.metadata_props.add()
    entry.key = "simsearch.int8"
    entry.value = json.dumps({"calibration_images": len(fit), "checked_images": len(check), "held_out": bool(held),
                              "calibration": name,
                              **tried[name], "tried": tried})
    return proto.SerializeToString()


@contextlib.contextmanager
def _errors_only(logger_name: str | None):
    """Within: the named logger (None: the root logger) passes errors only; its level is put back after."""
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def to_onnx_in_child(artifact: Artifact, opset: int | None = None) -> bytes:
    """`to_onnx` run in a fresh Python process, for a process that goes on serving: torch's exporter and
    onnxscript take about 260 MiB that would otherwise stay in it for good (docs/results/benchmarks.md,
    thirtieth session). Costs a few seconds more: the child imports torch. Raises what `to_onnx` raises.

    The child is `python -c`, handed the artifact (pickled) on its stdin, not a multiprocessing child: the
    "spawn" start method imports the caller's __main__ module again in the child, which runs a script written
    without `if __name__ == "__main__":` a second time (exporting, opening stores, ...) and then fails. The
    child takes the caller's sys.path. A network the child could not rebuild is exported in this process:
    one with a class of the running script's own (defined in __main__), or of a .py file that
    model.import_models loaded (its module cannot be imported by name)."""
    import pickle
    import subprocess
    import sys

    if any(type(m).__module__ == "__main__" for m in artifact.model.modules()):
        return to_onnx(artifact, opset)
    cpu = Artifact(artifact.meta, copy.deepcopy(artifact.model).cpu(), artifact.heads, artifact.sha256)
    try:
        payload = pickle.dumps(list(sys.path)) + pickle.dumps((cpu, opset))
    except (pickle.PicklingError, TypeError, AttributeError):
        return to_onnx(artifact, opset)
    done = subprocess.run([sys.executable, "-c", _CHILD], input=payload, capture_output=True)
    try:
        status, value = pickle.loads(done.stdout)
    except Exception:  # noqa: BLE001  (the child died before it answered: its stderr says why)
        tail = done.stderr.decode("utf-8", "replace").strip().splitlines()[-5:]
        raise RuntimeError(f"the ONNX export's child process failed (exit status {done.returncode}): "
                           + " / ".join(tail)) from None
    if status == "error":
        raise value
    return value


# The child of to_onnx_in_child: its stdout is kept for the answer (prints go to stderr instead).
_CHILD = """
import os, pickle, sys
answer = os.fdopen(os.dup(1), "wb")
os.dup2(2, 1)
sys.path[:] = pickle.load(sys.stdin.buffer)
from model._onnx import _export_for_parent
_export_for_parent(sys.stdin.buffer, answer)
"""


def _export_for_parent(source, answer) -> None:
    """In to_onnx_in_child's child: read (artifact, opset) from `source`, write ("ok", bytes) or ("error",
    the exception) to `answer`."""
    import pickle

    try:
        artifact, opset = pickle.load(source)
        result = ("ok", to_onnx(artifact, opset))
    except Exception as exc:  # noqa: BLE001  (handed to the parent, which raises it)
        try:
            pickle.dumps(exc)
            result = ("error", exc)
        except Exception:  # noqa: BLE001
            result = ("error", RuntimeError(f"{type(exc).__name__}: {exc}"))
    answer.write(pickle.dumps(result))
    answer.flush()


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


def export_onnx(artifact: Artifact, path: str | os.PathLike, opset: int | None = None,
                int8_calibration: np.ndarray | None = None) -> Path:
    """Write the artifact's embedding as an ONNX file (see `to_onnx`); returns the path written."""
    data = to_onnx(artifact, opset, int8_calibration)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)   # never a half-written file under the name asked for
    finally:
        tmp.unlink(missing_ok=True)
    return path
