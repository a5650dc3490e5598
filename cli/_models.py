"""`simsearch models` (the zoo), `simsearch model-info ARTIFACT` and `simsearch model-export ARTIFACT`."""
from __future__ import annotations

import argparse
import json
import sys

from ._errors import CliError
from . import _galleries as g

ARTIFACT_HELP = ("a .safetensors model artifact: its path, or the name of a bundled one (`simsearch models` lists "
                 "them: hybrid1-cifar10, hybrid1-fashion-mnist, ...); a file of that name wins")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the model zoo with parameter counts, then the bundled artifacts")
    p.add_argument("--in-chans", type=int, default=3, choices=(1, 3), help="input channels (default 3)")
    p.set_defaults(func=_list)
    p = sub.add_parser("model-info", help="print an artifact's metadata as JSON")
    p.add_argument("artifact", help=ARTIFACT_HELP)
    p.set_defaults(func=_info)
    p = sub.add_parser("model-export", help="write an artifact's embedding as an ONNX model (embed on other devices)",
                       description="Write the artifact's embedding as one ONNX file: uint8 images (N, C, S, S), "
                                   "as model.to_model_array makes them, in; the service's unit vectors out "
                                   "(scaling, test-time augmentation and normalisation are in the graph). The "
                                   "graph is checked against torch before it is written. Needs the onnx extra.")
    p.add_argument("artifact", help=ARTIFACT_HELP)
    p.add_argument("--out", "-o", help="the ONNX file to write (default: the artifact's name with .onnx, in the "
                                       "current folder for a bundled model given by name)")
    p.add_argument("--opset", type=int, help="ONNX opset version (default: the exporter's)")
    p.add_argument("--int8", metavar="IMAGES",
                   help="quantize the graph to int8 (about 2.3x smaller), calibrated on images like those it will "
                        "embed: an image folder (any layout) or a tar of one")
    p.add_argument("--calibration-images", type=int, default=512,
                   help="with --int8: how many of those images to calibrate on, drawn at random (default 512)")
    p.set_defaults(func=_export)


def _list(args) -> int:
    import model

    for name in model.list_models():
        try:
            m = model.create_model(name, in_chans=args.in_chans)
        except ModuleNotFoundError as exc:  # a baseline, on an install without the `train` extra
            print(f"{name:16s} needs {(exc.name or '?').split('.')[0]}, not installed (pip install 'simsearch[train]')")
            continue
        n = model.count_parameters(m)
        print(f"{name:16s} {n:>12,d} parameters  {n * 4 / 1024:>10.2f} KB (float32)")
    _list_bundled()
    return 0


def _list_bundled() -> None:
    """The artifacts shipped with simsearch, which --model, model-info and model-export take by name."""
    import model

    print("\nbundled artifacts (give the name to serve --model, index build --model, model-info, model-export, "
          "evaluate, train --init and --teacher):")
    for name, path in model.bundled_artifacts().items():
        try:
            meta = model.read_meta(path)
        except model.ArtifactError as exc:
            print(f"{name:32s} unreadable: {exc}")
            continue
        data = meta.training.get("dataset")
        data = data.get("name", "?") if isinstance(data, dict) else (data or "?")
        p1 = meta.metrics.get("precision_at_1")
        p1 = f"precision@1 {p1:.4f}" if isinstance(p1, (int, float)) else "precision@1 ?     "
        named = f"  (named {meta.name!r} inside)" if meta.name != name else ""
        print(f"{name:32s} trained on {str(data):14s} {p1}  tta {meta.tta:5s} {path.stat().st_size / 1024:>8.1f} KB"
              f"{named}")


def _info(args) -> int:
    import model

    try:
        meta = model.read_meta(model.find_artifact(args.artifact))
    except model.ArtifactError as exc:
        raise CliError(str(exc)) from None
    print(json.dumps(meta.model_dump(), indent=2))
    return 0


