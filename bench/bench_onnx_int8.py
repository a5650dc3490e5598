"""The exported ONNX graph in float32 and quantized to int8: file size, retrieval quality, images/s.

    .venv/bin/python bench/bench_onnx_int8.py [--artifact model/weights/hybrid1-cifar10.safetensors]
        [--data ../shared/data/cifar10-jpeg.tar] [--calibration-images 512] [--tag TAG]

The int8 graph is calibrated on --calibration-images images drawn at random (seed 0) from the TRAINING
split, never the test split (three quarters set the ranges, the last quarter picks the calibration method:
model/_onnx.py). Retrieval: each test image searched against all the others (precision@1,
the same figure as `simsearch evaluate`), with float queries in a float gallery, int8 queries in the
float gallery (an app embedding on a device with the int8 file, the service holding float vectors) and
int8 in int8. Speed: onnxruntime, one intra-op thread, uint8 in, unit vectors out, interleaved rounds.
Writes docs/results/bench_onnx_int8<TAG>.json.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

import _common  # noqa: E402
import model  # noqa: E402
from model._onnx import session_from_bytes  # noqa: E402


def precision_at_1(queries: np.ndarray, gallery: np.ndarray, labels: np.ndarray) -> float:
    """Leave-one-out precision@1: query i never finds gallery item i (the same image)."""
    hits = 0
    for start in range(0, len(queries), 1000):
        s = queries[start:start + 1000] @ gallery.T
        s[np.arange(len(s)), np.arange(start, start + len(s))] = -np.inf
        hits += int((labels[s.argmax(1)] == labels[start:start + len(s)]).sum())
    return hits / len(queries)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--artifact", default=str(model.default_artifact_path("cifar10")))
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.tar"))
    ap.add_argument("--calibration-images", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tag", default="")
    args = ap.parse_args()
    from training import load_dataset

    artifact = model.load_artifact(args.artifact)
    data = load_dataset(args.data)
    train, test = np.asarray(data.train.images), np.asarray(data.test.images)
    labels = np.asarray(data.test.labels)
    pick = np.sort(np.random.default_rng(0).choice(len(train), args.calibration_images, replace=False))
    graphs = {"float32": model.to_onnx(artifact), "int8": model.to_onnx(artifact, int8_calibration=train[pick])}
    sessions = {name: session_from_bytes(data, threads=1) for name, data in graphs.items()}
    vectors = {name: np.concatenate([s.run(None, {"images": np.ascontiguousarray(test[i:i + 500])})[0]
                                     for i in range(0, len(test), 500)]) for name, s in sessions.items()}
    cosine = (vectors["float32"] * vectors["int8"]).sum(1)
    quality = {"float32_in_float32": precision_at_1(vectors["float32"], vectors["float32"], labels),
               "int8_in_float32": precision_at_1(vectors["int8"], vectors["float32"], labels),
               "int8_in_int8": precision_at_1(vectors["int8"], vectors["int8"], labels),
               "cosine_int8_to_float32": {"mean": float(cosine.mean()), "p1": float(np.percentile(cosine, 1)),
                                          "min": float(cosine.min())}}
    cases = {f"{name}_b{bs}": (lambda s=s, x=np.ascontiguousarray(test[:bs]): (s.run(None, {"images": x}), len(x))[1])
             for name, s in sessions.items() for bs in (1, 8, 256)}
    speed = _common.interleaved(cases, rounds=args.rounds, seconds=0.4)
    sizes = {name: len(data) for name, data in graphs.items()}
    import json

    import onnx

    int8 = json.loads({p.key: p.value for p in onnx.load_from_string(graphs["int8"]).metadata_props}["simsearch.int8"])
    print(f"int8 calibration chosen: {int8['calibration']} (tried: {int8['tried']})")
    print(f"{artifact.model_id} on {args.data}: int8 calibrated on {args.calibration_images} training images")
    print(f"file bytes: float32 {sizes['float32']:,}, int8 {sizes['int8']:,}")
    print("precision@1 (test split, leave one out): " + ", ".join(
        f"{k} {v:.4f}" for k, v in quality.items() if isinstance(v, float)))
    print(f"cosine int8 -> float32: mean {cosine.mean():.4f}, 1st percentile {np.percentile(cosine, 1):.4f}, "
          f"least {cosine.min():.4f}")
    for name, v in speed.items():
        print(f"  {name:14s} {v['median']:10.0f} images/s (best {v['best']:.0f})")
    _common.write_result("onnx_int8" + args.tag, {
        "command": _common.command_line(), "machine": _common.machine(), "model_id": artifact.model_id,
        "data": args.data, "calibration_images": args.calibration_images, "int8_metadata": int8, "file_bytes": sizes,
        "precision_at_1": quality, "images_per_s_1_thread": speed})


if __name__ == "__main__":
    main()