def _export(args) -> int:
    from pathlib import Path

    import model

    missing = model.missing_onnx_packages()
    if missing:
        raise CliError(f"ONNX export needs {', '.join(missing)}: pip install 'simsearch[onnx]'")
    out = Path(args.out) if args.out else Path(args.artifact).with_suffix(".onnx")
    if out.suffix != ".onnx":
        raise CliError(f"--out {out}: give a file name ending in .onnx")
    if not out.parent.is_dir():
        raise CliError(f"--out {out}: no such folder {out.parent}")
    try:
        artifact = model.load_artifact(model.find_artifact(args.artifact), device="cpu")
    except model.ArtifactError as exc:   # a missing file included
        raise CliError(str(exc)) from None
    calibration = _calibration_images(args.int8, args.calibration_images, artifact.meta) if args.int8 else None
    try:
        model.export_onnx(artifact, out, opset=args.opset, int8_calibration=calibration)
    except Exception as exc:  # noqa: BLE001  (the exporter's own errors: an opset it cannot write, say)
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CliError(f"cannot export {args.artifact}: {why}") from None
    m = artifact.meta
    print(f"wrote {out} ({out.stat().st_size:,} bytes), model {artifact.model_id}: input 'images' uint8 "
          f"(N, {m.in_chans}, {m.image_size}, {m.image_size}), output 'embeddings' float32 (N, {m.embed_dim}) "
          f"of unit length (test-time augmentation {m.tta})")
    if calibration is not None:
        import onnx

        props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
        int8 = json.loads(props["simsearch.int8"])
        n = int8["calibration_images"]
        on = (f"{int8['checked_images']} others" if int8.get("held_out", True) else
              f"the same {n} image{'s' if n != 1 else ''} (none held out)")
        print(f"int8, {int8['calibration']} ranges from {n} image{'s' if n != 1 else ''} of {args.int8}; its "
              f"vectors' cosine to the float model's on {on}: mean "
              f"{int8['mean_cosine_to_float']:.4f}, least {int8['min_cosine_to_float']:.4f}")
        if not int8.get("held_out", True):
            from model import INT8_HELD_OUT_FROM

            print(f"warning: {n} calibration image{'s are' if n != 1 else ' is'} too few: from "
                  f"{INT8_HELD_OUT_FROM} on, a quarter is held out to check the int8 graph (and choose its "
                  f"calibration) on images it was not calibrated on; here the check reused the calibration images, "
                  f"so it says little. Calibrate on a few hundred images like those it will embed", file=sys.stderr)
    return 0


def _calibration_images(source: str, count: int, meta):
    """Up to `count` images of a folder or tar, drawn at random (seeded), as the model's uint8 input."""
    import io
    from pathlib import Path

    import numpy as np
    from PIL import Image

    import model

    if count < 1:
        raise CliError(f"--calibration-images {count}: give a positive number")
    if not Path(source).exists():
        raise CliError(f"--int8 {source}: does not exist")
    if not Path(source).is_dir() and not g.is_tar(Path(source)):
        raise CliError(f"--int8 {source}: give an image folder or a tar of one")
    try:
        found, tars = g.queries([source])
    except CliError:
        raise CliError(f"--int8 {source}: no images in it") from None
    try:
        rng = np.random.default_rng(0)
        picked = [found[i] for i in sorted(rng.choice(len(found), min(count, len(found)), replace=False))]
        arrays, failed = [], 0
        for _, _, read in picked:
            try:
                with Image.open(io.BytesIO(read())) as im:
                    arrays.append(model.to_model_array(im, meta.in_chans, meta.image_size, owned=True))
            except Exception:  # noqa: BLE001  (a file that is not an image is skipped, and counted)
                failed += 1
    finally:
        for tf in tars:
            tf.close()
    if not arrays:
        raise CliError(f"--int8 {source}: none of the {len(picked)} files drawn could be read as an image")
    if failed:
        print(f"skipped {failed} of the {len(picked)} calibration files drawn: not readable as images")
    return np.stack(arrays)
